"""Pose manipulation: one dimension moves at a time, offset zero is the model's own reconstruction."""

import numpy as np
import pytest
import tensorflow as tf

from capsrobust.errors import ConfigError
from capsrobust.models import create_model
from capsrobust.plots import pose_grid
from capsrobust.pose_grid import OFFSETS, pose_perturbations


@pytest.fixture(scope="module")
def capsnet():
    tf.keras.utils.set_random_seed(0)
    return create_model("capsnet-small")


def test_offsets_are_the_papers():
    assert OFFSETS == (-0.25, -0.2, -0.15, -0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25)


def test_grid_rows_step_one_dimension_and_zero_offset_is_the_plain_reconstruction(capsnet, mnist_subset, tmp_path):
    images = mnist_subset.x_test[:3]
    reconstructions, predictions = pose_perturbations(capsnet, images)
    assert reconstructions.shape == (3, 16, 11, 28, 28, 1)
    outputs = capsnet(images, training=False)
    np.testing.assert_array_equal(predictions, outputs["scores"].numpy().argmax(axis=1))
    for dim in range(16):
        np.testing.assert_allclose(reconstructions[:, dim, 5], outputs["reconstruction"].numpy(), atol=1e-6)
    # Decoding by hand: dimension 3 of the predicted class's pose shifted by +0.25, every other class masked.
    poses = outputs["poses"].numpy()
    shifted = np.zeros_like(poses)
    shifted[np.arange(3), predictions] = poses[np.arange(3), predictions]
    shifted[np.arange(3), predictions, 3] += 0.25
    by_hand = capsnet.decoder(shifted.reshape(3, -1)).numpy()
    np.testing.assert_allclose(reconstructions[:, 3, 10], by_hand, atol=1e-6)
    assert np.abs(reconstructions[:, :, 0] - reconstructions[:, :, 10]).max() > 1e-3  # the offsets do change images

    # Two of the 16 rows: each subplot costs matplotlib ~20 ms, and every row is drawn by the same code.
    path = pose_grid(reconstructions[0, :2], OFFSETS, "title", tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_without_a_decoder_is_refused(mnist_subset):
    with pytest.raises(ConfigError, match="no reconstruction decoder"):
        pose_perturbations(create_model("cnn-small"), mnist_subset.x_test[:2])
