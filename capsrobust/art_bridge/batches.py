"""What the three backend estimators of the bridge share: batch slices, one-hot labels, loss reductions."""

from typing import Iterator

import numpy as np
from art.utils import check_and_transform_label_format

from capsrobust.errors import ConfigError


def batch_slices(num_rows: int, batch_size: int) -> Iterator[slice]:
    """Consecutive `slice`s of at most `batch_size` rows covering `range(num_rows)`."""
    return (slice(start, start + batch_size) for start in range(0, num_rows, batch_size))


def one_hot(labels, num_classes: int) -> np.ndarray:
    """`(num_images, num_classes)` float32 one-hot labels from integers `(num_images,)` or one-hot rows."""
    return check_and_transform_label_format(np.asarray(labels), nb_classes=num_classes).astype(np.float32)


def reduce_losses(losses: np.ndarray, reduction: str) -> np.ndarray:
    """Per-example losses `(num_images,)` as ART's `compute_loss` returns them: `"none"`, `"mean"` or `"sum"`."""
    reduce = {"none": np.asarray, "mean": np.mean, "sum": np.sum}.get(reduction)
    if reduce is None:
        raise ConfigError(f"reduction must be one of none, mean, sum. Received: reduction={reduction!r}")
    return reduce(losses)


def class_rows(labels, num_images: int) -> np.ndarray | None:
    """ART's `class_gradient` label argument as `(num_images,)` int32 class indices, or None for every class."""
    return None if labels is None else np.broadcast_to(np.asarray(labels, dtype=np.int32), (num_images,))
