"""The bridge under the TensorFlow backend: ART's `TensorFlowV2Classifier` running compiled `tf.function` batches."""

from functools import partial
from typing import Callable

import numpy as np
import tensorflow as tf
from art.estimators.classification import TensorFlowV2Classifier
from keras import ops

from capsrobust.art_bridge.batches import batch_slices, class_rows, one_hot, reduce_losses
from capsrobust.models.base import SCORES


class TensorFlowBridge(TensorFlowV2Classifier):
    """ART's `TensorFlowV2Classifier` for a `CapsrobustModel`, predicting and differentiating batch by batch.

    Build it with `capsrobust.art_bridge.to_art_classifier`. Inputs are `(num_images, height, width, channels)`
    float32 in [0, 1]; there is no preprocessing. `loss_object` is the mean attack loss
    `(one_hot_labels, scores) -> scalar` (what ART's own TensorFlow attacks read).

    Attributes:
        source_model: the wrapped `CapsrobustModel` (ART's `model` is a callable returning its scores only).
        loss_name: the attack loss, one of `capsrobust.art_bridge.LOSSES`.
        per_example_loss: that loss per example, `(one_hot_labels, scores) -> (batch_size,)`.
        batch_size: images per forward or backward pass when a caller gives no batch size.
    """

    def __init__(self, model, loss: str, per_example_loss: Callable, batch_size: int):
        super().__init__(model=lambda images, training=False: model(images, training=training)[SCORES],
                         nb_classes=model.num_classes, input_shape=model.image_shape,
                         loss_object=lambda labels, scores: ops.mean(per_example_loss(labels, scores)),
                         channels_first=False, clip_values=(0.0, 1.0), preprocessing=None)
        self.source_model = model
        self.loss_name = loss
        self.per_example_loss = per_example_loss
        self.batch_size = batch_size
        # Compiled lazily, once per mode: the unknown batch dimension serves every batch size without retracing.
        images = tf.TensorSpec((None, *model.image_shape), tf.float32)
        labels = tf.TensorSpec((None, model.num_classes), tf.float32)
        self._compiled_scores = {mode: tf.function(partial(self._model, training=mode), input_signature=[images])
                                 for mode in (False, True)}
        self._compiled_gradient = {mode: tf.function(partial(self._batch_gradient, training=mode),
                                                     input_signature=[images, labels]) for mode in (False, True)}

    def predict(self, x, batch_size: int | None = None, training_mode: bool = False, **kwargs) -> np.ndarray:
        """Scores `(num_images, num_classes)` of images `(num_images, height, width, channels)`, batch by batch."""
        x = np.asarray(x, dtype=np.float32)
        scores = self._compiled_scores[bool(training_mode)]
        chunks = [scores(x[rows]).numpy() for rows in batch_slices(len(x), batch_size or self.batch_size)]
        predictions = np.concatenate(chunks) if chunks else np.zeros((0, self.nb_classes), np.float32)
        return self._apply_postprocessing(preds=predictions, fit=False)

    def _batch_gradient(self, x, y, training: bool):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(self.per_example_loss(y, self._model(x, training=training)))
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
        images, labels = np.asarray(x, dtype=np.float32), one_hot(y, self.nb_classes)
        gradient = self._compiled_gradient[bool(training_mode)]
        chunks = [gradient(images[rows], labels[rows]).numpy() for rows in batch_slices(len(images), self.batch_size)]
        gradients = np.concatenate(chunks) if chunks else np.zeros_like(images)
        return tf.constant(gradients) if tf.is_tensor(x) else gradients

    def compute_loss(self, x, y, reduction: str = "none", training_mode: bool = False, **kwargs) -> np.ndarray:
        """The attack loss per example `(num_images,)` (`reduction="none"`), or its `"mean"` or `"sum"`."""
        reduce_losses(np.zeros(0), reduction)  # a bad reduction fails before any work
        images, labels = np.asarray(x, dtype=np.float32), one_hot(y, self.nb_classes)
        scores = self._compiled_scores[bool(training_mode)]
        losses = [np.asarray(self.per_example_loss(labels[rows], scores(images[rows])))
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
        chunks = [self._batch_class_gradient(x[rows], None if labels is None else labels[rows], bool(training_mode))
                  for rows in batch_slices(len(x), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 1, *x.shape[1:]), np.float32)

    def _batch_class_gradient(self, x, labels, training: bool) -> np.ndarray:
        x = tf.constant(x)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            scores = self._model(x, training=training)
            columns = ([scores[:, k] for k in range(self.nb_classes)] if labels is None
                       else [tf.gather(scores, labels, batch_dims=1)])
        gradients = [tape.gradient(column, x) for column in columns]
        return tf.stack(gradients, axis=1).numpy()


def input_gradient(objective: Callable, image_shape: tuple,
                   num_classes: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`capsrobust.art_bridge.input_gradient` under TensorFlow: one `tf.function` for every batch size."""

    @tf.function(input_signature=[tf.TensorSpec((None, *image_shape), tf.float32),
                                  tf.TensorSpec((None, num_classes), tf.float32)])
    def gradient(images, labels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            total = tf.reduce_sum(objective(images, labels))
        return tape.gradient(total, images)

    return lambda images, labels: gradient(np.asarray(images, np.float32), np.asarray(labels, np.float32)).numpy()
