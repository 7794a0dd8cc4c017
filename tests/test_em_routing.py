"""EM routing and matrix capsule layers: shapes, assignments, clustering, finiteness, coordinates, spread loss."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from capsrobust.em_routing import em_routing, initial_assignments, inverse_temperatures
from capsrobust.layers import ClassMatrixCapsules, ConvMatrixCapsules, PrimaryMatrixCapsules, receptive_field_centres
from capsrobust.losses import spread_loss
from capsrobust.models import create_model


@pytest.fixture(scope="module")
def small_capsules():
    """em-capsnet-small's capsule stack on 28x28 inputs, built once."""
    tf.keras.utils.set_random_seed(0)
    return create_model("em-capsnet-small")


@pytest.fixture(scope="module")
def norb_capsules():
    """The paper configuration (A=B=C=D=32) on smallNORB's 32x32 images and 5 classes, built once: each EM model
    build costs about a second (Keras traces the routing symbolically to create the weights)."""
    return create_model("em-capsnet", image_shape=(32, 32, 1), num_classes=5)


def _layer_shapes(model, images):
    features = model.conv(images)
    shapes = [tuple(features.shape)]
    capsules = model.primary_capsules(features)
    shapes.append(tuple(tuple(t.shape) for t in capsules))
    for layer in model.conv_capsules:
        capsules = layer(capsules)
        shapes.append(tuple(tuple(t.shape) for t in capsules))
    shapes.append(tuple(tuple(t.shape) for t in model.class_capsules(capsules)))
    return shapes


def test_shapes_through_every_layer(small_capsules, norb_capsules, mnist_subset):
    assert _layer_shapes(small_capsules, mnist_subset.x_test[:2]) == [
        (2, 12, 12, 64),
        ((2, 12, 12, 8, 16), (2, 12, 12, 8)),
        ((2, 5, 5, 16, 16), (2, 5, 5, 16)),
        ((2, 3, 3, 16, 16), (2, 3, 3, 16)),
        ((2, 10, 16), (2, 10)),
    ]
    outputs = small_capsules(mnist_subset.x_test[:2])
    assert outputs["scores"].shape == (2, 10) and outputs["poses"].shape == (2, 10, 16)
    assert _layer_shapes(norb_capsules, np.zeros((1, 32, 32, 1), "float32"))[-3:] == [
        ((1, 6, 6, 32, 16), (1, 6, 6, 32)), ((1, 4, 4, 32, 16), (1, 4, 4, 32)), ((1, 5, 16), (1, 5))]


def test_parameter_counts(small_capsules, norb_capsules):
    # smallNORB (32x32, 5 classes): the paper quotes about 68K for the small configuration and 310K for A=B=C=D=32.
    assert create_model("em-capsnet-small", image_shape=(32, 32, 1), num_classes=5).count_params() == 67_155
    assert norb_capsules.count_params() == 316_395
    assert small_capsules.count_params() == 68_445  # MNIST (28x28, 10 classes)
    assert create_model("em-capsnet").count_params() == 318_965


def test_assignments_sum_to_one_over_all_parents_of_each_child(small_capsules, mnist_subset):
    layer = small_capsules.conv_capsules[0]  # 12x12x8 children, 3x3 stride 2 fields: most children have 1-4 parents
    capsules = small_capsules.primary_capsules(small_capsules.conv(mnist_subset.x_test[:3]))
    votes, activations = layer.votes(capsules)
    for iterations in (1, 2, 3):
        _, _, assignments = em_routing(votes, activations, layer.beta_u, layer.beta_a, iterations, (0.01, 0.01),
                                       layer.child_ids, layer.num_children)
        per_slot = ops.convert_to_numpy(ops.sum(assignments, axis=-1)).reshape(3, -1)  # (batch, P*I)
        per_child = np.stack([np.bincount(layer.child_ids, weights=row, minlength=layer.num_children)
                              for row in per_slot])
        covered = np.bincount(layer.child_ids, minlength=layer.num_children) > 0
        np.testing.assert_allclose(per_child[:, covered], 1.0, rtol=1e-5)
    # Fully connected routing: each child's assignments sum to 1 over the parents.
    rng = np.random.default_rng(0)
    votes = rng.normal(size=(2, 1, 30, 4, 16)).astype("float32")
    _, _, assignments = em_routing(votes, np.full((2, 1, 30), 0.5, "float32"), np.zeros(4, "float32"),
                                   np.zeros(4, "float32"), 3, (0.01, 0.01))
    np.testing.assert_allclose(ops.convert_to_numpy(ops.sum(assignments, axis=-1)), 1.0, rtol=1e-5)


def test_uniform_start_counts_every_parent_of_a_border_child():
    # 1-D picture of a 3-wide, stride-2 window over 5 inputs: positions 0 and 4 have one parent window, 2 has two.
    child_ids = np.array([0, 1, 2, 2, 3, 4])  # two windows of 3, sharing input 2
    uniform = initial_assignments(num_parents=4, child_ids=child_ids, num_children=5, positions=2, children=3)
    np.testing.assert_allclose(uniform.ravel(), [1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 4, 1 / 4])


def test_two_clear_clusters_go_to_the_right_parents():
    """Children 0-9 agree on parent 0 and scatter for parent 1; children 10-19 the reverse."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16))
    votes = rng.normal(scale=3.0, size=(1, 1, 20, 2, 16))  # scattered votes...
    votes[0, 0, :10, 0] = centres[0] + rng.normal(scale=0.05, size=(10, 16))  # ...except these tight clusters
    votes[0, 0, 10:, 1] = centres[1] + rng.normal(scale=0.05, size=(10, 16))
    means, activations, assignments = em_routing(votes.astype("float32"), np.ones((1, 1, 20), "float32"),
                                                 np.zeros(2, "float32"), np.zeros(2, "float32"), 3, (0.01, 0.01))
    assignments = ops.convert_to_numpy(assignments)[0, 0]
    assert (assignments[:10, 0] > 0.99).all() and (assignments[10:, 1] > 0.99).all()
    np.testing.assert_allclose(ops.convert_to_numpy(means)[0, 0], centres, atol=0.05)


@pytest.mark.parametrize("normalize_cost, temperatures", [(True, [0.5, 1.0]), (False, [0.001, 0.01])])
# 1, 3 and 5 iterations in the quick tier (`-m "not slow"`), 2 and 4 as well in the full suite.
@pytest.mark.parametrize("iterations", [1, pytest.param(2, marks=pytest.mark.slow), 3,
                                        pytest.param(4, marks=pytest.mark.slow), 5])
def test_values_and_gradients_stay_finite(iterations, normalize_cost, temperatures):
    tf.keras.utils.set_random_seed(iterations)
    model = create_model("em-capsnet-small", em_iterations=iterations, inverse_temperature=temperatures,
                         normalize_cost=normalize_cost, reconstruction=True)
    images = np.stack([np.zeros((28, 28, 1)), np.ones((28, 28, 1)),
                       np.random.default_rng(0).random((28, 28, 1))]).astype("float32")  # saturated and noise
    labels = tf.one_hot([0, 1, 2], 10)
    x = tf.constant(images)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outputs = model({"image": x, "label": labels}, training=True)
        loss = tf.reduce_sum(model.loss_per_example(x, labels, outputs))
    for name, value in outputs.items():
        assert np.isfinite(value.numpy()).all(), name
    gradients = tape.gradient(loss, [x, *model.trainable_weights])
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in gradients)
    assert any(np.abs(g.numpy()).max() > 0 for g in gradients[1:])


def test_inverse_temperature_rises_linearly():
    assert inverse_temperatures(3, 0.001, 0.01) == pytest.approx([0.001, 0.0055, 0.01])
    assert inverse_temperatures(1, 0.001, 0.01) == [0.01]
    with pytest.raises(ValueError, match="at least one iteration"):
        inverse_temperatures(0, 0.1, 0.2)


def test_coordinate_addition_uses_receptive_field_centres():
    # MNIST: conv 5x5/2 -> 1x1 -> 3x3/2 -> 3x3/1 gives a 3x3 grid whose centres sit at pixels 8, 12, 16.
    centres = receptive_field_centres((28, 28, 1), [(5, 2), (1, 1), (3, 2), (3, 1)])
    assert centres.shape == (3, 3, 2)
    np.testing.assert_allclose(centres[:, 0, 0], np.array([8.5, 12.5, 16.5]) / 28)
    np.testing.assert_allclose(centres[0, :, 1], np.array([8.5, 12.5, 16.5]) / 28)
    # The coordinates enter the votes' right-hand column, rows 0 (row) and 1 (column), and nowhere else.
    layer = ClassMatrixCapsules(2, centres, iterations=1)
    layer.build(((None, 3, 3, 1, 16), (None, 3, 3, 1)))
    offsets = layer._coordinates.reshape(3, 3, 4, 4)
    np.testing.assert_allclose(offsets[..., 0, 3], centres[..., 0])
    np.testing.assert_allclose(offsets[..., 1, 3], centres[..., 1])
    assert np.count_nonzero(offsets) == 2 * 9


def test_layers_reject_inputs_they_cannot_cover():
    with pytest.raises(ValueError, match="does not fit"):
        ConvMatrixCapsules(4, kernel=3, strides=1)((ops.zeros((1, 2, 2, 2, 16)), ops.zeros((1, 2, 2, 2))))
    with pytest.raises(ValueError, match="at least one iteration"):
        ConvMatrixCapsules(4, kernel=3, strides=1, iterations=0)
    assert PrimaryMatrixCapsules(3)(ops.zeros((1, 4, 4, 5)))[0].shape == (1, 4, 4, 3, 16)


def test_spread_loss_by_hand():
    labels = np.eye(3, dtype="float32")[[0]]
    activations = np.array([[0.6, 0.5, 0.1]], "float32")
    # m = 0.2: class 1 is within the margin by 0.1 -> 0.01; class 2 is 0.5 below -> 0.
    assert float(spread_loss(labels, activations, 0.2)[0]) == pytest.approx(0.01)
    # m = 0.9: (0.9 - 0.1)^2 + (0.9 - 0.5)^2 = 0.64 + 0.16.
    assert float(spread_loss(labels, activations, 0.9)[0]) == pytest.approx(0.8)


def test_the_models_margin_drives_its_loss(small_capsules):
    labels = np.eye(10, dtype="float32")[[3]]
    scores = np.full((1, 10), 0.5, "float32")
    small_capsules.spread_margin.assign(0.2)
    low = float(small_capsules.classification_loss(labels, scores)[0])
    small_capsules.spread_margin.assign(0.9)
    high = float(small_capsules.classification_loss(labels, scores)[0])
    assert low == pytest.approx(9 * 0.04) and high == pytest.approx(9 * 0.81)
    assert "spread_margin" in [w.path.split("/")[-1] for w in small_capsules.non_trainable_weights]


def test_normalized_cost_standardises_activation_logits_over_parents():
    rng = np.random.default_rng(1)
    votes = rng.normal(size=(2, 3, 12, 5, 16)).astype("float32")
    _, activations, _ = em_routing(votes, rng.random((2, 3, 12)).astype("float32"), np.zeros(5, "float32"),
                                   np.zeros(5, "float32"), 3, (0.5, 1.0), normalize_cost=True)
    logits = np.log(activations) - np.log1p(-ops.convert_to_numpy(activations))  # lambda * (beta_a - z), lambda = 1
    np.testing.assert_allclose(logits.mean(axis=-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(logits.std(axis=-1), 1.0, atol=1e-3)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_routing_in_chunks_equals_routing_the_whole_batch(compiled):
    """A batch whose votes exceed `chunk_votes_bytes` routes in rematerialised chunks: same values and gradients."""
    rng = np.random.default_rng(0)
    poses = tf.constant(rng.normal(size=(5, 5, 5, 3, 16)))
    activations = tf.constant(rng.uniform(0.05, 0.95, size=(5, 5, 5, 3)))
    whole = ConvMatrixCapsules(4, kernel=3, strides=1, iterations=2, temperatures=(0.5, 1.0), normalize_cost=True,
                               dtype="float64")
    chunked = ConvMatrixCapsules(4, kernel=3, strides=1, iterations=2, temperatures=(0.5, 1.0), normalize_cost=True,
                                 dtype="float64", chunk_votes_bytes=2 * 9 * 27 * 4 * 16 * 8)  # 2 images' votes
    for layer in (whole, chunked):
        layer.build((poses.shape, activations.shape))
    chunked.set_weights(whole.get_weights())
    assert whole.chunk_size(5) is None and chunked.chunk_size(5) == 2  # 3 chunks, the last one padded

    def values_and_gradients(layer, poses=poses, activations=activations):
        with tf.GradientTape() as tape:
            tape.watch([poses, activations])
            outputs = layer((poses, activations))
            scalar = tf.reduce_sum(outputs[0] * tf.sin(outputs[0])) + tf.reduce_sum(outputs[1] ** 2)
        return [*outputs, *tape.gradient(scalar, [poses, activations, *layer.trainable_weights])]

    run = tf.function(values_and_gradients) if compiled else values_and_gradients
    for expected, actual in zip(run(whole), run(chunked)):
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)
    # The votes are still V = P W, whatever layout the layer routes them in.
    votes, _ = whole.votes((poses, activations))
    child_poses = tf.reshape(whole._patches(poses), (5, 9, 27, 4, 4))
    expected = tf.einsum("bpixy,ijyz->bpijxz", child_poses, whole.transforms)
    np.testing.assert_allclose(votes.numpy(), tf.reshape(expected, votes.shape).numpy(), rtol=1e-12)


def test_a_graph_for_any_batch_routes_small_batches_whole_and_large_ones_in_chunks():
    """The ART bridge traces one graph for every batch size: a batch that fits in a chunk is routed as it is (not
    padded to a chunk), a larger one in chunks, with the values and gradients of routing the batch whole."""
    rng = np.random.default_rng(0)
    poses = tf.constant(rng.normal(size=(5, 5, 5, 3, 16)))
    activations = tf.constant(rng.uniform(0.05, 0.95, size=(5, 5, 5, 3)))
    options = dict(kernel=3, strides=1, iterations=2, temperatures=(0.5, 1.0), normalize_cost=True, dtype="float64")
    whole = ConvMatrixCapsules(4, **options)
    chunked = ConvMatrixCapsules(4, **options, chunk_votes_bytes=2 * 9 * 27 * 4 * 16 * 8)  # 2 images' votes
    for layer in (whole, chunked):
        layer.build((poses.shape, activations.shape))
    chunked.set_weights(whole.get_weights())
    spec = [tf.TensorSpec((None, 5, 5, 3, 16), tf.float64), tf.TensorSpec((None, 5, 5, 3), tf.float64)]

    def values_and_gradients(layer, poses, activations):
        with tf.GradientTape() as tape:
            tape.watch([poses, activations])
            outputs = layer((poses, activations))
            scalar = tf.reduce_sum(outputs[0] * tf.sin(outputs[0])) + tf.reduce_sum(outputs[1] ** 2)
        return [*outputs, *tape.gradient(scalar, [poses, activations, *layer.trainable_weights])]

    any_batch = tf.function(lambda p, a: values_and_gradients(chunked, p, a), input_signature=spec)
    for size in (2, 5):  # exactly one chunk; then two chunks and a padded one
        for expected, actual in zip(values_and_gradients(whole, poses[:size], activations[:size]),
                                    any_batch(poses[:size], activations[:size])):
            np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)
