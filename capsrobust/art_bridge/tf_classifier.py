"""The bridge under the TensorFlow backend: ART's `TensorFlowV2Classifier` running compiled `tf.function` batches."""

from functools import partial
from typing import Callable

import numpy as np
import tensorflow as tf
from art.estimators.classification import TensorFlowV2Classifier
from keras import ops

from capsrobust.art_bridge.batched import BatchedBridge
from capsrobust.models.base import SCORES


class TensorFlowBridge(BatchedBridge, TensorFlowV2Classifier):
    """ART's `TensorFlowV2Classifier` for a `CapsrobustModel`, predicting and differentiating batch by batch.

    Build it with `capsrobust.art_bridge.to_art_classifier`. Inputs are `(num_images, height, width, channels)`
    float32 in [0, 1]; there is no preprocessing. `loss_object` is the mean attack loss
    `(one_hot_labels, scores) -> scalar` (what ART's own TensorFlow attacks read). Each pass is a `tf.function`
    compiled once per mode: its unknown batch dimension serves every batch size without retracing.
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
        images = tf.TensorSpec((None, *model.image_shape), tf.float32)
        labels = tf.TensorSpec((None, model.num_classes), tf.float32)
        self._compiled_scores = {mode: tf.function(partial(self._model, training=mode), input_signature=[images])
                                 for mode in (False, True)}
        self._compiled_gradient = {mode: tf.function(partial(self._gradient, training=mode),
                                                     input_signature=[images, labels]) for mode in (False, True)}
        classes = tf.TensorSpec((None,), tf.int32)
        # FAB-T asks for two class gradients per step: eager, each cost 6-7 forward passes of cnn-small, compiled 3.
        self._compiled_class_gradient = {mode: tf.function(partial(self._class_gradient, training=mode),
                                                           input_signature=[images, classes]) for mode in (False, True)}
        self._compiled_every_class_gradient = {
            mode: tf.function(partial(self._class_gradient, classes=None, training=mode), input_signature=[images])
            for mode in (False, True)}

    def _gradient(self, x, y, training: bool):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(self.per_example_loss(y, self._model(x, training=training)))
        return tape.gradient(loss, x)

    def _batch_scores(self, images, training):
        return self._compiled_scores[training](images).numpy()

    def _batch_loss_gradient(self, images, labels, training):
        return self._compiled_gradient[training](images, labels).numpy()

    def _batch_losses(self, images, labels, training):
        return ops.convert_to_numpy(self.per_example_loss(labels, self._compiled_scores[training](images)))

    def _class_gradient(self, x, classes, training: bool):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            scores = self._model(x, training=training)
            columns = ([scores[:, k] for k in range(self.nb_classes)] if classes is None
                       else [tf.gather(scores, classes, batch_dims=1)])
        return tf.stack([tape.gradient(column, x) for column in columns], axis=1)

    def _batch_class_gradient(self, images, classes, training):
        if classes is None:
            return self._compiled_every_class_gradient[training](images).numpy()
        return self._compiled_class_gradient[training](images, classes.astype(np.int32)).numpy()

    def loss_gradient(self, x, y, training_mode: bool = False, **kwargs):
        """`BatchedBridge.loss_gradient`, as a `tf.Tensor` when `x` is one (ART's TensorFlow PGD passes tensors)."""
        gradients = super().loss_gradient(np.asarray(x), np.asarray(y), training_mode=training_mode)
        return tf.constant(gradients) if tf.is_tensor(x) else gradients


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


def scores_and_gradient(model, loss: Callable, label_width: int) -> Callable:
    """`capsrobust.art_bridge.scores_and_gradient` under TensorFlow: one `tf.function` for every batch size."""

    @tf.function(input_signature=[tf.TensorSpec((None, *model.image_shape), tf.float32),
                                  tf.TensorSpec((None, label_width), tf.float32)])
    def both(images, labels):
        with tf.GradientTape() as tape:
            tape.watch(images)
            scores = model(images, training=False)[SCORES]
            total = tf.reduce_sum(loss(labels, scores))
        return scores, tape.gradient(total, images)

    def run(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, gradient = both(np.asarray(images, np.float32), np.asarray(labels, np.float32))
        return scores.numpy(), gradient.numpy()

    return run
