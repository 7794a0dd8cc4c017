"""Reconstruction-error detection of adversarial images (DARCCC: Frosst, Sabour & Hinton 2018; Qin et al. 2020).

A model with a decoder reconstructs its input from the predicted class's pose. Adversarial images that change the
prediction tend to reconstruct badly, so an L2 distance above a threshold (the 95th percentile of distances on clean
validation images, i.e. a 5% false-positive rate) flags an input as adversarial.
"""

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import bootstrap, rankdata

from capsrobust.errors import ConfigError, StoreError
from capsrobust.models.base import RECONSTRUCTION
from capsrobust.models.predict import predict_batched


def reconstruction_distances(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """L2 distance between each image and its reconstruction from the predicted class's pose.

    Args:
        model: a `CapsrobustModel` with a decoder.
        images: `(num_images, height, width, channels)` in [0, 1].
        batch_size: images per forward pass.

    Returns:
        `(num_images,)` distances.

    Raises:
        ConfigError: the model has no decoder.
    """
    if not model.has_decoder:
        raise ConfigError(f"{model.registry_name} has no reconstruction decoder, so reconstruction-error detection "
                          f"does not apply; use a capsule model or cnn-recon")
    reconstructions = predict_batched(model, images, batch_size)[RECONSTRUCTION]
    return np.sqrt(np.sum(np.square(images - reconstructions).reshape(len(images), -1), axis=1))


@dataclass(frozen=True)
class ReconstructionDetector:
    """Flags inputs whose reconstruction distance exceeds `threshold`.

    Attributes:
        threshold: the distance above which an input is flagged.
        percentile: the percentile of clean distances the threshold was fitted at (95 gives a 5% FPR there).
        fitted_on: how many clean images the threshold was fitted on.
    """

    threshold: float
    percentile: float = 95.0
    fitted_on: int = 0

    @classmethod
    def fit(cls, clean_distances: np.ndarray, percentile: float = 95.0) -> "ReconstructionDetector":
        """Fits the threshold on distances of clean (validation) images, `(num_images,)`."""
        if len(clean_distances) == 0:
            raise ConfigError("cannot fit the detector threshold on zero clean images")
        return cls(float(np.percentile(clean_distances, percentile)), percentile, len(clean_distances))

    @classmethod
    def for_model(cls, model, stored: dict | None, validation: np.ndarray, batch_size: int = 256,
                  where: str = "the card") -> "ReconstructionDetector | None":
        """A trained model's detector: the one its card stores (`stored`, from `to_dict`), else one fitted now on
        clean `validation` images `(n, h, w, c)`; None for a model without a decoder.

        Raises:
            StoreError: `stored` has fields a detector does not (`where` names the card in the message).
        """
        if not model.has_decoder:
            return None
        if not stored:
            return cls.fit(reconstruction_distances(model, validation, batch_size))
        try:
            return cls(**stored)
        except TypeError:
            raise StoreError(f"{where} has an unknown detector field ({', '.join(sorted(stored))})") from None

    def flags(self, distances: np.ndarray) -> np.ndarray:
        """`(num_images,)` booleans: True where the input is flagged as adversarial."""
        return distances > self.threshold

    def detect(self, model, images: np.ndarray, batch_size: int = 256) -> tuple[dict, np.ndarray]:
        """ART's detector convention: `(report, is_adversarial)` for a batch of images."""
        distances = reconstruction_distances(model, images, batch_size)
        return {"distances": distances, "threshold": self.threshold}, self.flags(distances)

    def to_dict(self) -> dict:
        return asdict(self)


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of scores separating `positives` (higher) from `negatives` (Mann-Whitney U).

    Returns NaN when either set is empty.
    """
    if len(negatives) == 0 or len(positives) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([negatives, positives]))
    positive_rank_sum = ranks[len(negatives):].sum()
    u = positive_rank_sum - len(positives) * (len(positives) + 1) / 2
    return float(u / (len(positives) * len(negatives)))


def auroc_interval(negatives: np.ndarray, positives: np.ndarray, confidence: float = 0.95,
                   resamples: int = 1000) -> tuple[float, float] | None:
    """A bootstrap interval of `auroc` (percentile method, negatives and positives resampled separately, a fixed
    seed so a report is reproducible); None with fewer than 2 of either."""
    if len(negatives) < 2 or len(positives) < 2:
        return None
    interval = bootstrap((negatives, positives), auroc, n_resamples=resamples, confidence_level=confidence,
                         method="percentile", vectorized=False, rng=np.random.default_rng(0)).confidence_interval
    return float(interval.low), float(interval.high)


def roc_curve(negatives: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold, for plotting; each `(num_thresholds,)`."""
    thresholds = np.unique(np.concatenate([negatives, positives, [np.inf]]))[::-1]
    fpr = np.array([(negatives >= t).mean() if len(negatives) else np.nan for t in thresholds])
    tpr = np.array([(positives >= t).mean() if len(positives) else np.nan for t in thresholds])
    return fpr, tpr
