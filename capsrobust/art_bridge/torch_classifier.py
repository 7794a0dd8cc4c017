"""The bridge under the torch backend: ART's `PyTorchClassifier` over the Keras model, which is a `torch.nn.Module`."""

from typing import Callable

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier
from keras import ops

from capsrobust.art_bridge.batches import batch_slices, class_rows, one_hot, reduce_losses
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
        return {"none": lambda: losses, "mean": losses.mean, "sum": losses.sum}[self.reduction]()


class TorchBridge(PyTorchClassifier):
    """ART's `PyTorchClassifier` for a `CapsrobustModel` under the torch backend, batching every pass.

    Build it with `capsrobust.art_bridge.to_art_classifier`. Inputs are `(num_images, height, width, channels)`
    float32 in [0, 1] (`channels_first=False`: Keras's layout); there is no preprocessing. Labels reach the loss
    one-hot. The device is the one Keras's torch backend put the weights on.

    Attributes:
        source_model: the wrapped `CapsrobustModel`.
        loss_name: the attack loss, one of `capsrobust.art_bridge.LOSSES`.
        per_example_loss: that loss per example, `(one_hot_labels, scores) -> (batch_size,)`.
        batch_size: images per forward or backward pass when a caller gives no batch size.
    """

    def __init__(self, model, loss: str, per_example_loss: Callable, batch_size: int):
        super().__init__(model=_Scores(model), loss=_AttackLoss(per_example_loss), input_shape=model.image_shape,
                         nb_classes=model.num_classes, channels_first=False, clip_values=(0.0, 1.0),
                         preprocessing=None, device_type="gpu" if torch.cuda.is_available() else "cpu")
        self.source_model = model
        self.loss_name = loss
        self.per_example_loss = per_example_loss
        self.batch_size = batch_size

    def predict(self, x, batch_size: int | None = None, training_mode: bool = False, **kwargs) -> np.ndarray:
        """Scores `(num_images, num_classes)` of images `(num_images, height, width, channels)`, batch by batch."""
        x = np.asarray(x, dtype=np.float32)
        if not len(x):
            return np.zeros((0, self.nb_classes), np.float32)
        return super().predict(x, batch_size=batch_size or self.batch_size, training_mode=training_mode)

    def loss_gradient(self, x, y, training_mode: bool = False, **kwargs):
        """Gradient of each example's attack loss with respect to its pixels, batch by batch.

        Args:
            x: images `(num_images, height, width, channels)`, a numpy array or a `torch.Tensor` (ART's PyTorch PGD
                passes tensors on the device).
            y: labels, one-hot `(num_images, num_classes)` or integers `(num_images,)`.
            training_mode: run the model in training mode (dropout on).

        Returns:
            `(num_images, height, width, channels)`, of the same kind (numpy or `torch.Tensor`) as `x`.
        """
        gradient = super().loss_gradient
        if isinstance(x, torch.Tensor):
            labels = y if isinstance(y, torch.Tensor) else torch.as_tensor(one_hot(y, self.nb_classes))
            labels = labels.to(device=x.device, dtype=torch.float32)
            if labels.ndim == 1:
                labels = torch.nn.functional.one_hot(labels.long(), self.nb_classes).float()
            chunks = [gradient(x[rows], labels[rows], training_mode=training_mode)
                      for rows in batch_slices(len(x), self.batch_size)]
            return torch.cat(chunks) if chunks else torch.zeros_like(x)
        images, labels = np.asarray(x, dtype=np.float32), one_hot(y, self.nb_classes)
        chunks = [gradient(images[rows], labels[rows], training_mode=training_mode)
                  for rows in batch_slices(len(images), self.batch_size)]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros_like(images)

    def compute_loss(self, x, y, reduction: str = "none", training_mode: bool = False, **kwargs) -> np.ndarray:
        """The attack loss per example `(num_images,)` (`reduction="none"`), or its `"mean"` or `"sum"`."""
        reduce_losses(np.zeros(0), reduction)  # a bad reduction fails before any work
        images, labels = np.asarray(x, dtype=np.float32), one_hot(y, self.nb_classes)
        loss = super().compute_loss
        losses = [loss(images[rows], labels[rows], reduction="none")
                  for rows in batch_slices(len(images), self.batch_size)]
        return reduce_losses(np.concatenate(losses) if losses else np.zeros((0,), np.float32), reduction)

    def class_gradient(self, x, label=None, training_mode: bool = False, **kwargs) -> np.ndarray:
        """Gradients of class scores with respect to the pixels, batch by batch.

        Args:
            x: images `(num_images, height, width, channels)`.
            label: None for every class, one class index for all images, or one index per image `(num_images,)`.
            training_mode: run the model in training mode (dropout on).

        Returns:
            `(num_images, num_classes, height, width, channels)` for `label=None`, else `(num_images, 1, ...)`.
        """
        x = np.asarray(x, dtype=np.float32)
        labels = class_rows(label, len(x))
        gradient = super().class_gradient
        chunks = [gradient(x[rows], None if labels is None else labels[rows], training_mode=training_mode)
                  for rows in batch_slices(len(x), self.batch_size)]
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 1, *x.shape[1:]), np.float32)


def input_gradient(objective: Callable, image_shape: tuple,
                   num_classes: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`capsrobust.art_bridge.input_gradient` under torch: autograd on the device Keras computes on."""

    def gradient(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        images = ops.convert_to_tensor(np.asarray(images, np.float32)).requires_grad_(True)  # on Keras's device
        labels = ops.convert_to_tensor(np.asarray(labels, np.float32))
        (grad,) = torch.autograd.grad(objective(images, labels).sum(), images)
        return grad.detach().cpu().numpy()

    return gradient
