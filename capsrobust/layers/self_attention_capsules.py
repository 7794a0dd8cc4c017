"""Fully connected capsule layer with self-attention routing (Efficient-CapsNet's class capsules)."""

import keras

from capsrobust.routing import capsule_votes, self_attention_routing

# He normal as the authors' code computes it for their layout of W, (parents, children, child_dim, parent_dim):
# Keras takes fan_in = child_dim * parents * children there, which is fan_out in our (children, parents, parent_dim,
# child_dim) layout. On Efficient-CapsNet's 10x16x8x16 weights that is stddev sqrt(2 / 1280) ~ 0.04.
DEFAULT_KERNEL_INITIALIZER = {"class_name": "VarianceScaling",
                              "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}}


class SelfAttentionCapsules(keras.layers.Layer):
    """Every child capsule votes for every parent through its own matrix `W_ij`; self-attention routing combines them.

    Mazzia, Salvetti & Chiaberge (2021): `u_hat_j|i = W_ij u_i`, then one pass of self-attention routing (see
    `capsrobust.routing.self_attention_routing`) with a learned prior `B_ji` per (parent, child) pair, zero at first.

    Args:
        num_capsules: number of parent capsules, e.g. 10 (one per class).
        capsule_dim: components per parent capsule, e.g. 16.
        kernel_initializer: initializer of `W`, shape `(num_children, num_capsules, capsule_dim, child_dim)`; the
            default is the authors' He normal (see `DEFAULT_KERNEL_INITIALIZER`).

    Input shape:
        `(batch_size, num_children, child_dim)`.

    Output shape:
        `(batch_size, num_capsules, capsule_dim)`.

    >>> SelfAttentionCapsules(10, 16)(keras.ops.ones((2, 16, 8))).shape
    (2, 10, 16)
    """

    def __init__(self, num_capsules: int, capsule_dim: int, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        for arg, value in (("num_capsules", num_capsules), ("capsule_dim", capsule_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SelfAttentionCapsules expected a positive integer. Received: {arg}={value!r}")
        self.num_capsules = num_capsules
        self.capsule_dim = capsule_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer or DEFAULT_KERNEL_INITIALIZER)

    def build(self, input_shape):
        _, num_children, child_dim = input_shape
        self.kernel = self.add_weight(shape=(num_children, self.num_capsules, self.capsule_dim, child_dim),
                                      initializer=self.kernel_initializer, name="kernel")
        self.priors = self.add_weight(shape=(self.num_capsules, num_children), initializer="zeros", name="priors")

    def votes(self, inputs):
        """The children's votes `u_hat`, shape `(batch_size, num_children, num_capsules, capsule_dim)`."""
        return capsule_votes(inputs, self.kernel)

    def call(self, inputs):
        poses, _ = self_attention_routing(capsule_votes(inputs, self.kernel, by_parent=True), self.priors)
        return poses

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_capsules, self.capsule_dim)

    def get_config(self):
        config = {"num_capsules": self.num_capsules, "capsule_dim": self.capsule_dim,
                  "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}
        return {**super().get_config(), **config}
