"""The ART bridge: a `CapsrobustModel` as an ART classifier of the running Keras backend, its attack loss explicit.

One estimator per backend, ART's own where ART has one (`to_art_classifier` picks it):

- TensorFlow: `TensorFlowBridge`, an ART `TensorFlowV2Classifier` running compiled `tf.function` batches;
- PyTorch: `TorchBridge`, an ART `PyTorchClassifier` over the Keras model (under the torch backend a Keras model is
  a `torch.nn.Module`; images stay channels-last);
- JAX: `JaxBridge`, ART has no JAX estimator, so a small one implementing ART's classifier mixins (predict,
  loss_gradient, class_gradient, compute_loss) with `jax.jit`-compiled functions.

Everything above the bridge (attacks/, detection, sweeps, reports) sees only ART's interface and numpy arrays, so it
runs unchanged on every backend. All three batch `predict`, `loss_gradient`, `class_gradient` and `compute_loss`
(`batched.BatchedBridge`; ART 1.20's TensorFlow and PyTorch estimators send a whole array through one pass), and row
`i` of a loss gradient is the gradient of example `i`'s own loss, the same whatever the batching.

Capsule networks score classes by capsule lengths in [0, 1), not logits, so which loss an attack climbs is a choice
every report must state (`LOSSES`):

- `"auto"` (default): what AutoAttack does. The attacks in `attacks/` run it as a chain, cross-entropy first, then
  DLR on the images that survived (`AUTO_LOSSES`); a single pass (ART's own code, `compute_loss`) uses
  cross-entropy.
- `"ce"`: softmax cross-entropy on the scores. For a CNN this is its training loss; for a capsule network it treats
  the lengths as logits. A softmax of values in [0, 1) stays near uniform, so unlike the margin loss (zero once every
  margin is met) its gradient never vanishes on confidently classified images.
- `"dlr"`: Croce & Hein's difference-of-logits ratio, invariant to the scores' shift and scale (APGD-DLR's loss).
- `"model"`: the model's own classification training loss, `model.classification_loss`: the margin loss on lengths
  for capsule networks, softmax cross-entropy on logits for CNNs (the reconstruction term left out). Never a
  default: the margin loss, and so its gradient, is exactly zero on an image whose lengths are beyond both margins,
  which leaves it unattacked (on a converged capsnet-small, half of the images at eps 0.3).

>>> classifier = to_art_classifier(create_model("capsnet-small"), loss="ce", batch_size=128)
>>> scores = classifier.predict(images)  # images (num_images, 28, 28, 1) float32 in [0, 1] -> (num_images, 10)
"""

import importlib
from typing import Callable

import keras
import numpy as np

from capsrobust.art_bridge.batched import BatchedBridge, batch_slices
from capsrobust.errors import ConfigError
from capsrobust.losses import difference_of_logits_ratio, softmax_cross_entropy

# Per-example attack losses `(one_hot_labels, scores) -> (batch_size,)`, by name, from the model they attack.
_PER_EXAMPLE_LOSSES: dict[str, Callable] = {
    "auto": lambda model: softmax_cross_entropy,
    "model": lambda model: model.classification_loss,
    "ce": lambda model: softmax_cross_entropy,
    "dlr": lambda model: difference_of_logits_ratio,
}
LOSSES = tuple(_PER_EXAMPLE_LOSSES)
AUTO_LOSSES = ("ce", "dlr")  # the chain `"auto"` stands for in the attacks


def attack_loss(model, loss: str) -> Callable:
    """The per-example attack loss `(one_hot_labels, scores) -> (batch_size,)` named `loss` (one of `LOSSES`)."""
    if loss not in _PER_EXAMPLE_LOSSES:
        raise ConfigError(f"unknown attack loss; known losses: {', '.join(LOSSES)}. Received: loss={loss!r}")
    return _PER_EXAMPLE_LOSSES[loss](model)


def _backend() -> str:
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "torch", "jax"):
        raise ConfigError("the ART bridge runs on the tensorflow, torch and jax backends (set KERAS_BACKEND). "
                          f"Received: backend={backend!r}")
    return backend


def _backend_module():
    """The running backend's bridge module (`tf_classifier`, `torch_classifier` or `jax_classifier`), imported only
    when asked for: each imports its framework."""
    module = {"tensorflow": "tf_classifier", "torch": "torch_classifier", "jax": "jax_classifier"}[_backend()]
    return importlib.import_module(f"capsrobust.art_bridge.{module}")


def to_art_classifier(model, loss: str = "auto", batch_size: int = 128) -> BatchedBridge:
    """Wraps `model` as an ART classifier of the running backend, with `clip_values=(0, 1)` and an explicit loss.

    Args:
        model: a `CapsrobustModel` taking `(batch_size, *model.image_shape)` images in [0, 1].
        loss: the attack loss, one of `LOSSES`: `"auto"` (cross-entropy, then DLR on the survivors, in the attacks),
            `"ce"` (softmax cross-entropy on the scores; for a capsule network, the lengths treated as logits),
            `"dlr"` (difference-of-logits ratio) or `"model"` (the model's classification training loss: margin loss
            on capsule lengths, cross-entropy on CNN logits).
        batch_size: images per forward or backward pass.

    Returns:
        A `TensorFlowBridge`, `TorchBridge` or `JaxBridge`, whose predictions are the model's `"scores"` and which
        has `source_model`, `loss_name`, `per_example_loss` and `batch_size` attributes.

    Raises:
        ConfigError: unknown loss, a batch size below 1, or a Keras backend the bridge does not know.
    """
    per_example = attack_loss(model, loss)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    backend = _backend()
    if backend == "tensorflow":
        from capsrobust.art_bridge.tf_classifier import TensorFlowBridge as bridge
    elif backend == "torch":
        from capsrobust.art_bridge.torch_classifier import TorchBridge as bridge
    else:
        from capsrobust.art_bridge.jax_classifier import JaxBridge as bridge
    return bridge(model, loss, per_example, batch_size)


def with_loss(classifier: BatchedBridge, loss: str) -> BatchedBridge:
    """Another bridge on `classifier`'s model and batch size, climbing `loss` (one of `LOSSES`) instead."""
    return to_art_classifier(classifier.source_model, loss, classifier.batch_size)


def input_gradient(objective: Callable, image_shape,
                   num_classes: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A compiled `(images, one_hot_labels) -> d sum(objective) / d images`, for attacks with their own objective.

    Row `i` of the result is the gradient of `objective`'s `i`-th value alone (its values are per example), whatever
    the batch. The backend side of the attacks in `attacks/` (vote attack, R-BIM).

    Args:
        objective: `(images, one_hot_labels) -> (batch_size,)` on `keras.ops` tensors, the value an attack climbs.
        image_shape: `(height, width, channels)`.
        num_classes: the labels' width.

    Returns:
        A function of numpy `(batch_size, *image_shape)` float32 images and `(batch_size, num_classes)` labels that
        returns the `(batch_size, *image_shape)` float32 gradient as a numpy array.

    Raises:
        ConfigError: a Keras backend the bridge does not know.
    """
    return _backend_module().input_gradient(objective, tuple(image_shape), num_classes)


def scores_and_gradient(model, loss: Callable, label_width: int,
                        batch_size: int = 128) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A compiled `(images, labels) -> (scores, d sum(loss(labels, scores)) / d images)`, batch by batch.

    One forward-backward pass gives an iterative attack both its next step's gradient and the scores that say whether
    the point it reached already fools the model (and how high its loss is), where a gradient call and a prediction
    would run the forward pass twice.

    Args:
        model: a `CapsrobustModel`, run in inference mode.
        loss: `(labels, scores) -> (batch_size,)` on `keras.ops` tensors, the per-example value the attack climbs.
        label_width: the labels' width (`num_classes`, or twice that for a true and a target class side by side).
        batch_size: images per pass.

    Returns:
        A function of numpy `(n, *image_shape)` float32 images and `(n, label_width)` labels that returns the scores
        `(n, num_classes)` and the gradient `(n, *image_shape)`, float32 numpy arrays; row `i` of the gradient is that
        of example `i`'s own loss.

    Raises:
        ConfigError: a Keras backend the bridge does not know.
    """
    both = _backend_module().scores_and_gradient(model, loss, label_width)

    def run(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(images):
            return np.zeros((0, model.num_classes), np.float32), np.zeros_like(images, dtype=np.float32)
        chunks = [both(images[rows], labels[rows]) for rows in batch_slices(len(images), batch_size)]
        return (np.concatenate([scores for scores, _ in chunks]).astype(np.float32),
                np.concatenate([gradient for _, gradient in chunks]).astype(np.float32))

    return run
