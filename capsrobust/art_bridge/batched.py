"""What the three backend estimators of the bridge share: batching every ART call over a backend's per-batch pass.

A backend's estimator subclasses `BatchedBridge` before its ART base class and implements four per-batch passes on
numpy arrays; `BatchedBridge` provides ART's `predict`, `loss_gradient`, `compute_loss` and `class_gradient` on top
of them, batch by batch (ART 1.20's TensorFlow and PyTorch estimators send a whole array through one pass).
"""

from typing import Callable, Iterator

import numpy as np
from art.utils import check_and_transform_label_format

from capsrobust.errors import ConfigError


def batch_slices(num_rows: int, batch_size: int) -> Iterator[slice]:
    """Consecutive `slice`s of at most `batch_size` rows covering `range(num_rows)`."""
    return (slice(start, start + batch_size) for start in range(0, num_rows, batch_size))


def one_hot(labels, num_classes: int) -> np.ndarray:
    """`(num_images, num_classes)` float32 one-hot labels from integers `(num_images,)` or one-hot rows."""
    return check_and_transform_label_format(np.asarray(labels), nb_classes=num_classes).astype(np.float32)


_REDUCTIONS = {"none": np.asarray, "mean": np.mean, "sum": np.sum}


class BatchedBridge:
    """ART's classifier calls, batch by batch, over the per-batch passes a backend's estimator implements.

    Attributes (set by the estimator):
        source_model: the wrapped `CapsrobustModel`.
        loss_name: the attack loss, one of `capsrobust.art_bridge.LOSSES`.
        per_example_loss: that loss per example, `(one_hot_labels, scores) -> (batch_size,)`.
        batch_size: images per forward or backward pass when a caller gives no batch size.
    """

    source_model: object
    loss_name: str
    per_example_loss: Callable
    batch_size: int
    nb_classes: int

    def compiled(self, key: tuple, build: Callable[[], object]) -> object:
        """`build()`, made once per `key` on this bridge and kept: the compiled functions attacks make (gradients
        of their objectives) outlive each attack, so the cells of a sweep on one model trace them once, not per cell.

        `key` must name everything `build` depends on besides this bridge (the attack, its loss, its settings).
        """
        made = vars(self).setdefault("_compiled_by_key", {})  # a mixin: the ART estimator's __init__ runs, not ours
        if key not in made:
            made[key] = build()
        return made[key]

    # The per-batch passes, on float32 numpy arrays of at most `batch_size` images.
    def _batch_scores(self, images: np.ndarray, training: bool) -> np.ndarray:
        """`(b, num_classes)` scores."""
        raise NotImplementedError

    def _batch_loss_gradient(self, images: np.ndarray, labels: np.ndarray, training: bool) -> np.ndarray:
        """`(b, h, w, c)`: row i the gradient of example i's own attack loss; `labels` one-hot."""
        raise NotImplementedError

    def _batch_losses(self, images: np.ndarray, labels: np.ndarray, training: bool) -> np.ndarray:
        """`(b,)` attack losses; `labels` one-hot."""
        raise NotImplementedError

    def _batch_class_gradient(self, images: np.ndarray, classes: np.ndarray | None, training: bool) -> np.ndarray:
        """`(b, num_classes, h, w, c)` for `classes=None`, else `(b, 1, h, w, c)` for one class index per image."""
        raise NotImplementedError

    def _over_batches(self, batch_pass: Callable, arrays: list, batch_size: int | None = None) -> list[np.ndarray]:
        return [np.asarray(batch_pass(*(array[rows] for array in arrays)))
                for rows in batch_slices(len(arrays[0]), batch_size or self.batch_size)]

    def predict(self, x, batch_size: int | None = None, training_mode: bool = False, **kwargs) -> np.ndarray:
        """Scores `(num_images, num_classes)` of images `(num_images, height, width, channels)`, batch by batch."""
        images = np.asarray(x, dtype=np.float32)
        chunks = self._over_batches(lambda xs: self._batch_scores(xs, bool(training_mode)), [images], batch_size)
        predictions = np.concatenate(chunks) if chunks else np.zeros((0, self.nb_classes), np.float32)
        return self._apply_postprocessing(preds=predictions, fit=False)

    def loss_gradient(self, x, y, training_mode: bool = False, **kwargs) -> np.ndarray:
        """Gradient of each example's attack loss with respect to its pixels, batch by batch.

        Row `i` is the gradient of example `i`'s own loss (of the summed, not the averaged, batch loss), so it does
        not shrink with the number of images passed.

        Args:
            x: images `(num_images, height, width, channels)`.
            y: labels, one-hot `(num_images, num_classes)` or integers `(num_images,)`.
            training_mode: run the model in training mode (dropout on).

        Returns:
            `(num_images, height, width, channels)` float32.
        """
        images, labels = np.asarray(x, dtype=np.float32), one_hot(y, self.nb_classes)
        chunks = self._over_batches(lambda xs, ys: self._batch_loss_gradient(xs, ys, bool(training_mode)),
                                    [images, labels])
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros_like(images)

    def compute_loss(self, x, y, reduction: str = "none", training_mode: bool = False, **kwargs) -> np.ndarray:
        """The attack loss per example `(num_images,)` (`reduction="none"`), or its `"mean"` or `"sum"`."""
        if reduction not in _REDUCTIONS:
            raise ConfigError(f"reduction must be one of none, mean, sum. Received: reduction={reduction!r}")
        images, labels = np.asarray(x, dtype=np.float32), one_hot(y, self.nb_classes)
        chunks = self._over_batches(lambda xs, ys: self._batch_losses(xs, ys, bool(training_mode)), [images, labels])
        return _REDUCTIONS[reduction](np.concatenate(chunks) if chunks else np.zeros((0,), np.float32))

    def class_gradient(self, x, label=None, training_mode: bool = False, **kwargs) -> np.ndarray:
        """Gradients of class scores with respect to the pixels, batch by batch.

        Args:
            x: images `(num_images, height, width, channels)`.
            label: None for every class, one class index for all images, or one index per image `(num_images,)`.
            training_mode: run the model in training mode (dropout on).

        Returns:
            `(num_images, num_classes, height, width, channels)` for `label=None`, else `(num_images, 1, ...)`.
        """
        images = np.asarray(x, dtype=np.float32)
        training = bool(training_mode)
        if label is None:
            chunks = self._over_batches(lambda xs: self._batch_class_gradient(xs, None, training), [images])
        else:
            classes = np.broadcast_to(np.asarray(label, dtype=np.int32), (len(images),))
            chunks = self._over_batches(lambda xs, ks: self._batch_class_gradient(xs, ks, training), [images, classes])
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 1, *images.shape[1:]), np.float32)
