"""The attack registry and the shared loop: eps-ball and [0, 1] bounds, attack-strength ordering, defaults, validation,
determinism, agreement with ART's BIM and PGD, the first successful iterate kept, the loss chain and restarts."""

import math

import numpy as np
import pytest

from art.attacks.evasion import ProjectedGradientDescent

from attacks import attack_defaults, create_attack, iterative, validate_inputs
from attacks.iterative import projected_gradient_ascent
from capsrobust.art_bridge import to_art_classifier, with_loss
from capsrobust.errors import ConfigError

FAMILIES = {"capsule": "capsnet-small", "cnn": "cnn-small"}
# Images attacked per family: capsnet-small's gradient costs ~0.2 s per 100 images on 2 CPU cores, so fewer there.
NUM_ATTACKED = {"capsule": 64, "cnn": 100}
TOLERANCE = 0.05  # accuracy an iterative attack may trail FGSM by (3 of 64 images)


@pytest.fixture(scope="module")
def classifiers(trained_small_models):
    """Both families, the zoo's converged models (once per session), as ART classifiers (default loss chain)."""
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
    return {(family, method): create_attack(method, classifier, 0.1, seed=0).generate(*clean[family])
            for family, classifier in classifiers.items() for method in BASIC}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_stays_in_the_linf_ball_and_in_the_unit_range(at_eps_0_1, clean, family):
    images = clean[family][0]
    for method in BASIC:
        adversarial = at_eps_0_1[family, method]
        assert adversarial.shape == images.shape and adversarial.dtype == np.float32
        assert _distances(adversarial, images, "inf").max() <= 0.1 + 1e-6, method
        assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0, method
        assert np.all(_distances(adversarial, images, "inf") > 0), method  # every image moved: no zero gradient


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
    adversarial = create_attack(method, classifiers["cnn"], 1.5, norm="2", seed=0).generate(images[:40], labels[:40])
    assert _distances(adversarial, images[:40], "2").max() <= 1.5 * (1 + 1e-5)
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0


@pytest.mark.parametrize("family, method", [("capsule", "fgsm"), ("cnn", "pgd")])
def test_accuracy_falls_as_eps_grows(classifiers, clean, family, method):
    images, labels = clean[family]
    small, large = (_accuracy(classifiers[family], create_attack(method, classifiers[family], eps, seed=0)
                              .generate(images, labels), labels) for eps in (0.05, 0.3))
    assert large < small, (small, large)


def test_targeted_bim_reaches_the_target_more_often_than_chance(classifiers, clean):
    images, labels = clean["cnn"]
    targets = (labels + 1) % 10
    adversarial = create_attack("bim", classifiers["cnn"], 0.2, targeted=True).generate(images, targets)
    hit_rate = np.mean(classifiers["cnn"].predict(adversarial).argmax(axis=1) == targets)
    assert hit_rate > 0.3, hit_rate  # chance is 0.1
    with pytest.raises(ConfigError, match="Received: y=None"):
        create_attack("bim", classifiers["cnn"], 0.2, targeted=True).generate(images)


def test_pgd_with_a_seed_is_deterministic_and_leaves_numpys_generator_alone(classifiers, clean):
    images, labels = clean["cnn"][0][:20], clean["cnn"][1][:20]
    classifier = classifiers["cnn"]
    np.random.seed(123)
    state = np.random.get_state()
    first, second = (create_attack("pgd", classifier, 0.3, steps=5, seed=7).generate(images, labels) for _ in range(2))
    other = create_attack("pgd", classifier, 0.3, steps=5, seed=8).generate(images, labels)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)  # the seed drives the random start
    assert np.array_equal(np.random.get_state()[1], state[1])


def test_defaults_follow_the_literature_and_art_defaults_never_leak(classifiers):
    # Kurakin et al.: step 1/255, ceil(min(255 eps + 4, 1.25 * 255 eps)) steps. eps = 0.1: 255 * 0.1 = 25.5,
    # min(25.5 + 4, 1.25 * 25.5) = min(29.5, 31.875) = 29.5, ceil -> 30.
    assert attack_defaults("bim", 0.1) == {"step_size": 1 / 255, "steps": 30, "random_start": False, "restarts": 1}
    # eps = 8/255: min(12, 10) = 10 exactly, although 8/255 * 255 is not exactly 8 in floating point.
    assert [attack_defaults("bim", k / 255)["steps"] for k in (2, 4, 8, 16)] == [3, 5, 10, 20]
    pgd = {"step_size": 0.01, "steps": 40, "random_start": True, "restarts": 1}
    assert attack_defaults("pgd", 0.3) == pgd and attack_defaults("pgd", 0.1) == pgd
    assert attack_defaults("fgsm", 0.2) == {"step_size": 0.2, "steps": 1, "random_start": False, "restarts": 1}
    assert attack_defaults("pgd", 2.0, norm="2") == {"step_size": 2.5 * 2.0 / 40, "steps": 40, "random_start": True,
                                                     "restarts": 1}

    bim = create_attack("bim", classifiers["cnn"], 0.1).params
    assert (bim.eps, bim.step_size, bim.steps, bim.random_start, bim.restarts) == (0.1, 1 / 255, 30, False, 1)
    record = create_attack("fgsm", classifiers["cnn"], 0.25, batch_size=32).record()
    assert record == {"method": "fgsm", "eps": 0.25, "norm": "inf", "step_size": 0.25, "steps": 1,
                      "random_start": False, "targeted": False, "batch_size": 32, "seed": None, "restarts": 1,
                      "loss": "ce+dlr", "art_class": "ObjectiveAttack"}
    # Madry et al. evaluate with 100 steps and restarts.
    assert attack_defaults("pgd100", 0.3) == {"step_size": 0.01, "steps": 100, "random_start": True, "restarts": 5}
    assert create_attack("pgd100", classifiers["cnn"], 0.3, restarts=2).params.restarts == 2
    assert attack_defaults("autoattack", 0.3) == {"step_size": 0.6, "steps": 100, "random_start": True,
                                                  "restarts": 1}
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
    ({"method": "rbim", "options": {"detector_penalty": -1.0}}, "detector_penalty=-1.0"),
    ({"method": "autoattack", "options": {"queries": 0}}, "queries=0"),
    ({"method": "transfer", "options": {"base": "transfer"}}, "base='transfer'"),
    ({"method": "pgd", "options": {"detector_penalty": 0.1}}, "options={'detector_penalty': 0.1}"),
    ({"method": "vote", "norm": "2", "eps": 1.0}, "norm='2'"),
    ({"restarts": 0}, "restarts=0"),
    ({"method": "bim", "restarts": 3}, "restarts=3"),
    ({"norm": "2", "eps": -1.0}, "eps=-1.0"),
    ({"norm": "2", "eps": math.nan}, "eps=nan"),
])
def test_invalid_arguments_raise_one_line_config_errors(classifiers, kwargs, argument):
    arguments = {"method": "pgd", "eps": 0.1, **kwargs}
    with pytest.raises(ConfigError) as error:
        create_attack(arguments.pop("method"), classifiers["cnn"], arguments.pop("eps"), **arguments)
    message = str(error.value)
    assert "\n" not in message and f"Received: {argument}" in message
    if argument.startswith("method"):
        assert "fgsm, bim, pgd, pgd100, vote, vote-da, rbim, autoattack, autoattack-fast, transfer" in message


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
    classifier, (images, labels) = with_loss(classifiers[family], "ce"), clean[family]
    np.testing.assert_array_equal(create_attack("fgsm", classifier, 0.0).generate(images, labels), images)
    eps = 0.1
    adversarial = create_attack("fgsm", classifier, eps).generate(images, labels)
    sign = np.sign(classifier.loss_gradient(images, labels))
    expected = np.clip(images + eps * sign, 0.0, 1.0)
    np.testing.assert_allclose(adversarial, expected, atol=1e-6)
    moved = np.abs(adversarial - images)
    interior = (sign != 0) & (expected > 0) & (expected < 1)
    np.testing.assert_allclose(moved[interior], eps, atol=1e-6)
    assert np.mean(sign != 0) > 0.5  # the check covers most pixels, not only a few with a gradient


@pytest.mark.parametrize("norm, eps, random_start", [("inf", 0.1, False), ("inf", 0.3, True)])
def test_the_loop_takes_arts_pgd_steps(classifiers, clean, norm, eps, random_start):
    """Run for every step (no early stop) from the same start, the loop is ART's BIM / PGD, step for step.

    (Under L2 ART clips to [0, 1] before projecting onto the ball; the loop projects first, as the reference
    AutoAttack and Madry et al.'s robustness library do, so the two differ there by design.)"""
    classifier = with_loss(classifiers["cnn"], "ce")
    images, labels = clean["cnn"][0][:16], clean["cnn"][1][:16]
    one_hot = np.eye(10, dtype=np.float32)[labels]
    step = 0.02 if norm == "inf" else 0.3
    art = ProjectedGradientDescent(classifier, norm=np.inf if norm == "inf" else 2, eps=eps, eps_step=step,
                                   max_iter=7, num_random_init=int(random_start), batch_size=16, verbose=False,
                                   summary_writer=False)
    np.random.seed(3)
    start = None
    if random_start:  # ART's own draw, repeated so that both loops start from the same point
        from art.utils import random_sphere
        start = np.clip(images + random_sphere(16, 784, eps, art.norm).reshape(images.shape), 0, 1).astype("float32")
        np.random.seed(3)
    expected = art.generate(images, one_hot)
    ours = projected_gradient_ascent(classifier.loss_gradient, images, one_hot, eps=eps, norm=norm, step_size=step,
                                     steps=7, start=start)
    np.testing.assert_allclose(ours, expected, atol=2e-6)
    assert np.abs(ours - images).max() > 0.5 * (eps if norm == "inf" else step)  # it moved


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_pass_per_step_takes_the_steps_of_a_gradient_and_a_prediction(classifiers, clean, family):
    """PGD through `scores_and_gradient` (one forward-backward pass per step that also says which images are fooled)
    against the same attack on the bridge's loss gradient and a separate prediction per step: the same images."""
    images, labels = clean[family][0][:32], clean[family][1][:32]
    attack = create_attack("pgd", classifiers[family], eps=0.1, steps=20, seed=5)
    one_pass = attack.generate(images, labels)
    attack._probe_for = None  # the per-step path: a gradient call, then a prediction
    per_step = attack.generate(images, labels)

    assert 0 < attack.last_run["survived"] < len(images), "eps chosen so that some images fall and some do not"
    same = np.isclose(one_pass, per_step, atol=1e-6)
    assert same.mean() >= 0.999, f"{1 - same.mean():.4%} of pixels differ"  # float rounding flips a rare sign


@pytest.mark.parametrize("method, steps", [("fgsm", None), ("bim", 6)])
def test_no_pass_is_spent_twice_and_a_second_attack_compiles_nothing(classifiers, clean, monkeypatch, method, steps):
    """The clean images are tested once: the loop starts from them knowing that none has succeeded, and its test of
    the last iterate is the verdict. FGSM: that test, a gradient, a test of the stepped images. BIM: a probe per step
    but the last, whose gradient nothing would use (a test alone). Calls, not images, are counted. A second attack on
    the same classifier (another cell of a sweep: another eps) builds no compiled function again."""
    built = []
    for name in ("with_loss", "scores_and_gradient"):
        def recorded(*args, itself=getattr(iterative, name), name=name):
            built.append(name)
            return itself(*args)
        monkeypatch.setattr(iterative, name, recorded)
    classifier = with_loss(classifiers["cnn"], "ce")
    images, labels = clean["cnn"]
    create_attack(method, classifier, eps=0.01, steps=steps, seed=0).generate(images, labels)
    compiled = len(built)
    attack = create_attack(method, classifier, eps=0.03, steps=steps, seed=0)
    calls = {"test": 0, "gradient": 0, "probe": 0}

    def counted(kind, function):
        def run(*args):
            calls[kind] += 1
            return function(*args)
        return run
    success, gradient_for, probe_for = attack._success, attack._gradient_for, attack._probe_for
    attack._success = counted("test", success)
    attack._gradient_for = lambda loss: counted("gradient", gradient_for(loss))
    attack._probe_for = lambda loss: counted("probe", probe_for(loss))
    attack.generate(images, labels)

    assert compiled >= 1 and len(built) == compiled, "a second attack built its compiled functions again"
    assert 0 < attack.last_run["survived"] < len(images), "eps chosen so that some images fall and some do not"
    if method == "fgsm":
        assert calls == {"test": 2, "gradient": 1, "probe": 0}
    else:
        assert calls == {"test": 2, "gradient": 0, "probe": steps}


def test_an_image_keeps_its_first_successful_iterate():
    """The objective pushes every pixel up for 3 steps and back down after; success is a mean above 0.6. The last
    iterate is benign, an earlier one adversarial: the loop must return that one."""
    calls = []

    def gradient(images, labels):
        calls.append(len(images))
        return np.ones_like(images) if len(calls) <= 3 else -np.ones_like(images)

    def success(images, labels):
        return images.reshape(len(images), -1).mean(axis=1) > 0.6

    x = np.full((2, 4, 4, 1), 0.5, dtype=np.float32)
    y = np.zeros((2, 10), dtype=np.float32)
    last = projected_gradient_ascent(gradient, x, y, eps=0.3, norm="inf", step_size=0.05, steps=8)
    assert not success(last, y).any()  # without early stopping the loop drifts back
    calls.clear()
    first = projected_gradient_ascent(gradient, x, y, eps=0.3, norm="inf", step_size=0.05, steps=8, done=success)
    assert success(first, y).all()
    np.testing.assert_allclose(first, 0.65, atol=1e-6)  # the 3rd step: 0.5 + 3 * 0.05


def test_restarts_run_only_on_the_images_still_robust(classifiers, clean):
    images, labels = clean["cnn"][0][:32], clean["cnn"][1][:32]
    attack = create_attack("pgd", classifiers["cnn"], 0.08, steps=10, restarts=3, seed=0)
    adversarial = attack.generate(images, labels)
    run = attack.last_run
    fooled = classifiers["cnn"].predict(adversarial).argmax(axis=1) != labels
    # Every image counted once, by the loss and restart that fooled it; the rest survived all of them.
    assert sum(run["restarts"]) == sum(m["fooled"] for m in run["members"].values()) == int(fooled.sum())
    assert run["survived"] == int((~fooled).sum())
    single = create_attack("pgd", classifiers["cnn"], 0.08, steps=10, seed=0).generate(images, labels)
    assert fooled.sum() >= (classifiers["cnn"].predict(single).argmax(axis=1) != labels).sum()
