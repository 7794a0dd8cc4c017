"""One stored model, every installed Keras backend: the same predictions, gradients and adversarial images.

The models are trained once under TensorFlow (this process) and published to a store. Each backend loads them from
it (this process's own backend in-process, every other one in a subprocess), wraps them with `to_art_classifier`
(ART's `TensorFlowV2Classifier`, ART's `PyTorchClassifier`, the JAX estimator) and saves what the bridge computes.
A backend whose framework is not installed is skipped; CI installs the CPU builds of all three.
"""

import contextlib
import io
import json

import keras
import numpy as np
import pytest

from capsrobust.models import model_config
from capsrobust.store import ModelStore

NUM_IMAGES = 16
MODELS = ("capsnet-small", "cnn-small")
OTHER_BACKENDS = ("jax", "torch")

# Runs under the backend being checked; writes `<out>.npz` and prints the bridge's classes as JSON.
_SCRIPT = """
import json

import keras
import numpy as np

from attacks import create_attack
from capsrobust.art_bridge import to_art_classifier
from capsrobust.data import load_dataset
from capsrobust.store import ModelStore

store = ModelStore({root!r})
data = load_dataset("mnist", subset=True)
images, labels = data.x_test[:{num_images}], data.y_test[:{num_images}]
results, classes = {{}}, {{}}
for name in {models!r}:
    classifier = to_art_classifier(store.load(store.resolve(name)), batch_size=8)
    classes[name] = [cls.__name__ for cls in type(classifier).__mro__]
    results[name + "/scores"] = classifier.predict(images)
    results[name + "/loss"] = classifier.compute_loss(images, labels)
    results[name + "/loss_gradient"] = classifier.loss_gradient(images, labels)
    results[name + "/class_gradient"] = classifier.class_gradient(images[:4], label=labels[:4])
    results[name + "/fgsm"] = create_attack("fgsm", classifier, 0.1).generate(images, labels)
    if name.startswith("capsnet"):  # the vote attack differentiates its own objective (input_gradient)
        vote = create_attack("vote", classifier, 0.1, steps=5, seed=0)
        results[name + "/vote"] = vote.generate(images, labels)
np.savez({out!r}, **results)
print(json.dumps({{"backend": keras.backend.backend(), "classes": classes}}))
"""


@pytest.fixture(scope="module")
def store_root(trained_small_models, tmp_path_factory):
    """A store holding the session's trained capsnet-small and cnn-small, written under TensorFlow."""
    root = tmp_path_factory.mktemp("store")
    store = ModelStore(root)
    for name in MODELS:
        spec = {"model": name, "config": model_config(name), "dataset": {"name": "mnist", "source": "subset"}}
        store.publish(store.new_run(spec), trained_small_models[name],
                      {**spec, "metrics": {"val_accuracy": 0.5, "test_accuracy": 0.5}, "backend": "tensorflow"})
    return root


@pytest.fixture(scope="module")
def computed(store_root, run_under_backend, tmp_path_factory):
    """`backend -> (arrays, info)`, computed lazily so each backend's subprocess runs once per module."""
    cache: dict = {}

    def get(backend: str):
        if backend not in cache:
            out = tmp_path_factory.mktemp(backend) / "results.npz"
            script = _SCRIPT.format(root=str(store_root), num_images=NUM_IMAGES, models=MODELS, out=str(out))
            if backend == keras.backend.backend():  # this process's backend: no subprocess needed
                with contextlib.redirect_stdout(io.StringIO()) as printed:
                    exec(compile(script, "<bridge script>", "exec"), {})
                stdout = printed.getvalue()
            else:
                stdout = run_under_backend(backend, script, timeout=600)
            cache[backend] = (dict(np.load(out)), json.loads(stdout.strip().splitlines()[-1]))
        return cache[backend]

    return get


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_the_bridge_is_arts_estimator_for_the_backend(computed, backend):
    expected = {"jax": "ClassifierNeuralNetwork", "torch": "PyTorchClassifier"}[backend]
    _, info = computed(backend)
    assert info["backend"] == backend
    assert all(expected in classes for classes in info["classes"].values())
    assert all("TensorFlowV2Classifier" in classes for classes in computed("tensorflow")[1]["classes"].values())


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("model", MODELS)
def test_stored_weights_give_the_same_scores_and_gradients(computed, backend, model):
    reference, _ = computed("tensorflow")
    arrays, _ = computed(backend)
    np.testing.assert_allclose(arrays[f"{model}/scores"], reference[f"{model}/scores"], atol=1e-5)
    assert (arrays[f"{model}/scores"].argmax(1) == reference[f"{model}/scores"].argmax(1)).all()
    np.testing.assert_allclose(arrays[f"{model}/loss"], reference[f"{model}/loss"], rtol=1e-4, atol=1e-6)
    for gradient in ("loss_gradient", "class_gradient"):
        expected = reference[f"{model}/{gradient}"]
        assert arrays[f"{model}/{gradient}"].shape == expected.shape and np.abs(expected).max() > 0
        assert _relative_error(arrays[f"{model}/{gradient}"], expected) < 1e-4, gradient


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("attack", ["cnn-small/fgsm", "capsnet-small/fgsm", "capsnet-small/vote"])
def test_attacks_make_the_same_adversarial_images(computed, backend, attack):
    reference, _ = computed("tensorflow")
    arrays, _ = computed(backend)
    differ = np.abs(arrays[attack] - reference[attack]) > 1e-5
    # A gradient sign may flip where the gradient is float32 rounding away from zero; nowhere else may they differ.
    assert differ.mean() <= 1e-3, f"{differ.mean():.2%} of the pixels differ"
    if attack.endswith("fgsm"):
        gradient = np.abs(reference[attack.replace("fgsm", "loss_gradient")])
        assert (gradient[differ] <= 1e-4 * gradient.max()).all()
