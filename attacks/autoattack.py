"""AutoAttack (Croce & Hein, ICML 2020), the standard version whose numbers the AutoAttack and RobustBench tables
report, and a cheaper gradient-only version for CPU runs.

`autoattack` runs, each member only on the images every earlier one left:

- `apgd-ce`: APGD (`attacks.apgd`) on cross-entropy of the scores (capsule lengths treated as logits), 100 iterations.
- `apgd-t`: APGD on the targeted DLR loss `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)`, 100 iterations for each of
  9 targets, the 2nd to the 10th most likely class of the clean image, in that order.
- `fab-t`: targeted FAB (`attacks.fab`, Croce & Hein 2020), 100 iterations, 1 restart, the same 9 targets.
  (`steps` sets the iterations of APGD and FAB alike.)
- `square`: Square Attack (Andriushchenko et al. 2020, `attacks.square`), score-based and gradient-free, 5,000
  queries, `p_init` 0.8, 1 restart, the reference's window schedule. It catches gradient masking the others would
  miss. Under L2 it is ART's `SquareAttack` (three forward passes per query, the schedule rescaled to the budget).

`autoattack-fast` is `apgd-ce` then `apgd-t` (where the reference's first two members do almost all the work);
reports name it as such. A member's success is misclassification, targeted or not, as in the reference, and every
result is checked on the real model and against the eps-ball before it counts.
"""

import hashlib
import json
import os
import time
from typing import Callable

import numpy as np
from art.attacks.evasion import SquareAttack
from art.attacks.evasion.auto_attack import run_attack
from keras import ops

from attacks.apgd import apgd
from attacks.base import Attack, AttackParams, params_record, validate_inputs
from attacks.fab import fab_targeted
from attacks.iterative import misclassified_by
from attacks.square import square_linf
from capsrobust.art_bridge import scores_and_gradient
from capsrobust.errors import ConfigError
from capsrobust.io import atomic_path
from capsrobust.losses import softmax_cross_entropy, targeted_difference_of_logits_ratio
from capsrobust.models.base import SCORES

TARGETS = 9  # the reference's n_target_classes
FAB_RESTARTS = 1
SQUARE_P_INIT = 0.8  # Andriushchenko et al. (2020) and the reference AutoAttack, for L-inf and L2


class MemberProgress:
    """Where a member keeps its state part-way through its run (after each target, every few hundred queries), so
    that a stopped cell continues inside the member it was in, not at its start.

    Attributes:
        saved: the state the member last passed to `save` in a stopped run on the same inputs, or None: start afresh.
    """

    def __init__(self, saved: dict | None = None, save: Callable[[dict], None] | None = None):
        self.saved = saved
        self._save = save

    def save(self, state: dict) -> None:
        """Keeps `state` (numpy arrays and JSON values) until the member ends; without a progress file, nothing."""
        if self._save is not None:
            self._save(state)


# A member: (name, budget, run) where run(images, one_hot_labels, rng, progress) -> adversarial images.
Member = tuple[str, str, Callable[[np.ndarray, np.ndarray, np.random.Generator, MemberProgress], np.ndarray]]


class AutoAttackEnsemble(Attack):
    """AutoAttack's ensemble: each member runs on the images all earlier members failed on.

    Attributes:
        params: the `AttackParams` (APGD iterations in `steps`, Square's queries in `options`).
        members: `(name, budget, run)` in the order they run.
        last_run: after `generate`, per member whether it ran and how many images it fooled, and how many survived.
    """

    loss_description = "members"
    resumable = True  # a standard AutoAttack cell can take hours on a CPU: its progress is kept (`generate`)

    def __init__(self, classifier, params: AttackParams, members: list[Member]):
        super().__init__(classifier, params)
        self.members = members
        self._fooled = misclassified_by(classifier, targeted=False)

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, progress_file: str | os.PathLike | None = None,
                 **kwargs) -> np.ndarray:
        """Adversarial images `(num_images, h, w, c)`; `y` true labels (integers or one-hot; None: predictions).

        With `progress_file`, the state after each member, and within a member at its own steps (`MemberProgress`),
        is saved there, and a run on the same images, labels, parameters and members that finds it continues from
        the last state saved. Each member draws from its own generator (`rng(index)`), so a continued run gives what
        an uninterrupted one does.
        """
        started = time.perf_counter()
        images = validate_inputs(x)
        one_hot = self.one_hot_labels(images, y)
        key = self._progress_key(images, one_hot)
        saved = None if progress_file is None else _load_progress(progress_file, key)
        if saved is None:
            first, adversarial, robust, partial = 0, images.copy(), ~self._fooled(images, one_hot), None
            self.fooled_by, members, self.earlier_seconds = np.full(len(images), -1, dtype=np.int8), {}, 0.0
        else:
            first, adversarial, robust, self.fooled_by, members, self.earlier_seconds, partial = saved

        def save(next_member: int, partial: dict | None = None) -> None:
            _save_progress(progress_file, key, next_member, adversarial, robust, self.fooled_by, members,
                           self.earlier_seconds + time.perf_counter() - started, partial)

        for index, (name, _, run) in enumerate(self.members[first:], start=first):
            rows = np.flatnonzero(robust)
            if len(rows):
                progress = MemberProgress(partial if index == first else None,
                                          None if progress_file is None else lambda state, i=index: save(i, state))
                candidate = run(images[rows], one_hot[rows], self.rng(index), progress)
                # Counted only if it fools the real model inside the eps-ball and [0, 1] (the reference's check).
                inside = _within(candidate, images[rows], self.params)
                won = self._fooled(candidate, one_hot[rows]) & inside
                # Survivors keep the latest member's try that moved them, so perturbation sizes describe what the
                # attack did: a member that gives up returns the clean image (FAB-T, Square), and a survivor left
                # unperturbed by every member is then a zero gradient, which a trust check looks for.
                moved = np.any((candidate != images[rows]).reshape(len(rows), -1), axis=1)
                adversarial[rows[inside & moved]] = candidate[inside & moved]
                robust[rows[won]] = False
                self.fooled_by[rows[won]] = index
            members[name] = {"ran": bool(len(rows)), "fooled": int(len(rows) - robust[rows].sum()) if len(rows)
                             else 0}
            if progress_file is not None:
                save(index + 1)
        self.last_run = {"members": members, "survived": int(robust.sum())}
        return adversarial

    def _progress_key(self, images: np.ndarray, one_hot: np.ndarray) -> str:
        """What a saved state must have been computed from: the inputs, the parameters and the members."""
        setup = json.dumps([_digest({"images": images, "labels": one_hot}), params_record(self.params),
                            [(name, budget) for name, budget, _ in self.members]], sort_keys=True, default=str)
        return hashlib.sha256(setup.encode()).hexdigest()

    def record(self) -> dict:
        return {**super().record(), "members": [f"{name} ({budget})" for name, budget, _ in self.members]}


def _within(candidate: np.ndarray, images: np.ndarray, params: AttackParams, slack: float = 1e-5) -> np.ndarray:
    delta = (candidate - images).reshape(len(images), -1)
    size = np.abs(delta).max(axis=1, initial=0) if params.norm == "inf" else np.sqrt((delta ** 2).sum(axis=1))
    return (size <= params.eps + slack) & (candidate.reshape(len(images), -1).min(axis=1, initial=0) >= 0) \
        & (candidate.reshape(len(images), -1).max(axis=1, initial=0) <= 1)


PARTIAL = "partial:"  # prefix of the arrays of the state part-way through member `next_member`


def _save_progress(path, key: str, next_member: int, adversarial: np.ndarray, robust: np.ndarray,
                   fooled_by: np.ndarray, members: dict, seconds: float, partial: dict | None = None) -> None:
    """The ensemble's state before member `next_member`, and `partial`, that member's own state part-way through
    it, written atomically as plain arrays and JSON (nothing that runs code)."""
    arrays = {"adversarial": adversarial, "robust": robust, "fooled_by": fooled_by}
    partial = partial or {}
    arrays.update({PARTIAL + name: value for name, value in partial.items() if isinstance(value, np.ndarray)})
    values = {name: value for name, value in partial.items() if not isinstance(value, np.ndarray)}
    state = json.dumps({"key": key, "next_member": next_member, "members": members, "seconds": seconds,
                        "partial": values if partial else None, "arrays": _digest(arrays)})
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as file:
        np.savez(file, **arrays, state=np.array(state))


def _load_progress(path, key: str):
    """`(next_member, adversarial, robust, fooled_by, members, seconds, partial)` saved for `key` in `path`, or None:
    no file, another run's, or one that cannot be read or was edited (the run then starts over and replaces it)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            state = json.loads(str(saved["state"]))
            arrays = {name: saved[name] for name in saved.files if name != "state"}
        if state["key"] != key or state["arrays"] != _digest(arrays):
            return None
        partial = None if state.get("partial") is None else {
            **state["partial"], **{name[len(PARTIAL):]: value for name, value in arrays.items()
                                   if name.startswith(PARTIAL)}}
        return (int(state["next_member"]), arrays["adversarial"], arrays["robust"], arrays["fooled_by"],
                state["members"], float(state["seconds"]), partial)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """A sha256 of named arrays: their names, shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for name, array in sorted(arrays.items()):
        digest.update(f"{name}{array.shape}{array.dtype.str}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _targets_done(images: np.ndarray, progress: MemberProgress) -> tuple[int, np.ndarray, np.ndarray]:
    """Where a targeted member (APGD-T, FAB-T) starts: `(rank of the next target, adversarial images so far, which
    images are left)`, from its saved state or afresh (the runner-up class, the clean images, all of them)."""
    if progress.saved is None:
        return 2, images.copy(), np.ones(len(images), dtype=bool)
    saved = progress.saved
    return int(saved["next_rank"]), np.array(saved["adversarial"]), np.array(saved["left"])


def _targets(classifier, images: np.ndarray, rank: int) -> np.ndarray:
    """The `rank`-th most likely class of each clean image (rank 2: the runner-up), `(n,)`."""
    return np.argsort(classifier.predict(images), axis=1)[:, -rank]


def _apgd_ce(classifier, params: AttackParams) -> Member:
    model = classifier.source_model
    both = classifier.compiled(("apgd-ce", params.batch_size), lambda: scores_and_gradient(
        model, softmax_cross_entropy, model.num_classes, params.batch_size))

    def probe(images, labels):
        scores, gradient = both(images, labels)
        return softmax_cross_entropy(labels, scores), scores.argmax(axis=1) != labels.argmax(axis=1), gradient

    def run(images, labels, rng, progress):  # one APGD run, a few minutes: kept whole
        return apgd(probe, images, labels, eps=params.eps, norm=params.norm, steps=params.steps, rng=rng,
                    batch_size=params.batch_size)
    return "apgd-ce", f"{params.steps} iterations, 1 restart", run


def _apgd_t(classifier, params: AttackParams) -> Member:
    model = classifier.source_model
    num_classes = model.num_classes

    def targeted_dlr(both, scores):  # the labels are [true one-hot, target one-hot] side by side
        return targeted_difference_of_logits_ratio(both[:, :num_classes], both[:, num_classes:], scores)
    scores_and_dlr_gradient = classifier.compiled(("apgd-t", params.batch_size), lambda: scores_and_gradient(
        model, targeted_dlr, 2 * num_classes, params.batch_size))
    fooled = misclassified_by(classifier, targeted=False)

    def probe(images, both):
        scores, gradient = scores_and_dlr_gradient(images, both)
        return targeted_dlr(both, scores), scores.argmax(axis=1) != both[:, :num_classes].argmax(axis=1), gradient

    def run(images, labels, rng, progress):
        seeds = rng.integers(2 ** 32, size=TARGETS)  # one generator per target: draws do not depend on what is left
        first, adversarial, left = _targets_done(images, progress)
        for rank in range(first, TARGETS + 2):
            rows = np.flatnonzero(left)
            if not len(rows):
                break
            target = np.eye(num_classes, dtype=np.float32)[_targets(classifier, images[rows], rank)]
            both = np.concatenate([labels[rows], target], axis=1)
            found = apgd(probe, images[rows], both, eps=params.eps, norm=params.norm, steps=params.steps,
                         rng=np.random.default_rng(seeds[rank - 2]), batch_size=params.batch_size)
            won = fooled(found, labels[rows])
            adversarial[rows] = found
            left[rows[won]] = False
            progress.save({"next_rank": rank + 1, "adversarial": adversarial, "left": left})
        return adversarial
    return "apgd-t", f"{params.steps} iterations for each of {TARGETS} targets", run


def _fab_t(classifier, params: AttackParams) -> Member:
    model = classifier.source_model
    num_classes = model.num_classes
    eye = np.eye(num_classes, dtype=np.float32)

    def score_gap(both, scores):  # f_t - f_y, the function whose zero set FAB linearises; labels [true | target]
        return ops.sum(scores * (both[:, num_classes:] - both[:, :num_classes]), axis=-1)
    scores_and_gap_gradient = classifier.compiled(("fab-t", params.batch_size), lambda: scores_and_gradient(
        model, score_gap, 2 * num_classes, params.batch_size))

    def boundary_gradient(images, y, target):
        return scores_and_gap_gradient(images, np.concatenate([eye[y], eye[target]], axis=1))[1]

    def run(images, labels, rng, progress):
        y = labels.argmax(axis=1)
        seeds = rng.integers(2 ** 32, size=TARGETS)
        first, adversarial, left = _targets_done(images, progress)
        for rank in range(first, TARGETS + 2):
            rows = np.flatnonzero(left)
            if not len(rows):
                break
            found = fab_targeted(classifier.predict, boundary_gradient, images[rows], y[rows],
                                 _targets(classifier, images[rows], rank), eps=params.eps, norm=params.norm,
                                 steps=params.steps, restarts=FAB_RESTARTS,
                                 rng=np.random.default_rng(seeds[rank - 2]))
            won = classifier.predict(found).argmax(axis=1) != y[rows]
            adversarial[rows[won]] = found[won]
            left[rows[won]] = False
            progress.save({"next_rank": rank + 1, "adversarial": adversarial, "left": left})
        return adversarial
    return "fab-t", f"{params.steps} iterations, {FAB_RESTARTS} restart, {TARGETS} targets", run


def _square(classifier, params: AttackParams) -> Member:
    queries = int(params.options["queries"])
    budget = f"{queries} queries, p_init {SQUARE_P_INIT}, 1 restart"
    if params.norm == "inf":
        def run(images, labels, rng, progress):
            found, _ = square_linf(classifier.predict, images, labels.argmax(axis=1), eps=params.eps,
                                   queries=queries, p_init=SQUARE_P_INIT, rng=rng, state=progress.saved,
                                   on_state=progress.save)
            return found
        return "square", budget, run

    # L2: ART's Square, whose window schedule is rescaled to the budget (`attacks.square` says how that differs).
    attack = SquareAttack(classifier, norm=2, eps=params.eps, max_iter=queries, p_init=SQUARE_P_INIT,
                          nb_restarts=1, batch_size=params.batch_size, verbose=False)

    def run_art(images, labels, rng, progress):
        # ART's Square draws its squares from numpy's global generator: seeded from `rng`, restored afterwards.
        state = np.random.get_state()
        np.random.seed(int(rng.integers(2 ** 31)))
        try:
            robust = np.ones(len(images), dtype=bool)
            adversarial, _ = run_attack(images.copy(), labels, robust, attack, classifier, norm=2, eps=params.eps)
            return adversarial
        finally:
            np.random.set_state(state)
    return "square", f"{budget}, ART's", run_art


def build_autoattack(classifier, params: AttackParams, fast: bool = False) -> AutoAttackEnsemble:
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square), or with `fast` its first two members.

    Args:
        classifier: an ART bridge classifier (`capsrobust.art_bridge.to_art_classifier`).
        params: `steps` APGD iterations, `options["queries"]` Square's queries (standard only); L-inf or L2.
        fast: APGD-CE and APGD-T only (`autoattack-fast`).

    Raises:
        ConfigError: a targeted configuration, or a model with fewer than 4 classes (targeted DLR needs them).
    """
    if params.targeted:
        raise ConfigError("autoattack runs untargeted (its members aim at any wrong class). Received: targeted=True")
    num_classes = classifier.nb_classes
    if num_classes < 4:
        raise ConfigError(f"{params.method} needs a model with at least 4 classes (APGD-T's targeted DLR loss reads "
                          f"the 4 largest scores). Received: {num_classes} classes")
    members = [_apgd_ce(classifier, params), _apgd_t(classifier, params)]
    if not fast:
        members += [_fab_t(classifier, params), _square(classifier, params)]
    return AutoAttackEnsemble(classifier, params, members)
