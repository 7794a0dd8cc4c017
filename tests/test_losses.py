import numpy as np
import pytest
from keras import ops

from capsrobust.losses import difference_of_logits_ratio, margin_loss, reconstruction_loss, softmax_cross_entropy


def test_margin_loss_hand_computed():
    labels = np.array([[0, 1, 0], [1, 0, 0]], dtype="float32")
    lengths = np.array([[0.2, 0.7, 0.05], [0.95, 0.5, 0.1]], dtype="float32")
    # Row 1: present class 1: (0.9-0.7)^2 = 0.04; absent: 0.5*(0.2-0.1)^2 = 0.005, 0.5*max(0, 0.05-0.1)^2 = 0.
    # Row 2: present class 0: max(0, 0.9-0.95)^2 = 0; absent: 0.5*(0.5-0.1)^2 = 0.08, 0.5*(0.1-0.1)^2 = 0.
    np.testing.assert_allclose(ops.convert_to_numpy(margin_loss(labels, lengths)), [0.045, 0.08], rtol=1e-5)


def test_margin_loss_parameters():
    labels = np.array([[1, 0]], dtype="float32")
    lengths = np.array([[0.5, 0.5]], dtype="float32")
    loss = margin_loss(labels, lengths, m_plus=0.8, m_minus=0.2, down_weight=1.0)
    assert float(ops.convert_to_numpy(loss)[0]) == pytest.approx(0.3 ** 2 + 0.3 ** 2)


def test_reconstruction_loss_is_sum_of_squares_per_image():
    images = np.zeros((2, 4, 4, 1), dtype="float32")
    recon = np.full((2, 4, 4, 1), 0.5, dtype="float32")
    recon[1] = 0.0
    np.testing.assert_allclose(ops.convert_to_numpy(reconstruction_loss(images, recon)), [16 * 0.25, 0.0])


def test_cross_entropy():
    logits = np.array([[2.0, 0.0, -1.0]], dtype="float32")
    labels = np.array([[1, 0, 0]], dtype="float32")
    expected = -np.log(np.exp(2) / np.exp(logits).sum())
    np.testing.assert_allclose(ops.convert_to_numpy(softmax_cross_entropy(labels, logits)), [expected], rtol=1e-5)


def test_difference_of_logits_ratio_matches_its_definition_and_ignores_shift_and_scale():
    scores = np.array([[3.0, 1.0, 2.0, 0.0], [0.5, 0.9, 0.1, 0.2]], "float32")
    labels = np.eye(4, dtype="float32")[[0, 0]]
    # -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3): correct with a margin of 1 over a spread of 2; wrong by 0.4 over 0.7.
    expected = np.array([-(3 - 2) / (3 - 1), -(0.5 - 0.9) / (0.9 - 0.2)], "float32")
    np.testing.assert_allclose(np.asarray(difference_of_logits_ratio(labels, scores)), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(difference_of_logits_ratio(labels, 7.0 * scores - 3.0)), expected, rtol=1e-5)
