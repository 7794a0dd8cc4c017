"""The bridge under the torch backend: ART's `PyTorchClassifier` over the Keras model, which is a `torch.nn.Module`."""

from typing import Callable

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from keras import ops

from capsrobust.art_bridge.batched import BatchedBridge, batch_slices, one_hot
from capsrobust.models.base import SCORES


class _Scores(torch.nn.Module):
    """The Keras model's class scores `(batch_size, num_classes)`, in the training mode torch's `train()` sets."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, training=self.training)[SCORES]


class _AttackLoss(torch.nn.Module):
    """A per-example attack loss as the torch loss ART expects: `(scores, one_hot_labels)`, with a `reduction`.

    ART's `compute_loss` sets `reduction` to what it was asked for and back. The bridge keeps `"sum"` otherwise, so a
    loss gradient's row `i` is that of example `i`'s own loss.
    """

    def __init__(self, per_example_loss: Callable):
        super().__init__()
        self.per_example_loss = per_example_loss
        self.reduction = "sum"

    def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        losses = self.per_example_loss(labels, scores)
        if self.reduction == "none":
            return losses
        return losses.mean() if self.reduction == "mean" else losses.sum()


class TorchBridge(BatchedBridge, PyTorchClassifier):
    """ART's `PyTorchClassifier` for a `CapsrobustModel` under the torch backend, batching every pass.

    Build it with `capsrobust.art_bridge.to_art_classifier`. Inputs are `(num_images, height, width, channels)`
    float32 in [0, 1] (`channels_first=False`: Keras's layout); there is no preprocessing. Labels reach the loss
    one-hot. The device is the one Keras's torch backend put the weights on. Each batch runs through ART's own
    `PyTorchClassifier` methods.
    """

    def __init__(self, model, loss: str, per_example_loss: Callable, batch_size: int):
        super().__init__(model=_Scores(model), loss=_AttackLoss(per_example_loss), input_shape=model.image_shape,
                         nb_classes=model.num_classes, channels_first=False, clip_values=(0.0, 1.0),
                         preprocessing=None, device_type="gpu" if torch.cuda.is_available() else "cpu")
        self.source_model = model
        self.loss_name = loss
        self.per_example_loss = per_example_loss
        self.batch_size = batch_size

    def _batch_scores(self, images, training):
        return PyTorchClassifier.predict(self, images, batch_size=len(images), training_mode=training)

    def _batch_loss_gradient(self, images, labels, training):
        return PyTorchClassifier.loss_gradient(self, images, labels, training_mode=training)

    def _batch_losses(self, images, labels, training):
        return PyTorchClassifier.compute_loss(self, images, labels, reduction="none")

    def _batch_class_gradient(self, images, classes, training):
        return PyTorchClassifier.class_gradient(self, images, label=classes, training_mode=training)

    def loss_gradient(self, x, y, training_mode: bool = False, **kwargs):
        """`BatchedBridge.loss_gradient`; for a `torch.Tensor` `x` (ART's PyTorch PGD passes batches on the
        device), a tensor on that device."""
        if not isinstance(x, torch.Tensor):
            return super().loss_gradient(x, y, training_mode=training_mode)
        labels = y if isinstance(y, torch.Tensor) else torch.as_tensor(one_hot(y, self.nb_classes))
        labels = labels.to(device=x.device, dtype=torch.float32)
        if labels.ndim == 1:
            labels = torch.nn.functional.one_hot(labels.long(), self.nb_classes).float()
        chunks = [PyTorchClassifier.loss_gradient(self, x[rows], labels[rows], training_mode=training_mode)
                  for rows in batch_slices(len(x), self.batch_size)]
        return torch.cat(chunks) if chunks else torch.zeros_like(x)


def input_gradient(objective: Callable, image_shape: tuple,
                   num_classes: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`capsrobust.art_bridge.input_gradient` under torch: autograd on the device Keras computes on."""

    def gradient(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        images = ops.convert_to_tensor(np.asarray(images, np.float32)).requires_grad_(True)  # on Keras's device
        labels = ops.convert_to_tensor(np.asarray(labels, np.float32))
        (grad,) = torch.autograd.grad(objective(images, labels).sum(), images)
        return grad.detach().cpu().numpy()

    return gradient


def scores_and_gradient(model, loss: Callable, label_width: int) -> Callable:
    """`capsrobust.art_bridge.scores_and_gradient` under torch: one autograd pass on the device Keras computes on."""
    del label_width

    def run(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = ops.convert_to_tensor(np.asarray(images, np.float32)).requires_grad_(True)
        labels = ops.convert_to_tensor(np.asarray(labels, np.float32))
        scores = model(images, training=False)[SCORES]
        (gradient,) = torch.autograd.grad(loss(labels, scores).sum(), images)
        return scores.detach().cpu().numpy(), gradient.detach().cpu().numpy()

    return run
