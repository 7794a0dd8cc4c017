"""Attack factories: eps-ball and [0, 1] bounds, attack-strength ordering, defaults, validation, determinism."""

import math

import numpy as np
import pytest

from attacks import attack_defaults, make_attack, validate_inputs
from capsrobust.art_bridge import to_art_classifier
from capsrobust.errors import ConfigError

FAMILIES = {"capsule": "capsnet-small", "cnn": "cnn-small"}
# Images attacked per family: capsnet-small's gradient costs ~0.2 s per 100 images on 2 CPU cores, so fewer there.
NUM_ATTACKED = {"capsule": 64, "cnn": 100}
TOLERANCE = 0.05  # accuracy an iterative attack may trail FGSM by (3 of 64 images)


@pytest.fixture(scope="module")
def classifiers(trained_small_models):
    """Both families trained 2 epochs on the subset (once per session), as ART classifiers (model loss)."""
    return {family: to_art_classifier(trained_small_models[name]) for family, name in FAMILIES.items()}


@pytest.fixture(scope="module")
def clean(classifiers, mnist_subset):
    """Per family, the first `NUM_ATTACKED` test images it classifies correctly, and their labels."""
    images, labels = mnist_subset.x_test[:200], mnist_subset.y_test[:200]
    picked = {}
    for family, classifier in classifiers.items():
        correct = classifier.predict(images).argmax(axis=1) == labels
        count = NUM_ATTACKED[family]
        assert correct.sum() >= count, f"{family} is too inaccurate to test attacks on"
        picked[family] = images[correct][:count], labels[correct][:count]
    return picked


def _accuracy(classifier, images, labels) -> float:
    return float(np.mean(classifier.predict(images).argmax(axis=1) == labels))


def _distances(adversarial, images, norm: str) -> np.ndarray:
    delta = (adversarial - images).reshape(len(images), -1)
    return np.abs(delta).max(axis=1) if norm == "inf" else np.linalg.norm(delta, axis=1)


BASIC = ("fgsm", "bim", "pgd")  # the capsule-aware, AutoAttack and transfer attacks: tests/test_capsule_attacks.py


@pytest.fixture(scope="module")
def at_eps_0_1(classifiers, clean):
    """Adversarial images from each basic method at L-inf eps = 0.1, per family."""
    return {(family, method): make_attack(method, classifier, 0.1, seed=0).generate(*clean[family])
            for family, classifier in classifiers.items() for method in BASIC}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_stays_in_the_linf_ball_and_in_the_unit_range(at_eps_0_1, clean, family):
    images = clean[family][0]
    for method in BASIC:
        adversarial = at_eps_0_1[family, method]
        assert adversarial.shape == images.shape and adversarial.dtype == np.float32
        assert _distances(adversarial, images, "inf").max() <= 0.1 + 1e-6, method
        assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0, method
        assert np.mean(_distances(adversarial, images, "inf") > 0.09) > 0.5, method  # it did move


@pytest.mark.parametrize("family", FAMILIES)
def test_iterative_attacks_are_at_least_as_strong_as_fgsm(classifiers, clean, at_eps_0_1, family):
    labels = clean[family][1]
    accuracy = {method: _accuracy(classifiers[family], at_eps_0_1[family, method], labels) for method in BASIC}
    assert accuracy["fgsm"] < 1.0, accuracy
    for method in ("bim", "pgd"):
        assert accuracy[method] <= accuracy["fgsm"] + TOLERANCE, accuracy


@pytest.mark.parametrize("method", BASIC)
def test_l2_attacks_stay_in_the_l2_ball(classifiers, clean, method):
    images, labels = clean["cnn"]
    adversarial = make_attack(method, classifiers["cnn"], 1.5, norm="2", seed=0).generate(images[:40], labels[:40])
    assert _distances(adversarial, images[:40], "2").max() <= 1.5 * (1 + 1e-5)
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0


@pytest.mark.parametrize("family, method", [("capsule", "fgsm"), ("cnn", "pgd")])
def test_accuracy_falls_as_eps_grows(classifiers, clean, family, method):
    images, labels = clean[family]
    small, large = (_accuracy(classifiers[family], make_attack(method, classifiers[family], eps, seed=0)
                              .generate(images, labels), labels) for eps in (0.05, 0.3))
    assert large < small, (small, large)


def test_targeted_bim_reaches_the_target_more_often_than_chance(classifiers, clean):
    images, labels = clean["cnn"]
    targets = (labels + 1) % 10
    adversarial = make_attack("bim", classifiers["cnn"], 0.2, targeted=True).generate(images, targets)
    hit_rate = np.mean(classifiers["cnn"].predict(adversarial).argmax(axis=1) == targets)
    assert hit_rate > 0.3, hit_rate  # chance is 0.1
    with pytest.raises(ConfigError, match="Received: y=None"):
        make_attack("bim", classifiers["cnn"], 0.2, targeted=True).generate(images)


def test_pgd_with_a_seed_is_deterministic_and_leaves_numpys_generator_alone(classifiers, clean):
    images, labels = clean["cnn"][0][:20], clean["cnn"][1][:20]
    classifier = classifiers["cnn"]
    np.random.seed(123)
    state = np.random.get_state()
    first, second = (make_attack("pgd", classifier, 0.3, steps=5, seed=7).generate(images, labels) for _ in range(2))
    other = make_attack("pgd", classifier, 0.3, steps=5, seed=8).generate(images, labels)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)  # the seed drives the random start
    assert np.array_equal(np.random.get_state()[1], state[1])


def test_defaults_follow_the_literature_and_art_defaults_never_leak(classifiers):
    # Kurakin et al.: step 1/255, ceil(min(255 eps + 4, 1.25 * 255 eps)) steps. eps = 0.1: 255 * 0.1 = 25.5,
    # min(25.5 + 4, 1.25 * 25.5) = min(29.5, 31.875) = 29.5, ceil -> 30.
    assert attack_defaults("bim", 0.1) == {"step_size": 1 / 255, "steps": 30, "random_start": False}
    # eps = 8/255: min(12, 10) = 10 exactly, although 8/255 * 255 is not exactly 8 in floating point.
    assert [attack_defaults("bim", k / 255)["steps"] for k in (2, 4, 8, 16)] == [3, 5, 10, 20]
    assert attack_defaults("pgd", 0.3) == {"step_size": 0.01, "steps": 40, "random_start": True}
    assert attack_defaults("pgd", 0.1) == {"step_size": 0.01, "steps": 40, "random_start": True}
    assert attack_defaults("fgsm", 0.2) == {"step_size": 0.2, "steps": 1, "random_start": False}
    assert attack_defaults("pgd", 2.0, norm="2") == {"step_size": 2.5 * 2.0 / 40, "steps": 40, "random_start": True}

    bim = make_attack("bim", classifiers["cnn"], 0.1).art_attack
    assert (bim.eps, bim.eps_step, bim.max_iter, bim.num_random_init, bim.verbose) == (0.1, 1 / 255, 30, 0, False)
    pgd = make_attack("pgd", classifiers["cnn"], 0.3).art_attack
    assert (pgd.eps_step, pgd.max_iter, pgd.num_random_init, pgd.norm, pgd.verbose) == (0.01, 40, 1, np.inf, False)
    record = make_attack("fgsm", classifiers["cnn"], 0.25, batch_size=32).record()
    assert record == {"method": "fgsm", "eps": 0.25, "norm": "inf", "step_size": 0.25, "steps": 1,
                      "random_start": False, "targeted": False, "batch_size": 32, "seed": None, "loss": "model",
                      "art_class": "FastGradientMethod"}
    assert attack_defaults("pgd100", 0.3) == {"step_size": 0.01, "steps": 100, "random_start": True}
    assert attack_defaults("autoattack", 0.3) == {"step_size": 0.6, "steps": 100, "random_start": True}
    assert attack_defaults("rbim", 0.1) == attack_defaults("bim", 0.1)
    assert attack_defaults("vote", 0.3) == attack_defaults("pgd", 0.3)
    assert attack_defaults("transfer", 0.3, options={"base": "bim"}) == attack_defaults("bim", 0.3)


@pytest.mark.parametrize("kwargs, argument", [
    ({"eps": -0.1}, "eps=-0.1"),
    ({"eps": 1.5}, "eps=1.5"),
    ({"eps": math.nan}, "eps=nan"),
    ({"step_size": -0.01}, "step_size=-0.01"),
    ({"step_size": math.inf}, "step_size=inf"),
    ({"steps": 0}, "steps=0"),
    ({"norm": "1"}, "norm='1'"),
    ({"method": "cw"}, "method='cw'"),
    ({"method": "fgsm", "steps": 10}, "steps=10"),
    ({"method": "bim", "random_start": True}, "random_start=True"),
    ({"method": "rbim", "options": {"recon_weight": -1.0}}, "recon_weight=-1.0"),
    ({"method": "autoattack", "options": {"queries": 0}}, "queries=0"),
    ({"method": "transfer", "options": {"base": "transfer"}}, "base='transfer'"),
    ({"method": "pgd", "options": {"recon_weight": 0.1}}, "options={'recon_weight': 0.1}"),
    ({"method": "vote", "norm": "2", "eps": 1.0}, "norm='2'"),
])
def test_invalid_arguments_raise_one_line_config_errors(classifiers, kwargs, argument):
    arguments = {"method": "pgd", "eps": 0.1, **kwargs}
    with pytest.raises(ConfigError) as error:
        make_attack(arguments.pop("method"), classifiers["cnn"], arguments.pop("eps"), **arguments)
    message = str(error.value)
    assert "\n" not in message and f"Received: {argument}" in message
    if argument.startswith("method"):
        assert "fgsm, bim, pgd, pgd100, vote, vote-da, rbim, autoattack, transfer" in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, 255.0])
def test_inputs_with_nan_inf_or_out_of_range_pixels_are_refused(clean, bad):
    images = clean["cnn"][0][:4].copy()
    images[1, 3, 3, 0] = bad
    with pytest.raises(ConfigError) as error:
        validate_inputs(images)
    assert "\n" not in str(error.value) and "Received:" in str(error.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_fgsm_is_exact_sign_steps_of_eps(classifiers, clean, family):
    """At eps = 0 nothing changes; at eps > 0 every pixel with a non-zero gradient moves by exactly eps in the
    gradient's sign, or stops at the clip bound it would cross."""
    classifier, (images, labels) = classifiers[family], clean[family]
    np.testing.assert_array_equal(make_attack("fgsm", classifier, 0.0).generate(images, labels), images)
    eps = 0.1
    adversarial = make_attack("fgsm", classifier, eps).generate(images, labels)
    sign = np.sign(classifier.loss_gradient(images, labels))
    expected = np.clip(images + eps * sign, 0.0, 1.0)
    np.testing.assert_allclose(adversarial, expected, atol=1e-6)
    moved = np.abs(adversarial - images)
    interior = (sign != 0) & (expected > 0) & (expected < 1)
    np.testing.assert_allclose(moved[interior], eps, atol=1e-6)
    assert np.mean(sign != 0) > 0.5  # the check covers most pixels, not only a few with a gradient
