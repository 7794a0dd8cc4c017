"""Figures of a sweep, drawn with matplotlib's Agg backend (no display needed) and written atomically as PNG."""

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from capsrobust.detection import roc_curve  # noqa: E402
from capsrobust.io import atomic_path  # noqa: E402
from capsrobust.store import model_name_of  # noqa: E402
from capsrobust.sweep import SweepResult  # noqa: E402


def _save(figure, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def example_grid(example: dict, title: str, path: Path) -> Path:
    """Columns are images; rows: clean, adversarial, perturbation (amplified), and reconstructions when present."""
    rows = [("clean", example["clean"]), ("adversarial", example["adversarial"])]
    delta = example["adversarial"] - example["clean"]
    scale = np.abs(delta).max(initial=0.0) or 1.0  # no images at all: an attack that kept no examples
    rows.append((f"perturbation x{1 / scale:.0f}", 0.5 + 0.5 * delta / scale))
    for key, label in (("clean_reconstruction", "recon. of clean"), ("adversarial_reconstruction", "recon. of adv.")):
        if key in example:
            rows.append((label, example[key]))
    k = len(example["clean"])
    figure, axes = plt.subplots(len(rows), max(k, 1), figsize=(1.3 * max(k, 1), 1.45 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for i in range(max(k, 1)):
            ax = axes[r][i]
            ax.set_xticks([])
            ax.set_yticks([])
            if i < k:
                ax.imshow(images[i].squeeze(), cmap="gray", vmin=0, vmax=1)
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0 and i < k:
                ax.set_title(f"y={example['label'][i]} p={example['clean_prediction'][i]}", fontsize=7)
            if r == 1 and i < k:
                ax.set_title(f"p={example['adversarial_prediction'][i]}", fontsize=7,
                             color="red" if example["adversarial_prediction"][i] != example["label"][i] else "black")
    figure.suptitle(title, fontsize=9)
    return _save(figure, path)


def accuracy_vs_eps(result: SweepResult, path: Path) -> Path:
    """Adversarial accuracy against eps, one line per (model, attack), with 95% Wilson intervals as error bars;
    capsules solid, CNNs dashed."""
    figure, ax = plt.subplots(figsize=(6, 4))
    series: dict = {}
    for c in result.cells:
        series.setdefault((c.model_id, c.family, c.attack), []).append((c.eps, c.adversarial_accuracy,
                                                                        *c.adversarial_accuracy_ci))
    for (model_id, family, attack), points in series.items():
        eps, accuracy, low, high = np.array(sorted(points)).T
        ax.errorbar(eps, accuracy, yerr=[accuracy - low, high - accuracy], marker="o", capsize=3,
                    linestyle="-" if family == "capsule" else "--", label=f"{model_name_of(model_id)} {attack}")
    ax.set_xlabel("eps (L∞)" if result.config.norm == "inf" else f"eps (L{result.config.norm})")
    ax.set_ylabel("adversarial accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(figure, path)


def roc_plot(result: SweepResult, path: Path) -> Path | None:
    """The detector's ROC curve per (model, attack, eps): clean test vs successful adversarial distances.

    None, and no file, when no cell has both (no detector, or no attack succeeded).
    """
    curves = {key: roc_curve(negatives, positives) for key, (negatives, positives) in result.roc.items()
              if len(positives) and len(negatives)}
    if not curves:
        return None
    figure, ax = plt.subplots(figsize=(5, 5))
    for (model_id, attack, eps), (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=f"{model_name_of(model_id)} {attack} eps={eps:g}")
    ax.plot([0, 1], [0, 1], color="gray", linewidth=0.8)
    ax.axvline(0.05, color="gray", linestyle=":", linewidth=0.8)
    ax.set_xlabel("false-positive rate (clean test)")
    ax.set_ylabel("detection rate (successful adversarial)")
    ax.legend(fontsize=6)
    return _save(figure, path)


def write_figures(result: SweepResult, out_dir: Path) -> list[Path]:
    """All figures of a sweep into `out_dir`: grids per cell, accuracy vs eps, ROC."""
    paths = [accuracy_vs_eps(result, out_dir / "accuracy_vs_eps.png")]
    roc = roc_plot(result, out_dir / "roc.png")
    if roc is not None:
        paths.append(roc)
    for (model_id, attack, eps), example in result.examples.items():
        name = re.sub(r"[^A-Za-z0-9_.,+-]", "_", f"grid-{model_name_of(model_id)}-{attack}-eps{eps:g}") + ".png"
        paths.append(example_grid(example, f"{model_name_of(model_id)}: {attack} eps={eps:g}", out_dir / name))
    return paths


def pose_grid(reconstructions: np.ndarray, offsets, title: str, path: Path) -> Path:
    """One image's pose manipulation grid: a row per pose dimension, a column per offset.

    Args:
        reconstructions: `(pose_dim, len(offsets), height, width, channels)` from `pose_perturbations`.
    """
    dims, steps = reconstructions.shape[:2]
    figure, axes = plt.subplots(dims, steps, figsize=(0.62 * steps, 0.62 * dims), squeeze=False)
    for d in range(dims):
        for s in range(steps):
            ax = axes[d][s]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(reconstructions[d, s].squeeze(), cmap="gray", vmin=0, vmax=1)
            if s == 0:
                ax.set_ylabel(f"dim {d}", fontsize=6)
            if d == 0:
                ax.set_title(f"{offsets[s]:+.2f}", fontsize=6)
    figure.suptitle(title, fontsize=8)
    return _save(figure, path)
