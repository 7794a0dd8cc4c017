"""A sweep's AutoAttack figures checked against an independent implementation: torchattacks (Kim 2020, a port of
Croce & Hein's reference code) run on the same stored model, the same images and the same eps.

The two implementations share nothing but the weights: torchattacks attacks the model under Keras's torch backend in
a subprocess, and its adversarial images come back to be verified here (inside the eps-ball and [0, 1]) and
classified by this process's own model. Per image, the sweep's outcome and torchattacks' are then paired: images only
torchattacks fooled are what this package's attack missed, and McNemar's exact test says whether the two differ by
more than chance.

torchattacks' own `AutoAttack` runs 10 iterations per member, not the standard 100; the members are therefore built
here with the sweep's budgets (by default the reference's: APGD-CE and APGD-T with 100 iterations, APGD-T and FAB-T
on the 9 most likely wrong classes, Square with 5,000 queries), each on the images the earlier ones left.
"""

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from capsrobust.backend import backend_environment, is_installed
from capsrobust.data import load_dataset
from capsrobust.errors import ConfigError
from capsrobust.models.base import SCORES
from capsrobust.models.predict import predict_batched
from capsrobust.stats import mcnemar_exact, outcome_bits, wilson_interval
from capsrobust.store import model_name_of

ATTACKS = ("autoattack", "autoattack-fast")  # the sweep attacks a cross-check can pair with
MEMBERS = {"autoattack": ("apgd-ce", "apgd-t", "fab-t", "square"), "autoattack-fast": ("apgd-ce", "apgd-t")}
TARGET_CLASSES = 9  # the reference's n_target_classes (fewer with fewer classes)
EPS_SLACK = 1e-5  # float32 rounding of x + delta, clipped: torchattacks' images may exceed eps by this much


@dataclass
class CrossCheck:
    """One model at one eps: the sweep's attack and torchattacks' on the same attacked images.

    Attributes:
        images: images attacked (classified correctly clean), the first of the sweep's.
        ours_robust, theirs_robust: how many each left correctly classified.
        only_ours_fooled, only_theirs_fooled: images fooled by one implementation alone.
        invalid: torchattacks images outside the eps-ball or [0, 1] (counted as not fooled).
        theirs_fooled_by: per member, how many images it fooled first.
        p_value: McNemar's exact test on the two discordant counts.
        seconds: torchattacks' wall time.
        theirs_survived: per attacked image, in the sweep's order, "1" where torchattacks left it correct: with the
            sweep's own outcomes, the worst case over both implementations.
    """

    model_id: str
    attack: str
    eps: float
    images: int
    ours_robust: int
    theirs_robust: int
    only_ours_fooled: int
    only_theirs_fooled: int
    invalid: int
    theirs_fooled_by: dict
    p_value: float
    seconds: float
    theirs_survived: str

    @classmethod
    def pair(cls, model_id: str, attack: str, eps: float, ours_robust: np.ndarray, theirs_robust: np.ndarray,
             invalid: int, theirs_fooled_by: dict, seconds: float) -> "CrossCheck":
        """From per-image outcomes over the same attacked images, `(m,)` bool each (True: still correct)."""
        only_ours = int(np.sum(~ours_robust & theirs_robust))
        only_theirs = int(np.sum(ours_robust & ~theirs_robust))
        return cls(model_id, attack, eps, len(ours_robust), int(ours_robust.sum()), int(theirs_robust.sum()),
                   only_ours, only_theirs, invalid, theirs_fooled_by, mcnemar_exact(only_ours, only_theirs), seconds,
                   outcome_bits(theirs_robust))

    def to_dict(self) -> dict:
        return {**asdict(self), "ours_robust_ci": wilson_interval(self.ours_robust, self.images),
                "theirs_robust_ci": wilson_interval(self.theirs_robust, self.images)}

    @property
    def verdict(self) -> str:
        if self.only_theirs_fooled == 0:
            return "torchattacks found nothing the sweep missed"
        weaker = "weaker than" if self.p_value < 0.05 else "within chance of"
        return (f"the sweep's {self.attack} is {weaker} torchattacks' (it missed {self.only_theirs_fooled} of "
                f"{self.images} images, p = {self.p_value:.3g})")


def check_adversarial(clean: np.ndarray, adversarial: np.ndarray, eps: float, norm: str = "inf") -> np.ndarray:
    """`(m,)` bool: each adversarial image `(m, h, w, c)` lies in [0, 1] and within `eps` (L-inf or L2, `norm` "inf"
    or "2") of its clean one."""
    delta = (adversarial - clean).reshape(len(clean), -1)
    size = np.abs(delta).max(axis=1) if norm == "inf" else np.sqrt(np.sum(delta.astype("float64") ** 2, axis=1))
    flat = adversarial.reshape(len(clean), -1)
    return (size <= eps + EPS_SLACK) & (flat.min(axis=1) >= 0.0) & (flat.max(axis=1) <= 1.0)


def run_torchattacks(store_root: str | None, entry_id: str, images: np.ndarray, labels: np.ndarray,
                     eps_values: list[float], attack: str, norm: str, steps: int, queries: int, seed: int = 0,
                     timeout: float | None = None) -> dict:
    """torchattacks' `attack` on the stored model, in a torch-backend subprocess, for each eps.

    Args:
        store_root: the store the subprocess resolves `entry_id` in (its zoo too); None: the default store.
        images: `(m, h, w, c)` float32 in [0, 1]; labels `(m,)` integers.
        eps_values: the budgets, one run of the whole attack each; attack: a key of `MEMBERS`.
        norm: "inf" or "2"; steps: iterations of APGD and FAB; queries: Square's (as the sweep ran them).
        seed: torchattacks' members' seed; timeout: seconds before the subprocess is stopped (None: never).

    Returns:
        Per eps: `{"adversarial": (m, h, w, c), "fooled_by": (m,) member index or -1, "seconds": float}`.

    Raises:
        ConfigError: torch or torchattacks is not installed, or the subprocess failed (its last line).
    """
    for package in ("torch", "torchattacks"):
        if not is_installed(package):
            raise ConfigError(f"the cross-check needs {package}: pip install torch torchattacks")
    with tempfile.TemporaryDirectory(prefix="capsrobust-crosscheck-") as work:
        work = Path(work)
        np.savez(work / "inputs.npz", images=images.astype("float32"), labels=labels.astype("int64"))
        spec = {"store": store_root, "entry": entry_id, "eps": list(eps_values), "attack": attack, "norm": norm,
                "steps": steps, "queries": queries, "seed": seed, "work": str(work)}
        (work / "spec.json").write_text(json.dumps(spec))
        done = subprocess.run([sys.executable, "-m", "capsrobust.crosscheck", str(work / "spec.json")],
                              capture_output=True, text=True, timeout=timeout,
                              env=backend_environment("torch", TF_CPP_MIN_LOG_LEVEL="3"))
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"torchattacks failed on {entry_id}: {last}")
        found = {}
        for eps in eps_values:
            with np.load(work / f"eps-{eps!r}.npz", allow_pickle=False) as saved:
                found[eps] = {"adversarial": saved["adversarial"], "fooled_by": saved["fooled_by"],
                              "seconds": float(saved["seconds"])}
        return found


def selected_cells(cells: list, models: list[str] | None, eps_values: tuple[float, ...] | None) -> list:
    """The sweep's own AutoAttack cells (not transfer ones) for `models` and `eps_values` (None: all).

    A model is named by its entry id or the name `--model` knows it by: `capsnet-small-at` picks the adversarially
    trained entry and `capsnet-small` the undefended one, never both (the cells' `model` is the registry name alone).
    """
    return [c for c in cells if c.attack in ATTACKS and c.transfer_source is None
            and (not models or c.model_id in models or model_name_of(c.model_id) in models)
            and (not eps_values or c.eps in eps_values)]


def crosscheck_sweep(record, store, data_dir: str | None = None, models: list[str] | None = None,
                     eps_values: tuple[float, ...] | None = None, limit: int | None = None, seed: int = 0,
                     say: Callable[[str], None] = print) -> list[CrossCheck]:
    """Each AutoAttack cell of a finished sweep, checked against torchattacks on the same attacked images.

    Args:
        record: the sweep (`capsrobust.sweep.records.read_record`); store: the `ModelStore` its models are in.
        data_dir: where the sweep's data set is (unused for a sweep on the bundled sample).
        models: model names or entry ids to check (None: all); eps_values: the eps to check (None: all).
        limit: the first `limit` attacked images of each model (None: all); seed: torchattacks' seed.
        say: prints progress lines.

    Raises:
        ConfigError: no such cells, other data than the sweep's, or a model that no longer classifies the sweep's
            images as it did (changed weights).
    """
    cells = selected_cells(record.result.cells, models, eps_values)
    if not cells:
        raise ConfigError(f"{record.directory} has no {' or '.join(ATTACKS)} cell"
                          + (" for the models and eps given" if models or eps_values else ""))
    data = record.content["data"]
    subset = data["source"] == "subset"
    dataset = load_dataset(data["name"], data_dir=None if subset else data_dir, subset=subset)
    if len(dataset.x_test) != data["test"]:
        raise ConfigError(f"the data loaded ({len(dataset.x_test)} {dataset.name} test images) is not the sweep's "
                          f"({data['test']}, from {data['source']}); give its --data-dir")
    rows = slice(data["first_index"], data["first_index"] + data["evaluated"])
    images, labels = dataset.x_test[rows], dataset.y_test[rows]
    checks = []
    for model_id in dict.fromkeys(c.model_id for c in cells):
        entry = store.resolve(model_id)
        model = store.load(entry)
        correct = record.result.clean[model_id].correct
        if not np.array_equal(predict_batched(model, images)[SCORES].argmax(-1) == labels, correct):
            raise ConfigError(f"{entry.id} does not classify the sweep's images as the sweep recorded: another "
                              f"data directory, or changed weights")
        attacked, attacked_labels = images[correct][:limit], labels[correct][:limit]
        for attack in dict.fromkeys(c.attack for c in cells if c.model_id == model_id):
            same = [c for c in cells if c.model_id == model_id and c.attack == attack]
            say(f"torchattacks {attack} on {entry.id}: {len(attacked)} images, eps "
                f"{', '.join(f'{c.eps:g}' for c in same)}")
            found = run_torchattacks(str(store.root), entry.id, attacked, attacked_labels, [c.eps for c in same],
                                     attack, same[0].norm, steps=same[0].attack_steps,
                                     queries=(same[0].attack_options or {}).get("queries", 0), seed=seed)
            for cell in same:
                theirs = found[cell.eps]
                valid = check_adversarial(attacked, theirs["adversarial"], cell.eps, cell.norm)
                fooled = valid & (predict_batched(model, theirs["adversarial"])[SCORES].argmax(-1) != attacked_labels)
                ours = record.result.outcomes[(model_id, attack, cell.eps)].robust[:len(attacked)]
                by = {name: int(np.sum(fooled & (theirs["fooled_by"] == index)))
                      for index, name in enumerate(MEMBERS[attack])}
                checks.append(CrossCheck.pair(model_id, attack, cell.eps, ours, ~fooled, int(np.sum(~valid)), by,
                                              theirs["seconds"]))
    return checks


def _members(model, spec: dict, eps: float, num_classes: int) -> list:
    """torchattacks' members of `spec["attack"]`, with the sweep's budgets (module docstring)."""
    import torchattacks

    steps, seed, targets = spec["steps"], spec["seed"], min(TARGET_CLASSES, num_classes - 1)
    norm = {"inf": "Linf", "2": "L2"}[spec["norm"]]
    members = [torchattacks.APGD(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce"),
               torchattacks.APGDT(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed,
                                  n_classes=num_classes)]
    members[1].n_target_classes = targets
    if spec["attack"] == "autoattack":
        fab = torchattacks.FAB(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed,
                               multi_targeted=True, n_classes=num_classes)
        fab.n_target_classes = targets
        members += [fab, torchattacks.Square(model, norm=norm, eps=eps, n_queries=spec["queries"], n_restarts=1,
                                             seed=seed, resc_schedule=False)]  # standard AutoAttack's schedule
    return members


def _worker(spec_path: str) -> None:
    """The subprocess: runs under `KERAS_BACKEND=torch` (see `run_torchattacks`)."""
    import torch

    from capsrobust.store import ModelStore

    class Scores(torch.nn.Module):
        """The Keras model's class scores from NCHW images, as torchattacks calls a model."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.model(images.permute(0, 2, 3, 1), training=False)[SCORES]

    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"])
    store = ModelStore(spec["store"])
    keras_model = store.load(store.resolve(spec["entry"]))
    model = Scores(keras_model).eval()
    with np.load(work / "inputs.npz", allow_pickle=False) as inputs:
        images = torch.tensor(inputs["images"]).permute(0, 3, 1, 2)
        labels = torch.tensor(inputs["labels"])
    for eps in spec["eps"]:
        start = time.perf_counter()
        adversarial, fooled_by = images.clone(), np.full(len(labels), -1)
        left = torch.arange(len(labels))
        for index, member in enumerate(_members(model, spec, eps, keras_model.num_classes)):
            if len(left) == 0:
                break
            found = member(images[left], labels[left])
            with torch.no_grad():
                fooled = model(found).argmax(dim=1) != labels[left]
            adversarial[left[fooled]] = found[fooled]
            fooled_by[left[fooled].numpy()] = index
            left = left[~fooled]
        np.savez(work / f"eps-{eps!r}.npz", adversarial=adversarial.permute(0, 2, 3, 1).detach().numpy(),
                 fooled_by=fooled_by, seconds=time.perf_counter() - start)


if __name__ == "__main__":
    _worker(sys.argv[1])
