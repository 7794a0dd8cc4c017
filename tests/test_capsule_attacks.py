"""The vote attack, R-BIM, APGD, AutoAttack and transfer: budgets, strength against BIM and ART's APGD, determinism,
the sweep's columns."""

import numpy as np
import pytest

from art.attacks.evasion import AutoProjectedGradientDescent

from attacks import create_attack
from attacks.apgd import checkpoints
from attacks.rbim import reconstruction_distance
from capsrobust.art_bridge import to_art_classifier, with_loss
from capsrobust.errors import ConfigError
from capsrobust.models import create_model
from capsrobust.ops import squash
from capsrobust.sweep import ModelUnderTest, SweepConfig, run_sweep

EPS = 0.1
NUM_ATTACKED = 32
TOLERANCE = 2 / NUM_ATTACKED  # accuracy a new attack may trail BIM by (2 images)
# AutoAttack's budget in these tests (its defaults, 100 APGD iterations and 5,000 Square queries, cost minutes here).
APGD_STEPS, QUERIES = 10, 20


@pytest.fixture(scope="module")
def capsule(trained_small_models, mnist_subset):
    """capsnet-small's classifier and `NUM_ATTACKED` test images it classifies correctly, with their labels."""
    classifier = to_art_classifier(trained_small_models["capsnet-small"])
    images, labels = mnist_subset.x_test[:80], mnist_subset.y_test[:80]
    correct = classifier.predict(images).argmax(axis=1) == labels
    assert correct.sum() >= NUM_ATTACKED, "capsnet-small is too inaccurate to test attacks on"
    return classifier, images[correct][:NUM_ATTACKED], labels[correct][:NUM_ATTACKED]


def _budget(method: str) -> dict:
    if method == "vote-da":  # only the ball and the box are checked on it: 10 of its 100 steps (15 s) show them
        return {"steps": 10}
    return {"steps": APGD_STEPS, "options": {"queries": QUERIES}} if method == "autoattack" else {}


@pytest.fixture(scope="module")
def adversarial(capsule):
    """Adversarial images at eps 0.1 from BIM and each new white-box attack, seed 0."""
    classifier, images, labels = capsule
    return {method: create_attack(method, classifier, EPS, seed=0, **_budget(method)).generate(images, labels)
            for method in ("bim", "vote", "vote-da", "rbim", "autoattack")}


def _accuracy(classifier, images, labels) -> float:
    return float(np.mean(classifier.predict(images).argmax(axis=1) == labels))


@pytest.mark.parametrize("method", ["vote", "vote-da", "rbim", "autoattack"])
def test_new_attacks_stay_in_the_eps_ball_and_the_unit_range(capsule, adversarial, method):
    images = capsule[1]
    result = adversarial[method]
    assert result.shape == images.shape and result.dtype == np.float32
    assert np.abs(result - images).max() <= EPS + 1e-6
    assert result.min() >= 0.0 and result.max() <= 1.0


@pytest.mark.parametrize("method", ["vote", "autoattack"])
def test_vote_attack_and_autoattack_are_at_least_as_strong_as_bim(capsule, adversarial, method):
    classifier, _, labels = capsule
    bim = _accuracy(classifier, adversarial["bim"], labels)
    assert bim < 1.0  # BIM does something at this budget, so the comparison means something
    assert _accuracy(classifier, adversarial[method], labels) <= bim + TOLERANCE


def test_rbim_with_weight_zero_is_as_strong_as_bim_and_its_penalty_lowers_the_reconstruction_error(capsule,
                                                                                                   adversarial):
    classifier, images, labels = capsule
    model = classifier.source_model
    plain = create_attack("rbim", classifier, EPS, options={"detector_penalty": 0.0}).generate(images, labels)
    assert _accuracy(classifier, plain, labels) <= _accuracy(classifier, adversarial["bim"], labels) + TOLERANCE
    distance = {name: float(np.mean(reconstruction_distance(model, result))) for name, result in
                (("bim", adversarial["bim"]), ("rbim", adversarial["rbim"]), ("plain", plain))}
    assert distance["rbim"] < distance["plain"] and distance["rbim"] < distance["bim"], distance


@pytest.mark.parametrize("method", ["vote", "rbim", "autoattack"])
def test_new_attacks_are_deterministic_for_a_seed(capsule, adversarial, method):
    classifier, images, labels = capsule
    np.random.seed(5)
    state = np.random.get_state()[1].copy()
    rows = slice(0, 8)
    first, again = (create_attack(method, classifier, EPS, seed=0, **_budget(method)).generate(images[rows],
                                                                                            labels[rows])
                    for _ in range(2))
    np.testing.assert_array_equal(again, first)
    assert np.array_equal(np.random.get_state()[1], state)  # numpy's global generator is left as it was


def test_the_vote_attacks_random_start_follows_the_seed(capsule):
    classifier, images, labels = capsule
    first, other = (create_attack("vote", classifier, EPS, steps=2, seed=seed).generate(images[:8], labels[:8])
                    for seed in (1, 2))
    assert not np.array_equal(first, other)


def test_autoattack_says_which_members_ran(capsule):
    classifier, images, labels = capsule
    attack = create_attack("autoattack", classifier, 0.05, seed=0, **_budget("autoattack"))
    result = attack.generate(images[:8], labels[:8])
    run = attack.record()["last_run"]
    assert list(run["members"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert run["members"]["apgd-ce"]["ran"]
    fooled = sum(member["fooled"] for member in run["members"].values())
    assert fooled + run["survived"] == 8
    assert fooled == np.sum(classifier.predict(result).argmax(axis=1) != labels[:8])
    # Survivors carry APGD's perturbation, not the clean image FAB-T and Square hand back when they give up: an
    # unperturbed survivor would read as a zero gradient in the trust checks.
    survived = classifier.predict(result).argmax(axis=1) == labels[:8]
    assert survived.any(), "pick an eps at which some images survive"
    assert np.all(np.abs(result[survived] - images[:8][survived]).max(axis=(1, 2, 3)) > 0)
    assert "square (20 queries, p_init 0.8, 1 restart)" in attack.record()["members"]


def _small_autoattack():
    """`(images, labels, ensemble)`: 4 random images an untrained cnn-small classifies as `labels`, and a factory of
    standard AutoAttack ensembles on it with tiny budgets, for the bookkeeping of stopped and continued runs."""
    classifier = to_art_classifier(create_model("cnn-small"))
    images = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    labels = classifier.predict(images).argmax(axis=1)  # every image "correct" at first

    def ensemble():
        return create_attack("autoattack", classifier, 0.002, seed=0, steps=2, options={"queries": 5})
    return images, labels, ensemble


def test_a_stopped_autoattack_continues_from_its_last_finished_member(tmp_path):
    """A standard AutoAttack cell takes hours on a CPU: stopped during a member and run again on the same inputs, the
    ensemble continues after the last finished member and returns what an uninterrupted run returns."""
    images, labels, ensemble = _small_autoattack()

    whole = ensemble()
    expected = whole.generate(images, labels)
    assert whole.last_run["members"]["fab-t"]["ran"], "pick an eps at which images survive two members"
    progress = tmp_path / "progress.npz"
    stopped = ensemble()
    name, budget, _ = stopped.members[2]

    def stop(*args):
        raise KeyboardInterrupt

    stopped.members[2] = (name, budget, stop)
    with pytest.raises(KeyboardInterrupt):
        stopped.generate(images, labels, progress_file=progress)

    again, ran = ensemble(), []
    for index, (name, budget, run) in enumerate(again.members):
        again.members[index] = (name, budget, lambda *a, run=run, name=name: ran.append(name) or run(*a))
    np.testing.assert_array_equal(again.generate(images, labels, progress_file=progress), expected)
    assert ran[0] == "fab-t" and set(ran) <= {"fab-t", "square"}  # the first two members were not run again
    assert again.last_run == whole.last_run and again.earlier_seconds > 0  # the cell's time counts both runs
    np.testing.assert_array_equal(again.fooled_by, whole.fooled_by)
    # Saved for other inputs, or edited, the state is not used: the run starts over.
    from attacks.autoattack import _load_progress

    key = again._progress_key(images, np.eye(10, dtype=np.float32)[labels])
    assert _load_progress(progress, key) is not None
    with np.load(progress) as saved:
        edited = {name: saved[name] for name in saved.files}
    edited["robust"] = ~edited["robust"]
    np.savez(progress, **edited)
    assert _load_progress(progress, key) is None
    other, ran = ensemble(), []
    other.members[0] = (other.members[0][0], other.members[0][1],
                        lambda *a, run=other.members[0][2]: ran.append("apgd-ce") or run(*a))
    other.generate(images[:3], labels[:3], progress_file=progress)
    assert ran == ["apgd-ce"]


@pytest.mark.parametrize("member", ["fab-t", "square"])
def test_a_member_stopped_part_way_continues_from_its_own_last_state(tmp_path, monkeypatch, member):
    """FAB-T and Square take most of a standard AutoAttack cell's hours: killed part-way through one (here right after
    it saved a state: after its first target, or after some queries), the cell continues inside that member."""
    import attacks.autoattack
    import attacks.square
    from attacks.autoattack import MemberProgress

    monkeypatch.setattr(attacks.square, "STATE_EVERY", 2)
    # The member's units of work, counted: FAB-T's targets, Square's forward passes.
    work = []
    fab, square = attacks.autoattack.fab_targeted, attacks.autoattack.square_linf
    monkeypatch.setattr(attacks.autoattack, "fab_targeted", lambda *a, **k: work.append("fab-t") or fab(*a, **k))
    monkeypatch.setattr(attacks.autoattack, "square_linf", lambda scores, *a, **k: square(
        lambda images: work.append("square") or scores(images), *a, **k))
    images, labels, ensemble = _small_autoattack()

    whole = ensemble()
    expected = whole.generate(images, labels)
    assert whole.last_run["members"][member]["ran"]
    whole_work, work[:] = work.count(member), []

    class Killed(Exception):
        pass

    class KilledAfterSaving(MemberProgress):
        def __init__(self, progress):
            super().__init__(progress.saved, progress.save)

        def save(self, state):
            super().save(state)
            raise Killed

    progress = tmp_path / "progress.npz"
    stopped = ensemble()
    index = [name for name, _, _ in stopped.members].index(member)
    name, budget, run = stopped.members[index]
    stopped.members[index] = (name, budget, lambda *a, run=run: run(*a[:3], KilledAfterSaving(a[3])))
    with pytest.raises(Killed):
        stopped.generate(images, labels, progress_file=progress)
    stopped_work, work[:] = work.count(member), []
    assert 0 < stopped_work < whole_work

    again = ensemble()
    np.testing.assert_array_equal(again.generate(images, labels, progress_file=progress), expected)
    assert work.count(member) == whole_work - stopped_work, "work done before the stop was done again"
    assert again.last_run == whole.last_run
    np.testing.assert_array_equal(again.fooled_by, whole.fooled_by)


def test_a_sweep_keeps_autoattacks_progress_in_its_directory_until_the_cell_is_recorded(tmp_path):
    model = create_model("cnn-small")  # untrained: what is tested is where the progress goes
    images = np.random.default_rng(1).random((3, 28, 28, 1), dtype=np.float32)
    labels = model.predict(images, verbose=0)["scores"].argmax(axis=1)
    mut = ModelUnderTest("cnn-small-mnist-20260101-000000-aaaaaa", "cnn-small", "cnn", model, {})
    config = SweepConfig(methods=("fgsm", "autoattack"), eps_values=(0.002,), steps=2, queries=5,
                         trust_checks=False)
    seen = []
    run_sweep([mut], config, images, labels, work_dir=tmp_path,
              on_cell=lambda so_far: seen.append(sorted(p.name for p in tmp_path.glob(".progress-*"))))
    assert seen == [[], [f".progress-{mut.id}-autoattack-eps0.002.npz"]]  # FGSM keeps none; saved until recorded
    assert not list(tmp_path.glob(".progress-*"))


def test_vote_scores_are_the_squashed_mean_vote_and_the_em_one_step_activation():
    images = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    capsnet = create_model("capsnet-small")
    votes = np.asarray(capsnet.votes(images))  # (3, children, 10, 16)
    mean_vote = np.asarray(squash(votes.mean(axis=1)))  # lengths are safe norms: sqrt(|v|^2 + 1e-7)
    expected = np.sqrt(np.sum(mean_vote ** 2, axis=-1) + 1e-7)
    np.testing.assert_allclose(np.asarray(capsnet.vote_scores(images)), expected, rtol=1e-4, atol=1e-6)
    # With one EM iteration the model's own routing is exactly "uniform assignments, one M-step": the vote scores
    # must then be the model's scores; with three iterations they differ.
    one = create_model("em-capsnet-small", em_iterations=1)
    np.testing.assert_allclose(np.asarray(one.vote_scores(images)), np.asarray(one(images)["scores"]), rtol=1e-5)
    three = create_model("em-capsnet-small", em_iterations=3)
    assert not np.allclose(np.asarray(three.vote_scores(images)), np.asarray(three(images)["scores"]))


def test_vote_attack_and_rbim_refuse_models_without_votes_or_a_decoder(trained_small_models):
    cnn = to_art_classifier(trained_small_models["cnn-small"])
    with pytest.raises(ConfigError, match="vote does not apply.*no capsule votes"):
        create_attack("vote", cnn, EPS)
    with pytest.raises(ConfigError, match="rbim does not apply.*no reconstruction decoder"):
        create_attack("rbim", cnn, EPS)


def test_transfer_crafts_on_the_source(capsule, trained_small_models):
    _, images, labels = capsule
    source = to_art_classifier(trained_small_models["cnn-small"])
    transfer = create_attack("transfer", source, EPS, steps=5, seed=3, options={"source": "cnn-small"})
    expected = create_attack("pgd", source, EPS, steps=5, seed=3).generate(images[:8], labels[:8])
    np.testing.assert_array_equal(transfer.generate(images[:8], labels[:8]), expected)
    assert transfer.record()["source"] == "cnn-small" and transfer.record()["base"] == "pgd"


def test_sweep_reports_transfer_beside_white_box_and_the_per_image_worst_case(trained_small_models, mnist_subset):
    capsnet = ModelUnderTest("capsnet-small-mnist-20260101-000000-abcdef", "capsnet-small", "capsule",
                             trained_small_models["capsnet-small"], {})
    cnn = ModelUnderTest("cnn-small-mnist-20260101-000000-123456", "cnn-small", "cnn",
                         trained_small_models["cnn-small"], {})
    config = SweepConfig(methods=("fgsm", "vote", "transfer"), eps_values=(0.1, 0.2), steps=5, examples=2,
                         skip_inapplicable=True)
    images, labels = mnist_subset.x_test[:40], mnist_subset.y_test[:40]
    result = run_sweep([capsnet, cnn], config, images, labels, sources=[capsnet, cnn])
    attacks = {(c.model, c.attack) for c in result.cells}
    assert attacks == {("capsnet-small", "fgsm"), ("capsnet-small", "vote"), ("capsnet-small", "pgd"),
                       ("capsnet-small", "transfer(cnn-small)"), ("cnn-small", "fgsm"), ("cnn-small", "pgd"),
                       ("cnn-small", "transfer(capsnet-small)")}  # pgd: transfer's base, run white-box beside it
    assert result.skipped == [{"model_id": cnn.id, "attack": "vote", "reason": result.skipped[0]["reason"]}]
    for cell in (c for c in result.cells if c.transfer_source):
        assert cell.whitebox_accuracy == result.cell(cell.model_id, "pgd", cell.eps).adversarial_accuracy
        assert cell.linf_max <= cell.eps + 1e-6
    # The source's accuracy on the images crafted on it, recomputed: the same PGD on the source, judged by it.
    crafted = result.cell(capsnet.id, "transfer(cnn-small)", 0.2)
    correct = capsnet.model.predict(images, verbose=0)["scores"].argmax(-1) == labels
    adversarial = create_attack("pgd", to_art_classifier(cnn.model), 0.2, steps=5, seed=0).generate(
        images[correct], labels[correct])
    judged = cnn.model.predict(adversarial, verbose=0)["scores"].argmax(-1) == labels[correct]
    assert crafted.source_accuracy == pytest.approx(judged.sum() / len(images))
    assert {"white-box >= transfer"} <= {c["check"] for c in result.checks}
    assert len(result.worst_case) == 4
    for row in result.worst_case:
        own = [c.adversarial_accuracy for c in result.cells if c.model_id == row["model_id"] and c.eps == row["eps"]]
        assert row["worst_case_accuracy"] <= min(own) + 1e-9 and row["strongest_accuracy"] == min(own)
        assert len(row["survived"]) == 40 and row["survived"].count("1") / 40 == row["worst_case_accuracy"]
    # The capsule-vs-CNN verdict per eps compares the worst-case figures above, on the same 40 images.
    assert [(v["eps"], v["first"], v["second"], v["images"]) for v in result.verdicts] == [
        (0.1, capsnet.id, cnn.id, 40), (0.2, capsnet.id, cnn.id, 40)]
    for verdict in result.verdicts:
        rows = {r["model_id"]: r for r in result.worst_case if r["eps"] == verdict["eps"]}
        assert verdict["first_accuracy"] == rows[capsnet.id]["worst_case_accuracy"]
        assert verdict["second_accuracy"] == rows[cnn.id]["worst_case_accuracy"]
        gap = (verdict["only_first_robust"] - verdict["only_second_robust"]) / 40
        assert gap == pytest.approx(verdict["first_accuracy"] - verdict["second_accuracy"])
    with pytest.raises(ConfigError, match="vote does not apply: cnn-small has no capsule votes"):
        run_sweep([cnn], SweepConfig(methods=("vote",), eps_values=(0.1,)), images, labels)


def test_apgd_checkpoints_follow_the_paper():
    """Croce & Hein (2020): w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
    which for N = 100 the reference code's integer recurrence reproduces; for N = 10 that recurrence (intervals of
    2, then 1) checks after every step from the 2nd."""
    fractions = [0.0, 0.22]
    while fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06) <= 1:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    assert checkpoints(100) == [round(100 * p) for p in fractions[1:]] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == list(range(2, 11))


def test_our_apgd_ce_is_at_least_as_strong_as_arts(capsule):
    """ART's APGD returns each image's last iterate; ours keeps the first that fooled the model, so on the same
    budget our APGD-CE fools at least as many images (give or take 2, for the random starts)."""
    classifier, images, labels = capsule
    eps, steps = 0.05, 20
    np.random.seed(0)
    art = AutoProjectedGradientDescent(with_loss(classifier, "ce"), norm=np.inf, eps=eps, eps_step=2 * eps,
                                       max_iter=steps, targeted=False, nb_random_init=1, batch_size=128,
                                       loss_type=None, verbose=False)
    theirs = _accuracy(classifier, art.generate(images, np.eye(10, dtype=np.float32)[labels]), labels)
    assert theirs < 1.0  # ART's APGD does something at this budget, so the comparison means something
    attack = create_attack("autoattack-fast", classifier, eps, steps=steps, seed=0)
    attack.members = attack.members[:1]  # APGD-CE alone: APGD-T's 9 targets would run for nothing compared here
    attack.generate(images, labels)
    ours = 1 - attack.last_run["members"]["apgd-ce"]["fooled"] / len(images)
    assert ours <= theirs + TOLERANCE


def test_autoattack_needs_four_classes():
    three = to_art_classifier(create_model("cnn-small", num_classes=3))
    with pytest.raises(ConfigError, match="at least 4 classes.*Received: 3 classes"):
        create_attack("autoattack", three, 0.1)
