"""Where a training step of the paper CapsNet spends its time, stage by stage, beside the whole step.

    pytest benchmarks/test_training_profile.py --benchmark-only

Each stage runs alone, compiled as a `tf.function` at batch 128 on the activations the stage before it produces:
its forward pass and the backward pass a training step needs (the gradients of its own weights and, above the
first stage, of its input).
`whole step` is one optimizer step as the trainer compiles it (`benchmarks.measure.training_steps`); what it spends
beyond the stages' sum is the optimizer update (Adam over 8.2M parameters), the masking and Keras's step overhead.
`python -m benchmarks.report` lists each stage's share.
"""

import keras
import numpy as np
import pytest

from benchmarks.measure import training_steps
from capsrobust.layers.heads import capsule_lengths, mask_poses
from capsrobust.losses import margin_loss, reconstruction_loss
from capsrobust.models import create_model
from capsrobust.training import seed_everything

tf = pytest.importorskip("tensorflow")
if keras.backend.backend() != "tensorflow":
    pytest.skip("the profile times tf.function stages", allow_module_level=True)

BATCH = 128
MODEL = "capsnet"


def _stages(model, images, labels):
    """`[(name, function of one input tensor, that input)]` in the order a forward pass runs them."""
    features = model.conv(images)
    primary = model.primary_capsules(features)
    poses = model.class_capsules(primary)
    masked = mask_poses(poses, labels)
    reconstruction = model.decoder(masked)

    def losses(both):
        poses, reconstruction = both
        return (margin_loss(labels, capsule_lengths(poses))
                + model.recon_weight * reconstruction_loss(images, reconstruction))
    return [("conv1 (256 9x9)", model.conv, images),
            ("primary capsules (256 9x9 stride 2, squash)", model.primary_capsules, features),
            ("class capsules (votes, 3 routing iterations)", model.class_capsules, primary),
            ("decoder (512-1024-784)", model.decoder, masked),
            ("margin and reconstruction losses", losses, (poses, reconstruction))]


def _forward_backward(function, weights, input_gradient: bool):
    """The stage's forward pass and the gradients training takes of it: its weights', and its input's unless the
    input is the images (which no layer below needs)."""
    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            output = function(inputs)
            total = tf.reduce_sum(output * tf.ones_like(output))
        return tape.gradient(total, [*weights, *([inputs] if input_gradient else [])])
    return step


@pytest.mark.parametrize("stage", range(5))
def test_stage(benchmark, record, benchmark_dataset, stage):
    seed_everything(0)
    model = create_model(MODEL)
    images = tf.constant(benchmark_dataset.x_train[:BATCH])
    labels = tf.constant(np.eye(10, dtype="float32")[benchmark_dataset.y_train[:BATCH]])
    model({"image": images, "label": labels})  # builds every layer
    name, function, inputs = _stages(model, images, labels)[stage]
    weights = getattr(function, "trainable_variables", [])
    step = _forward_backward(function, weights, input_gradient=stage > 0)
    step(inputs)  # compiles
    benchmark.pedantic(step, args=(inputs,), rounds=5, iterations=1)
    record("profile", name, "stage", images=BATCH, model=MODEL, order=stage)


def test_whole_step(benchmark, record, benchmark_dataset):
    run = training_steps(MODEL, benchmark_dataset, BATCH, 1)
    benchmark.pedantic(run, rounds=5, iterations=1)
    record("profile", "whole step (optimizer, masking, overhead included)", "step", images=BATCH, model=MODEL,
           order=5)
