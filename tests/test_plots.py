"""Figures: an image grid is written even for an attack cell that kept no example images."""

import numpy as np

from capsrobust.plots import example_grid


def test_an_example_grid_without_images_is_still_written(tmp_path):
    empty = np.zeros((0, 28, 28, 1), "float32")
    path = example_grid({"clean": empty, "adversarial": empty}, "no examples", tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_example_grid_shows_the_amplified_perturbation(tmp_path):
    clean = np.full((2, 28, 28, 1), 0.5, "float32")
    example = {"clean": clean, "adversarial": clean + 0.1, "label": [3, 7], "clean_prediction": [3, 7],
               "adversarial_prediction": [5, 7]}
    path = example_grid(example, "two examples", tmp_path / "grid.png")
    assert path.stat().st_size > 1000
