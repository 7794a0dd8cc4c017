"""Figures: an image grid is written even for an attack cell that kept no example images; a ROC curve only where an
attack succeeded."""

from types import SimpleNamespace

import numpy as np
from matplotlib.image import imread

from capsrobust.plots import example_grid, roc_plot


def test_an_example_grid_without_images_is_still_written(tmp_path):
    empty = np.zeros((0, 28, 28, 1), "float32")
    path = example_grid({"clean": empty, "adversarial": empty}, "no examples", tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_example_grid_shows_the_amplified_perturbation(tmp_path):
    """With a perturbation of 0.02 the perturbation row (the bottom third) turns white, amplified, where without one
    it is grey; the clean row (the top third) looks the same."""
    clean = np.full((2, 28, 28, 1), 0.5, "float32")
    images = {}
    for name, delta in (("none", 0.0), ("small", 0.02)):
        example = {"clean": clean, "adversarial": clean + delta, "label": [3, 7], "clean_prediction": [3, 7],
                   "adversarial_prediction": [5, 7]}
        images[name] = imread(example_grid(example, "two examples", tmp_path / f"{name}.png"))
    def brightness(image, rows):
        return image[rows, :, :3].mean()

    third = {name: image.shape[0] // 3 for name, image in images.items()}
    assert abs(brightness(images["small"], slice(None, third["small"]))
               - brightness(images["none"], slice(None, third["none"]))) < 0.02
    assert brightness(images["small"], slice(-third["small"], None)) \
        > brightness(images["none"], slice(-third["none"], None)) + 0.1


def test_a_roc_plot_is_drawn_only_for_cells_with_successful_attacks(tmp_path):
    model_id, clean = "cnn-recon-mnist-20260101-000000-aaaaaa", np.linspace(0.0, 1.0, 20)  # clean distances
    nothing_fooled = SimpleNamespace(roc={(model_id, "fgsm", 0.1): (clean, clean[:0])})
    assert roc_plot(nothing_fooled, tmp_path / "roc.png") is None and not (tmp_path / "roc.png").exists()
    fooled = SimpleNamespace(roc={**nothing_fooled.roc, (model_id, "bim", 0.1): (clean, clean + 0.5)})
    assert roc_plot(fooled, tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
