"""Matrix capsule layers of Hinton, Sabour & Frosst (2018): primary, convolutional and class capsules.

A capsule layer's output is a pair `(poses, activations)`: poses `(batch, height, width, types, 16)` are flattened
4x4 pose matrices, activations `(batch, height, width, types)` lie in (0, 1). Class capsules drop the spatial axes.
"""

import math

import keras
import numpy as np
from keras import ops

from capsrobust.em_routing import em_routing

POSE = 4  # pose matrices are POSE x POSE
# Convolutional capsules route at most this many bytes of votes at once (see `ConvMatrixCapsules`): em-capsnet's first
# ConvCaps casts ~15 MB of votes per image, and its backward pass needs about four tensors of that size. At 256 MiB
# em-capsnet trains at batch 128 in ~2.4 GB (in chunks of 16 images), and em-capsnet-small's layers (236 and 170 MB
# at batch 128) route whole, 10-25% faster than in two rematerialised chunks (measured before EM's written-out
# gradient).
CHUNK_VOTES_BYTES = 256 << 20


def _transforms_initializer():
    # Each vote entry sums POSE products of pose and matrix entries: with std 1/sqrt(POSE) = 0.5 per matrix entry,
    # votes start on the scale of the poses they come from.
    return keras.initializers.RandomNormal(stddev=POSE ** -0.5)


class PrimaryMatrixCapsules(keras.layers.Layer):
    """A 1x1 convolution to `types` capsules per position: a 4x4 pose (linear) and a sigmoid activation each.

    Input shape: `(batch, height, width, channels)`.
    Output: `(poses (batch, height, width, types, 16), activations (batch, height, width, types))`.
    """

    def __init__(self, types: int, **kwargs):
        super().__init__(**kwargs)
        self.types = int(types)
        self.pose_conv = keras.layers.Conv2D(self.types * POSE * POSE, 1, name="poses")
        self.activation_conv = keras.layers.Conv2D(self.types, 1, activation="sigmoid", name="activations")

    def build(self, input_shape):
        self.pose_conv.build(input_shape)
        self.activation_conv.build(input_shape)

    def call(self, features):
        # The convolutions may compute in bfloat16 (`capsrobust.models.precision`); the capsules are float32.
        poses, activations = (ops.cast(conv(features), self.compute_dtype)
                              for conv in (self.pose_conv, self.activation_conv))
        height, width = poses.shape[1], poses.shape[2]
        return ops.reshape(poses, (-1, height, width, self.types, POSE * POSE)), activations


class _RoutedCapsules(keras.layers.Layer):
    """Owns the learned `beta_u`, `beta_a` (one per output type) and the EM routing settings."""

    def __init__(self, types: int, iterations: int, temperatures, normalize_cost: bool = False,
                 stop_gradient: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.normalize_cost = bool(normalize_cost)
        self.stop_gradient = bool(stop_gradient)
        self.types = int(types)
        self.iterations = int(iterations)
        self.temperatures = tuple(float(t) for t in temperatures)
        if self.iterations < 1:
            raise ValueError(f"EM routing needs at least one iteration. Received: iterations={iterations}")

    def _build_betas(self):
        self.beta_u = self.add_weight(shape=(self.types,), initializer="zeros", name="beta_u")
        self.beta_a = self.add_weight(shape=(self.types,), initializer="zeros", name="beta_a")


class ConvMatrixCapsules(_RoutedCapsules):
    """Convolutional capsules: each output position routes the capsules of its `kernel x kernel` receptive field.

    One 4x4 transformation matrix per (kernel offset, input type, output type), shared across positions; no padding.

    Memory: the votes are `K * K * in_types * types * 16` floats per output position and image, about 15 MB per image
    for the paper's first ConvCaps, and routing them forward and backward needs about a dozen tensors of their size.
    So a batch whose votes exceed `chunk_votes_bytes` goes through votes and routing in chunks of images, one after
    the other, each rematerialised (`keras.remat`): its votes are recomputed in the backward pass rather than kept.
    Images route independently, so the results are those of one whole-batch call.

    Args:
        types: output capsule types.
        kernel: receptive field side `K`.
        strides: step between receptive fields.
        iterations, temperatures, normalize_cost, stop_gradient: EM routing settings (see
            `capsrobust.em_routing.em_routing`).
        chunk_votes_bytes: the most bytes of votes routed at once; larger batches go in chunks of images.

    Input: `(poses (batch, H, W, in_types, 16), activations (batch, H, W, in_types))`.
    Output: `(poses (batch, H', W', types, 16), activations (batch, H', W', types))`, `H' = (H - K) // strides + 1`.
    """

    def __init__(self, types: int, kernel: int, strides: int, iterations: int = 3, temperatures=(1.0, 1.0),
                 normalize_cost: bool = False, stop_gradient: bool = False, chunk_votes_bytes: int = CHUNK_VOTES_BYTES,
                 **kwargs):
        super().__init__(types, iterations, temperatures, normalize_cost, stop_gradient, **kwargs)
        self.kernel = int(kernel)
        self.strides = int(strides)
        if chunk_votes_bytes < 1:
            raise ValueError(f"chunk_votes_bytes must be positive. Received: chunk_votes_bytes={chunk_votes_bytes}")
        self.chunk_votes_bytes = int(chunk_votes_bytes)

    def build(self, input_shape):
        pose_shape = input_shape[0]
        height, width, in_types = pose_shape[1], pose_shape[2], pose_shape[3]
        self.out_height = (height - self.kernel) // self.strides + 1
        self.out_width = (width - self.kernel) // self.strides + 1
        if self.out_height < 1 or self.out_width < 1:
            raise ValueError(f"{self.name}: a {self.kernel}x{self.kernel} kernel does not fit {height}x{width}")
        self.in_types = in_types
        k, s = self.kernel, self.strides
        self._rows = (np.arange(self.out_height)[:, None] * s + np.arange(k)[None, :]).ravel()  # (H' * K,)
        self._cols = (np.arange(self.out_width)[:, None] * s + np.arange(k)[None, :]).ravel()  # (W' * K,)
        # The child (input position and type) behind each vote slot (out_y, out_x, ky, kx, type).
        y = (np.arange(self.out_height)[:, None, None, None, None] * s + np.arange(k)[None, None, :, None, None])
        x = (np.arange(self.out_width)[None, :, None, None, None] * s + np.arange(k)[None, None, None, :, None])
        child = (y * width + x) * in_types + np.arange(in_types)[None, None, None, None, :]
        self.child_ids = child.reshape(-1).astype("int32")
        self.num_children = height * width * in_types
        self.transforms = self.add_weight(shape=(k * k * in_types, self.types, POSE, POSE),
                                          initializer=_transforms_initializer(), name="transforms")
        self._build_betas()

    def _patches(self, tensor):
        """`(batch, H, W, in_types, ...)` -> `(batch, H' * W', K * K * in_types, ...)`, the receptive fields."""
        k = self.kernel
        tail = tuple(tensor.shape[4:])
        patches = ops.take(ops.take(tensor, self._rows, axis=1), self._cols, axis=2)  # (b, H'K, W'K, T, ...)
        patches = ops.reshape(patches, (-1, self.out_height, k, self.out_width, k, self.in_types, *tail))
        patches = ops.transpose(patches, (0, 1, 3, 2, 4, 5, *range(6, 6 + len(tail))))
        return ops.reshape(patches, (-1, self.out_height * self.out_width, k * k * self.in_types, *tail))

    def votes(self, inputs, transforms=None):
        """What EM routing receives at each output position: `(votes, child activations)`, shapes
        `(batch, H' * W', K * K * in_types, types, 16)` and `(batch, H' * W', K * K * in_types)`.

        `transforms` stands in for the layer's own (`call` passes them in as tensors when it routes in chunks)."""
        votes, child_activations = self._transposed_votes(inputs, transforms)
        votes = ops.reshape(votes, (*ops.shape(votes)[:4], POSE, POSE))
        return ops.reshape(ops.swapaxes(votes, -1, -2), (*ops.shape(votes)[:4], POSE * POSE)), child_activations

    def _transposed_votes(self, inputs, transforms):
        """`votes()` with each vote matrix transposed, `V^T = W^T P^T`: the product is then one broadcast matmul,
        `(K * K * in_types, types * 4, 4) @ (batch, H' * W', K * K * in_types, 4, 4)`, whose result is already in
        the routing's layout; the einsum of `V = P W` costs transposes of the votes' size (2.4x the time, forward and
        backward, for em-capsnet-small). Routing treats the 16 pose entries alike, so it can route these instead."""
        poses, activations = inputs
        transforms = self.transforms if transforms is None else transforms
        children = self.kernel * self.kernel * self.in_types
        child_poses = ops.reshape(self._patches(poses), (-1, self.out_height * self.out_width, children, POSE, POSE))
        transposed = ops.reshape(ops.swapaxes(transforms, -1, -2), (children, self.types * POSE, POSE))  # (i, j z, y)
        votes = ops.matmul(transposed, ops.swapaxes(child_poses, -1, -2))  # (b, P, i, j z, x)
        return ops.reshape(votes, (-1, *votes.shape[1:3], self.types, POSE * POSE)), self._patches(activations)

    def chunk_size(self, batch: int | None) -> int | None:
        """Images per chunk for a batch of `batch` (None: unknown until run time), or None to route it whole."""
        per_image = len(self.child_ids) * self.types * POSE * POSE * np.dtype(self.compute_dtype).itemsize
        most = max(1, self.chunk_votes_bytes // per_image)
        if batch is None:
            return most
        # As many chunks as needed, of equal size, so that padding the last one wastes little.
        return None if batch <= most else math.ceil(batch / math.ceil(batch / most))

    def route(self, poses, activations, transforms, beta_u, beta_a):
        """Votes and EM routing of a whole batch, with the layer's weights passed in: `call` without the chunking."""
        votes, child_activations = self._transposed_votes((poses, activations), transforms)
        means, parent_activations, _ = em_routing(votes, child_activations, beta_u, beta_a, self.iterations,
                                                  self.temperatures, self.child_ids, self.num_children,
                                                  self.normalize_cost, self.stop_gradient)
        shape = (-1, self.out_height, self.out_width, self.types)
        means = ops.swapaxes(ops.reshape(means, (*shape, POSE, POSE)), -1, -2)  # the mean of V^T is mu^T
        return ops.reshape(means, (*shape, POSE * POSE)), ops.reshape(parent_activations, shape)

    def call(self, inputs):
        # The weights enter as tensors: TensorFlow cannot rematerialise reads of variables inside a loop.
        weights = [ops.convert_to_tensor(w) for w in (self.transforms, self.beta_u, self.beta_a)]
        batch = inputs[0].shape[0]
        chunk = self.chunk_size(batch)
        if chunk is None:
            return self.route(*inputs, *weights)
        route = _rematerialise(self.route)

        def in_chunks():
            return map_in_chunks(lambda chunked: route(*chunked, *weights), inputs, chunk)

        if batch is not None:
            return in_chunks()
        # A graph traced for any batch size (the bridge's): a batch that fits in one chunk is routed as it is, not
        # padded to a whole chunk (20 images were routed as 202).
        return ops.cond(ops.shape(inputs[0])[0] <= chunk, lambda: route(*inputs, *weights), in_chunks)


class ClassMatrixCapsules(_RoutedCapsules):
    """Class capsules: every capsule of the last layer votes for every class, with coordinate addition.

    Transformation matrices are shared across positions per input type. Coordinate addition: the centre of each input
    capsule's receptive field, in image coordinates scaled to [0, 1] (row, column), is added to the first two entries
    of the right-hand column of its votes, so class poses can know where their parts are.

    Args:
        types: classes.
        centres: `(H, W, 2)` scaled receptive-field centres (row, column) of the input capsules.
        iterations, temperatures, normalize_cost, stop_gradient: EM routing settings.

    Input: `(poses (batch, H, W, in_types, 16), activations (batch, H, W, in_types))`.
    Output: `(poses (batch, types, 16), activations (batch, types))`.
    """

    def __init__(self, types: int, centres, iterations: int = 3, temperatures=(1.0, 1.0), normalize_cost: bool = False,
                 stop_gradient: bool = False, **kwargs):
        super().__init__(types, iterations, temperatures, normalize_cost, stop_gradient, **kwargs)
        self.centres = np.asarray(centres, dtype="float32")

    def build(self, input_shape):
        height, width, in_types = input_shape[0][1:4]
        if self.centres.shape != (height, width, 2):
            raise ValueError(f"{self.name}: centres {self.centres.shape} do not match the {height}x{width} input")
        self.in_types = in_types
        self.transforms = self.add_weight(shape=(in_types, self.types, POSE, POSE),
                                          initializer=_transforms_initializer(), name="transforms")
        offsets = np.zeros((height, width, 1, 1, POSE, POSE), dtype="float32")
        offsets[..., 0, POSE - 1] = self.centres[..., 0, None, None]
        offsets[..., 1, POSE - 1] = self.centres[..., 1, None, None]
        self._coordinates = offsets.reshape(1, height * width, 1, 1, POSE * POSE)
        self._build_betas()

    def votes(self, inputs):
        """What EM routing receives: `(votes, child activations)`, shapes `(batch, H * W * in_types, types, 16)`
        (coordinate addition included) and `(batch, H * W * in_types)`."""
        poses, activations = inputs
        height, width = poses.shape[1], poses.shape[2]
        child_poses = ops.reshape(poses, (-1, height, width, self.in_types, POSE, POSE))
        votes = ops.einsum("bhwtxy,tjyz->bhwtjxz", child_poses, self.transforms)
        votes = ops.reshape(votes, (-1, height * width, self.in_types, self.types, POSE * POSE))
        # `ops.add`, not `+`: under torch, `tensor + ndarray` lets numpy convert a tensor that requires grad, and fail.
        votes = ops.reshape(ops.add(votes, ops.cast(self._coordinates, votes.dtype)),
                            (-1, height * width * self.in_types, self.types, POSE * POSE))
        return votes, ops.reshape(activations, (-1, height * width * self.in_types))

    def route(self, votes, child_activations, iterations: int | None = None):
        """EM routing of `votes()`'s output to the classes: `(poses (batch, types, 16), activations (batch, types))`.

        `iterations` overrides the layer's count (1: a single M-step on uniform assignments, no E-step); the inverse
        temperature schedule keeps its (first, last) ends.
        """
        means, parent_activations, _ = em_routing(votes[:, None], child_activations[:, None], self.beta_u,
                                                  self.beta_a, iterations or self.iterations, self.temperatures,
                                                  normalize_cost=self.normalize_cost, stop_gradient=self.stop_gradient)
        return means[:, 0], parent_activations[:, 0]

    def call(self, inputs):
        return self.route(*self.votes(inputs))


def _rematerialise(function):
    """`keras.remat(function)`, except in eager TensorFlow, where `tf.recompute_grad` counts the gradients of the
    function's arguments twice (TensorFlow 2.21) and where nothing is compiled to save memory in anyway."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.executing_eagerly():
            return function
    return keras.remat(function)


def _sequential_map(function, inputs):
    """`keras.ops.map` over a tuple, one element after another: TensorFlow's `map_fn` would otherwise run up to 10
    elements at once in a graph, holding all their memory. `function` returns as many tensors as it receives."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.map_fn(function, inputs, parallel_iterations=1)
    return ops.map(function, inputs)


def map_in_chunks(function, inputs, chunk: int):
    """`function(inputs)` computed on chunks of `chunk` items along the batch axis, one chunk after another.

    Args:
        function: maps a tuple of tensors with a leading batch axis to a tuple of as many tensors, of the same dtypes,
            with the same batch axis, treating the items of the batch independently.
        inputs: a tuple of tensors `(batch, ...)`.
        chunk: items per chunk; the batch is padded with zeros to a multiple of it.

    Returns:
        `function(inputs)`.
    """
    batch = ops.shape(inputs[0])[0]
    padding = (-batch) % chunk

    def split(x):
        x = ops.pad(x, [(0, padding)] + [(0, 0)] * (len(x.shape) - 1))
        return ops.reshape(x, (-1, chunk, *x.shape[1:]))

    outputs = _sequential_map(function, tuple(split(x) for x in inputs))
    return tuple(ops.reshape(y, (-1, *y.shape[2:]))[:batch] for y in outputs)


def receptive_field_centres(image_shape, layers) -> np.ndarray:
    """Centres of the receptive fields after a stack of unpadded convolutions, scaled to [0, 1].

    Args:
        image_shape: `(height, width, channels)` of the input image.
        layers: `(kernel, stride)` of each layer in order.

    Returns:
        `(H, W, 2)`: the (row, column) of each output position's receptive-field centre, as `(pixel + 0.5) / size`.
    """
    sizes = list(image_shape[:2])
    for kernel, stride in layers:
        sizes = [(n - kernel) // stride + 1 for n in sizes]
    axes = []
    for n, size in zip(sizes, image_shape[:2]):
        centre = np.arange(n, dtype="float64")
        for kernel, stride in reversed(layers):
            centre = centre * stride + (kernel - 1) / 2
        axes.append((centre + 0.5) / size)
    rows, cols = np.meshgrid(*axes, indexing="ij")
    return np.stack([rows, cols], axis=-1).astype("float32")
