"""The ART bridge: a `CapsrobustModel` as an ART `TensorFlowV2Classifier`, with the attack loss stated explicitly.

Capsule networks score classes by capsule lengths in [0, 1), not logits, so which loss an attack climbs is a choice
every report must state (`LOSSES`):

- `"model"` (default): the model's own classification training loss, `model.classification_loss`: the margin loss on
  lengths for capsule networks, softmax cross-entropy on logits for CNNs. The reconstruction term is left out.
- `"ce"`: softmax cross-entropy on the scores. For a CNN this is its training loss; for a capsule network it treats
  the lengths as logits. A softmax of values in [0, 1) stays near uniform, so unlike the margin loss (zero once every
  margin is met) its gradient never vanishes on confidently classified images.

ART 1.20's `TensorFlowV2Classifier` sends the whole array through one forward pass in `predict` and
`class_gradient` (its `batch_size` argument is ignored) and differentiates the mean loss over the whole array in
`loss_gradient`. `ArtClassifier` batches all three; row `i` of its loss gradient is the gradient of example `i`'s own
loss, the same whatever the batching. This is the one module besides TensorFlow-only fast paths that uses `tf.*`
(imported lazily, so the module imports on a JAX-only host; `to_art_classifier` then says why it cannot run).

>>> classifier = to_art_classifier(create_model("capsnet-small"), loss="ce", batch_size=128)
>>> scores = classifier.predict(images)  # images (num_images, 28, 28, 1) float32 in [0, 1] -> (num_images, 10)
"""

from functools import partial
from typing import Callable

import keras
import numpy as np
from art.estimators.classification import TensorFlowV2Classifier
from art.utils import check_and_transform_label_format
from keras import ops

from capsrobust.errors import ConfigError
from capsrobust.losses import softmax_cross_entropy
from capsrobust.models.base import SCORES

# Per-example attack losses `(one_hot_labels, scores) -> (batch_size,)`, by name, from the model they attack.
_PER_EXAMPLE_LOSSES: dict[str, Callable] = {
    "model": lambda model: model.classification_loss,
    "ce": lambda model: softmax_cross_entropy,
}
LOSSES = tuple(_PER_EXAMPLE_LOSSES)


class ArtClassifier(TensorFlowV2Classifier):
    """ART's `TensorFlowV2Classifier` for a `CapsrobustModel`, predicting and differentiating batch by batch.

    Build it with `to_art_classifier`. Inputs are `(num_images, height, width, channels)` float32 in [0, 1]; there is
    no preprocessing. `loss_object` is the mean attack loss `(one_hot_labels, scores) -> scalar`.

    Attributes:
        source_model: the wrapped `CapsrobustModel` (ART's `model` is a callable returning its scores only).
        loss_name: the attack loss, one of `LOSSES`.
        per_example_loss: that loss per example, `(one_hot_labels, scores) -> (batch_size,)`.
        batch_size: images per forward or backward pass when a caller gives no batch size.
    """

    def __init__(self, model, loss: str, batch_size: int):
        import tensorflow as tf

        per_example = _PER_EXAMPLE_LOSSES[loss](model)
        super().__init__(model=lambda images, training=False: model(images, training=training)[SCORES],
                         nb_classes=model.num_classes, input_shape=model.image_shape,
                         loss_object=lambda labels, scores: ops.mean(per_example(labels, scores)),
                         channels_first=False, clip_values=(0.0, 1.0), preprocessing=None)
        self.source_model = model
        self.loss_name = loss
        self.batch_size = batch_size
        self._per_example_loss = per_example
        self.per_example_loss = per_example  # `(one_hot_labels, scores) -> (batch_size,)`, for attacks' own objectives
        # Compiled lazily, once per mode: the unknown batch dimension serves every batch size without retracing.
        images = tf.TensorSpec((None, *model.image_shape), tf.float32)
        labels = tf.TensorSpec((None, model.num_classes), tf.float32)
        self._compiled_scores = {mode: tf.function(partial(self._model, training=mode), input_signature=[images])
                                 for mode in (False, True)}
        self._compiled_gradient = {mode: tf.function(partial(self._batch_gradient, training=mode),
                                                     input_signature=[images, labels]) for mode in (False, True)}

    def _batches(self, num_rows: int, batch_size: int | None = None):
        size = batch_size or self.batch_size
        return (slice(start, start + size) for start in range(0, num_rows, size))

    def _labels(self, y) -> np.ndarray:
        return check_and_transform_label_format(np.asarray(y), nb_classes=self.nb_classes).astype(np.float32)

    def predict(self, x, batch_size: int | None = None, training_mode: bool = False, **kwargs) -> np.ndarray:
        """Scores `(num_images, num_classes)` of images `(num_images, height, width, channels)`, batch by batch."""
        x = np.asarray(x, dtype=np.float32)
        scores = self._compiled_scores[bool(training_mode)]
        chunks = [scores(x[rows]).numpy() for rows in self._batches(len(x), batch_size)]
        predictions = np.concatenate(chunks) if chunks else np.zeros((0, self.nb_classes), np.float32)
        return self._apply_postprocessing(preds=predictions, fit=False)

    def _batch_gradient(self, x, y, training: bool):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(self._per_example_loss(y, self._model(x, training=training)))
        return tape.gradient(loss, x)

    def loss_gradient(self, x, y, training_mode: bool = False, **kwargs):
        """Gradient of each example's attack loss with respect to its pixels, one compiled pass per batch.

        Row `i` is the gradient of example `i`'s own loss (of the summed, not the averaged, batch loss), so it does
        not shrink with the number of images passed.

        Args:
            x: images `(num_images, height, width, channels)`, a numpy array or a `tf.Tensor`.
            y: labels, one-hot `(num_images, num_classes)` or integers `(num_images,)`.
            training_mode: run the model in training mode (dropout on).

        Returns:
            `(num_images, height, width, channels)`, of the same kind (numpy or `tf.Tensor`) as `x`.
        """
        import tensorflow as tf

        images, labels = np.asarray(x, dtype=np.float32), self._labels(y)
        gradient = self._compiled_gradient[bool(training_mode)]
        chunks = [gradient(images[rows], labels[rows]).numpy() for rows in self._batches(len(images))]
        gradients = np.concatenate(chunks) if chunks else np.zeros_like(images)
        return tf.constant(gradients) if tf.is_tensor(x) else gradients

    def compute_loss(self, x, y, reduction: str = "none", training_mode: bool = False, **kwargs) -> np.ndarray:
        """The attack loss per example `(num_images,)` (`reduction="none"`), or its `"mean"` or `"sum"`."""
        reduce = {"none": np.asarray, "mean": np.mean, "sum": np.sum}.get(reduction)
        if reduce is None:
            raise ConfigError(f"reduction must be one of none, mean, sum. Received: reduction={reduction!r}")
        images, labels = np.asarray(x, dtype=np.float32), self._labels(y)
        scores = self._compiled_scores[bool(training_mode)]
        losses = [np.asarray(self._per_example_loss(labels[rows], scores(images[rows])))
                  for rows in self._batches(len(images))]
        return reduce(np.concatenate(losses) if losses else np.zeros((0,), np.float32))

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
        labels = None if label is None else np.broadcast_to(np.asarray(label, dtype=np.int32), (len(x),))
        chunks = [self._batch_class_gradient(x[rows], None if labels is None else labels[rows], bool(training_mode))
                  for rows in self._batches(len(x))]
        return np.concatenate(chunks) if chunks else np.zeros((0, 1, *x.shape[1:]), np.float32)

    def _batch_class_gradient(self, x, labels, training: bool) -> np.ndarray:
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            scores = self._model(x, training=training)
            columns = ([scores[:, k] for k in range(self.nb_classes)] if labels is None
                       else [tf.gather(scores, labels, batch_dims=1)])
        gradients = [tape.gradient(column, x) for column in columns]
        return tf.stack(gradients, axis=1).numpy()


def to_art_classifier(model, loss: str = "model", batch_size: int = 128) -> ArtClassifier:
    """Wraps `model` as an ART `TensorFlowV2Classifier` with `clip_values=(0, 1)` and an explicit attack loss.

    Args:
        model: a `CapsrobustModel` taking `(batch_size, *model.image_shape)` images in [0, 1].
        loss: the attack loss, one of `LOSSES`: `"model"` (the model's classification training loss: margin loss on
            capsule lengths, cross-entropy on CNN logits) or `"ce"` (softmax cross-entropy on the scores; for a
            capsule network, the lengths treated as logits).
        batch_size: images per forward or backward pass.

    Returns:
        An `ArtClassifier` (a `TensorFlowV2Classifier`) whose predictions are the model's `"scores"`.

    Raises:
        ConfigError: unknown loss, a batch size below 1, or a Keras backend other than TensorFlow.
    """
    if loss not in _PER_EXAMPLE_LOSSES:
        raise ConfigError(f"unknown attack loss; known losses: {', '.join(LOSSES)}. Received: loss={loss!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    if keras.backend.backend() != "tensorflow":
        raise ConfigError("the ART bridge needs the TensorFlow backend (set KERAS_BACKEND=tensorflow). "
                          f"Received: backend={keras.backend.backend()!r}")
    return ArtClassifier(model, loss, batch_size)


def input_gradient(objective: Callable, image_shape,
                   num_classes: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A compiled `(images, one_hot_labels) -> d sum(objective) / d images`, for attacks with their own objective.

    Row `i` of the result is the gradient of `objective`'s `i`-th value alone (its values are per example), whatever
    the batch. The TensorFlow side of the attacks in `attacks/` (vote attack, R-BIM), kept here with the bridge's
    other `tf.*` code.

    Args:
        objective: `(images, one_hot_labels) -> (batch_size,)` on `keras.ops` tensors, the value an attack climbs.
        image_shape: `(height, width, channels)`.
        num_classes: the labels' width.

    Returns:
        A function of numpy `(batch_size, *image_shape)` float32 images and `(batch_size, num_classes)` labels that
        returns the `(batch_size, *image_shape)` float32 gradient.

    Raises:
        ConfigError: a Keras backend other than TensorFlow.
    """
    if keras.backend.backend() != "tensorflow":
        raise ConfigError("capsrobust's attacks need the TensorFlow backend (set KERAS_BACKEND=tensorflow). "
                          f"Received: backend={keras.backend.backend()!r}")
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, *image_shape), tf.float32),
                                  tf.TensorSpec((None, num_classes), tf.float32)])
    def gradient(images, labels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            total = tf.reduce_sum(objective(images, labels))
        return tape.gradient(total, images)

    return lambda images, labels: gradient(np.asarray(images, np.float32), np.asarray(labels, np.float32)).numpy()
