"""Shift and crop augmentation and the seeded batch stream the trainer feeds to `keras.Model.fit`."""

import math
from typing import Callable

import keras
import numpy as np


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Shifts each image by up to `max_shift` pixels in each direction, filling with zeros (Sabour et al. 2017).

    Args:
        images: `(batch_size, height, width, channels)`.
        max_shift: largest shift in pixels; 0 returns `images` unchanged.
        rng: source of the per-image offsets.

    Returns:
        The shifted images, same shape and dtype.
    """
    if max_shift == 0:
        return images
    n, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    return _windows(padded, height, width, dy, dx)


def random_crop(images: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Cuts a random `size`x`size` window out of each image (Hinton et al. 2018: 32x32 of smallNORB's 48x48).

    Args:
        images: `(batch_size, height, width, channels)`, with `size <= height` and `size <= width`.
        size: side of the crop in pixels.
        rng: source of the per-image offsets.

    Returns:
        `(batch_size, size, size, channels)`, same dtype.
    """
    n, height, width, _ = images.shape
    dy = rng.integers(0, height - size + 1, size=n)
    dx = rng.integers(0, width - size + 1, size=n)
    return _windows(images, size, size, dy, dx)


def _windows(images: np.ndarray, height: int, width: int, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """The `height`x`width` window of image `i` whose top-left corner is `(dy[i], dx[i])`, without copying twice."""
    windows = np.lib.stride_tricks.sliding_window_view(images, (height, width), axis=(1, 2))
    return np.ascontiguousarray(windows[np.arange(len(images)), dy, dx].transpose(0, 2, 3, 1))


class ShiftedBatches(keras.utils.PyDataset):
    """Shuffled, shift- or crop-augmented training batches; epoch `e`'s batches depend only on `(seed, e)`.

    That makes a resumed run see exactly the batches an uninterrupted one would have. The trainer sets `epoch` before
    each epoch's iterator is created.

    With `crop` (a data set's `train_crop`), each image is a random `crop`x`crop` window of the stored one instead of
    a shifted copy, and `max_shift` is not used.

    Each item is `({"image": images, "label": one_hot}, one_hot)` with images `(batch_size, height, width, channels)`
    (`(batch_size, crop, crop, channels)` with `crop`) and labels `(batch_size, num_classes)`; the label input lets
    capsule decoders mask by the true class.

    With `multiple_of` (`capsrobust.training.distribute.batch_multiple`: the replica count under JAX, which shards
    every batch evenly over the devices), every batch holds a multiple of that many images: the last batch drops its
    remainder, which falls on different images each epoch.

    With `share=(index, count)` (`capsrobust.training.distribute.process_share`: a multi-worker run's processes), each
    item is the `index`-th of `count` equal slices of the batch a single process would get: the global batch is drawn
    and augmented the same way in every process, so a run over processes sees the batches of a run in one.

    With `eps_at` (adversarial training: `(epoch, batch) -> eps`), the inputs also hold `"eps"`, `(batch_size,)`, the
    batch's budget, and `"start"`, the random start: uniform noise in [-1, 1] shaped like the images, drawn from
    `(seed, epoch, batch)` apart from the augmentation's draws (`capsrobust.training.adversarial`).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int, max_shift: int,
                 seed: int, crop: int | None = None, multiple_of: int = 1,
                 eps_at: Callable[[int, int], float] | None = None, share: tuple[int, int] = (0, 1)):
        super().__init__()
        if multiple_of % share[1]:
            raise ValueError(f"every batch must split evenly over the processes: multiple_of={multiple_of} is not a "
                             f"multiple of {share[1]} processes")
        self.images = images
        self.multiple_of = multiple_of
        self.share = share
        self.num_used = len(images) - (len(images) % batch_size) % multiple_of
        self.one_hot = np.eye(num_classes, dtype="float32")[labels]
        self.batch_size = batch_size
        self.max_shift = max_shift
        self.seed = seed
        self.crop = crop
        self.eps_at = eps_at
        self.epoch = 0
        self.non_finite_batch: tuple[int, int] | None = None  # (epoch, batch), from 1, of the first NaN/Inf batch
        self._order_cache: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=int))

    def __len__(self) -> int:
        return math.ceil(self.num_used / self.batch_size)

    def _order(self) -> np.ndarray:
        if self._order_cache[0] != self.epoch:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))
            self._order_cache = (self.epoch, order)
        return self._order_cache[1]

    def __getitem__(self, index: int):
        rows = self._order()[index * self.batch_size:min((index + 1) * self.batch_size, self.num_used)]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.crop is None:
            images = random_shift(self.images[rows], self.max_shift, rng)
        else:
            images = random_crop(self.images[rows], self.crop, rng)
        labels = self.one_hot[rows]
        # The loss alone does not reveal a NaN pixel: max-pooling drops it, and training goes on from damaged
        # activations. Recorded here, acted on by the trainer's NaN guard (raising inside Keras's input pipeline
        # would reach the user as a TensorFlow traceback).
        if self.non_finite_batch is None and not (np.isfinite(images).all() and np.isfinite(labels).all()):
            self.non_finite_batch = (self.epoch + 1, index + 1)
        inputs = {"image": images, "label": labels}
        if self.eps_at is not None:
            start = np.random.default_rng([self.seed, self.epoch, index, 1]).uniform(-1.0, 1.0, images.shape)
            inputs["eps"] = np.full(len(rows), self.eps_at(self.epoch, index), dtype="float32")
            inputs["start"] = start.astype("float32")
        if self.share[1] > 1:
            inputs = {key: _share(value, *self.share) for key, value in inputs.items()}
            labels = inputs["label"]
        return inputs, labels


def _share(batch: np.ndarray, index: int, count: int) -> np.ndarray:
    """The `index`-th of `count` equal consecutive slices of `batch`'s rows."""
    size = len(batch) // count
    return batch[index * size:(index + 1) * size]


def share_of_batches(array: np.ndarray, batch_size: int, index: int, count: int) -> np.ndarray:
    """This process's share of `array` cut into batches of `batch_size` rows (the last may be shorter; each must
    split evenly over `count`): the `index`-th slice of every batch, in order."""
    return np.concatenate([_share(array[start:start + batch_size], index, count)
                           for start in range(0, len(array), batch_size)])
