"""The bridge under the JAX backend: ART has no JAX estimator, so this implements ART's classifier interfaces.

The model's scores, loss gradients and class gradients are `jax.jit`-compiled functions of the weights and a batch
(`model.stateless_call`), so the weights are arguments, not constants baked into each compiled program. XLA compiles
once per input shape, so batches are padded to a power of two (at most `batch_size`): a sweep whose attacks shrink
the set of images still robust compiles a handful of programs, not one per size.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from art.estimators.classification.classifier import ClassifierNeuralNetwork

from capsrobust.art_bridge.batched import BatchedBridge
from capsrobust.errors import ConfigError
from capsrobust.models.base import SCORES


def _padded_size(rows: int, batch_size: int | None = None) -> int:
    """The compiled batch size serving `rows` images: the next power of two, at most `batch_size` (if given)."""
    size = 1 << max(rows - 1, 0).bit_length()
    return size if batch_size is None else min(batch_size, size)


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    """`array` with zero rows appended up to `size` rows; the model treats each image alone, so they change nothing."""
    return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)]) \
        if len(array) < size else array


class JaxBridge(BatchedBridge, ClassifierNeuralNetwork):
    """An ART classifier (class and loss gradients) for a `CapsrobustModel` under the JAX backend.

    Build it with `capsrobust.art_bridge.to_art_classifier`. Inputs are `(num_images, height, width, channels)`
    float32 in [0, 1]; there is no preprocessing; outputs are numpy arrays. ART attacks without a JAX-specific
    version (all of them) run their numpy implementation on it, as they would on any ART classifier.
    """

    estimator_params = ClassifierNeuralNetwork.estimator_params

    def __init__(self, model, loss: str, per_example_loss: Callable, batch_size: int):
        super().__init__(model=model, clip_values=(0.0, 1.0), channels_first=False, preprocessing=None)
        self.nb_classes = model.num_classes
        self._input_shape = tuple(model.image_shape)
        self.source_model = model
        self.loss_name = loss
        self.per_example_loss = per_example_loss
        self.batch_size = batch_size

        def scores(weights, images, training):
            trainable, non_trainable = weights
            outputs, _ = model.stateless_call(trainable, non_trainable, images, training=training)
            return outputs[SCORES]

        def total_loss(weights, images, labels, training):
            return jnp.sum(per_example_loss(labels, scores(weights, images, training)))

        def class_total(weights, images, classes, training):  # summed over images: each row's gradient is its own
            chosen = jnp.take_along_axis(scores(weights, images, training), classes[:, None], axis=1)
            return jnp.sum(chosen)

        def all_class_gradients(weights, images, training):  # (num_classes, batch, h, w, c)
            return jax.jacrev(lambda x: jnp.sum(scores(weights, x, training), axis=0))(images)

        static = ("training",)
        self._scores = jax.jit(scores, static_argnames=static)
        self._losses = jax.jit(lambda w, x, y, training: per_example_loss(y, scores(w, x, training)),
                               static_argnames=static)
        self._loss_gradient = jax.jit(jax.grad(total_loss, argnums=1), static_argnames=static)
        self._class_gradient = jax.jit(jax.grad(class_total, argnums=1), static_argnames=static)
        self._all_class_gradients = jax.jit(all_class_gradients, static_argnames=static)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    @property
    def _weights(self):
        return ([v.value for v in self.source_model.trainable_variables],
                [v.value for v in self.source_model.non_trainable_variables])

    def _padded(self, batch_pass: Callable, *arrays: np.ndarray) -> np.ndarray:
        """`batch_pass(*arrays)` on the arrays padded to the compiled size, cut back to their rows."""
        rows = len(arrays[0])
        size = _padded_size(rows, self.batch_size)
        return np.asarray(batch_pass(*(_pad(array, size) for array in arrays)))[:rows]

    def _batch_scores(self, images, training):
        return self._padded(lambda xs: self._scores(self._weights, xs, training), images)

    def _batch_loss_gradient(self, images, labels, training):
        return self._padded(lambda xs, ys: self._loss_gradient(self._weights, xs, ys, training), images, labels)

    def _batch_losses(self, images, labels, training):
        return self._padded(lambda xs, ys: self._losses(self._weights, xs, ys, training), images, labels)

    def _batch_class_gradient(self, images, classes, training):
        if classes is None:  # (num_classes, b, ...) from the Jacobian, as (b, num_classes, ...)
            return self._padded(lambda xs: jnp.moveaxis(self._all_class_gradients(self._weights, xs, training), 0, 1),
                                images)
        return self._padded(lambda xs, ks: self._class_gradient(self._weights, xs, ks, training)[:, None], images,
                            classes)

    def fit(self, x, y, batch_size: int = 128, nb_epochs: int = 20, **kwargs) -> None:
        raise ConfigError("the ART bridge evaluates trained models; train with `capsrobust train`")

    def get_activations(self, x, layer, batch_size: int = 128, framework: bool = False) -> np.ndarray:
        raise ConfigError("the ART bridge exposes class scores only, not intermediate activations")

    def save(self, filename: str, path: str | None = None) -> None:
        raise ConfigError("the ART bridge does not save models; the trained-model store does")


def input_gradient(objective: Callable, image_shape: tuple,
                   num_classes: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`capsrobust.art_bridge.input_gradient` under JAX: `jax.grad` of the summed objective, compiled per shape.

    The objective reads the model's variables directly, so their values are compiled into the program as constants:
    fine for attacks, which never change the weights. Batches are padded to a power of two, as in `JaxBridge`: the
    attacks stop moving images once they are fooled, so the batch shrinks step by step.
    """
    del image_shape, num_classes  # shapes come from the arrays; kept for the same signature on every backend
    compiled = jax.jit(jax.grad(lambda images, labels: jnp.sum(objective(images, labels))))

    def gradient(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        rows = len(images)
        size = _padded_size(rows)
        padded = (_pad(np.asarray(array, np.float32), size) for array in (images, labels))
        return np.asarray(compiled(*padded))[:rows]

    return gradient


def scores_and_gradient(model, loss: Callable, label_width: int) -> Callable:
    """`capsrobust.art_bridge.scores_and_gradient` under JAX: `jax.value_and_grad` with the scores as its auxiliary
    output, the weights as arguments (as in `JaxBridge`), batches padded to a power of two."""
    del label_width  # the width comes from the arrays; kept for the same signature on every backend

    def total(weights, images, labels):
        trainable, non_trainable = weights
        outputs, _ = model.stateless_call(trainable, non_trainable, images, training=False)
        return jnp.sum(loss(labels, outputs[SCORES])), outputs[SCORES]

    compiled = jax.jit(jax.value_and_grad(total, argnums=1, has_aux=True))

    def run(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = len(images)
        size = _padded_size(rows)
        padded = (_pad(np.asarray(array, np.float32), size) for array in (images, labels))
        weights = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
        (_, scores), gradient = compiled(weights, *padded)
        return np.asarray(scores)[:rows], np.asarray(gradient)[:rows]

    return run
