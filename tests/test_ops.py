import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from capsrobust.ops import exponential_squash, safe_norm, squash


def test_squash_length_follows_eq1():
    s = np.array([[3.0, 4.0], [0.3, 0.4], [30.0, 40.0]], dtype="float32")  # lengths 5, 0.5, 50
    v = ops.convert_to_numpy(squash(s))
    lengths = np.linalg.norm(v, axis=-1)
    expected = np.array([25 / 26, 0.25 / 1.25, 2500 / 2501])
    np.testing.assert_allclose(lengths, expected, rtol=1e-5)
    np.testing.assert_allclose(v / lengths[:, None], s / np.linalg.norm(s, axis=-1, keepdims=True), rtol=1e-5)


def test_squash_of_zero_vector_has_finite_value_and_gradient():
    s = tf.Variable(np.zeros((2, 4, 8), dtype="float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(squash(s)) + tf.reduce_sum(safe_norm(squash(s)))
    gradient = tape.gradient(loss, s)
    assert np.all(np.isfinite(gradient.numpy()))
    assert np.all(ops.convert_to_numpy(squash(s)) == 0)


@pytest.mark.parametrize("axis", [-1, 1])
def test_squash_axis(axis):
    s = np.random.default_rng(0).normal(size=(3, 5, 7)).astype("float32")
    v = ops.convert_to_numpy(squash(s, axis=axis))
    assert v.shape == s.shape
    lengths = np.linalg.norm(v, axis=axis)
    assert np.all((lengths >= 0) & (lengths < 1))
    # Squashing along `axis` scales each vector along that axis: directions there are unchanged.
    cosine = np.sum(v * s, axis=axis) / (lengths * np.linalg.norm(s, axis=axis))
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)


def test_safe_norm_matches_norm_away_from_zero():
    x = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(safe_norm(x)), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_exponential_squash_length_is_one_minus_exp_of_minus_the_norm():
    s = np.array([[3.0, 4.0], [0.3, 0.4], [0.003, 0.004], [30.0, 40.0]], dtype="float32")  # lengths 5, .5, .005, 50
    v = ops.convert_to_numpy(exponential_squash(s))
    lengths = np.linalg.norm(v, axis=-1)
    np.testing.assert_allclose(lengths, 1 - np.exp(-np.array([5, 0.5, 0.005, 50])), rtol=1e-5)
    np.testing.assert_allclose(v / lengths[:, None], s / np.linalg.norm(s, axis=-1, keepdims=True), rtol=1e-5)
    assert lengths[2] == pytest.approx(0.005, rel=3e-3)  # nearly the identity near zero (squash: 2.5e-5)


def test_exponential_squash_of_zero_vector_has_finite_value_and_gradient():
    s = tf.Variable(np.zeros((2, 4, 8), dtype="float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(exponential_squash(s)) + tf.reduce_sum(safe_norm(exponential_squash(s)))
    gradient = tape.gradient(loss, s).numpy()
    assert np.all(np.isfinite(gradient)) and np.any(gradient != 0)
    assert np.all(ops.convert_to_numpy(exponential_squash(s)) == 0)
