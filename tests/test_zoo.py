"""The zoo (converged models shipped in the package) and the recipes that trained them.

Tests of the zoo's mechanics build their own entries in temporary directories; the tests named `test_shipped_*`
check the entries that really ship.
"""

import pytest

from capsrobust.cards import build_card
from capsrobust.cli import main, parse_args
from capsrobust.cli.models import recipes_text
from capsrobust.cli.train import settings_from_args
from capsrobust.errors import StoreError
from capsrobust.models import create_model, get_model_spec, model_config
from capsrobust.models.predict import accuracy
from capsrobust.store import CARD_FILE, WEIGHTS_FILE, ZOO_DIR, ModelStore, add_to_zoo, sha256_of

SHIPPED = ModelStore(zoo=ZOO_DIR).zoo_entries()
ZOO_LIMIT_BYTES = 48 * 2**20  # the zoo ships inside the package; 12 models are 40.9 MB (4 December)


def _entry(store: ModelStore, name: str = "cnn-small", *, val_accuracy: float = 0.5, source: str = "/data/mnist",
           sample: bool = True, threat_model: dict | None = None, val_pgd_accuracy: float | None = None):
    """A published entry of an untrained `name` (the zoo's mechanics do not care how good the weights are)."""
    model = create_model(name)
    config = model_config(name)
    dataset = {"name": "mnist", "source": source}
    run_dir = store.new_run({"model": name, "config": config, "dataset": dataset,
                             "settings": {"adversarial": threat_model["method"] if threat_model else None}})
    metrics = {"val_accuracy": val_accuracy, "test_accuracy": val_accuracy, "test_images": 10_000}
    if val_pgd_accuracy is not None:
        metrics["val_pgd_accuracy"] = val_pgd_accuracy
    if sample:
        metrics.update(sample_accuracy=0.1, sample_images=1000)
    card = build_card(model_name=name, config=config, model=model, dataset=dataset, training={}, metrics=metrics,
                      detector=None, command=f"capsrobust train mnist --model {name}", threat_model=threat_model)
    return store.publish(run_dir, model, card)


PGD = {"method": "pgd", "eps": 0.3, "steps": 7, "step_size": 0.107, "norm": "inf", "beta": None, "eps_warmup": 2}


@pytest.fixture
def user_and_zoo(tmp_path):
    """A user's store and a zoo, both empty, in temporary directories."""
    return ModelStore(tmp_path / "home", zoo=tmp_path / "zoo"), tmp_path / "zoo"


def test_a_name_resolves_to_the_users_entry_before_the_zoos(user_and_zoo, tmp_path):
    store, zoo = user_and_zoo
    maintainer = ModelStore(tmp_path / "maintainer", zoo=zoo)
    add_to_zoo(_entry(maintainer, val_accuracy=0.99), zoo)
    from_zoo = store.resolve("cnn-small", dataset="mnist")
    assert from_zoo.zoo and store.load(from_zoo) is not None
    own = _entry(store, val_accuracy=0.5)  # worse than the zoo's, but the user's own
    assert store.resolve("cnn-small").id == own.id
    assert store.resolve("cnn-small", zoo_only=True).id == from_zoo.id
    assert [e.zoo for e in store.entries(zoo=True)] == [False, True] and store.entries() == [own]


def test_adversarially_trained_entries_answer_to_the_at_name_only(user_and_zoo):
    store, _ = user_and_zoo
    plain = _entry(store, val_accuracy=0.6)
    defended = _entry(store, val_accuracy=0.9, threat_model=PGD)
    assert defended.id.startswith("cnn-small-at-mnist-") and defended.name == "cnn-small-at"
    assert store.resolve("cnn-small").id == plain.id  # not the defended one, though its accuracy is higher
    assert store.resolve("cnn-small-at").id == defended.id
    with pytest.raises(StoreError, match=r"no trained 'capsnet-small-at'.*--adversarial pgd"):
        store.resolve("capsnet-small-at")


def test_an_at_name_picks_by_robustness_not_clean_accuracy(user_and_zoo):
    # What a user meets: an FGSM-RS run that overfit catastrophically keeps a higher clean accuracy than a PGD run.
    store, _ = user_and_zoo
    robust = _entry(store, val_accuracy=0.984, threat_model=PGD, val_pgd_accuracy=0.94)
    _entry(store, val_accuracy=0.987, val_pgd_accuracy=0.42,
           threat_model={**PGD, "method": "fgsm-rs", "steps": 1, "step_size": 0.375})
    assert store.resolve("cnn-small-at").id == robust.id
    # A model trained for a larger eps is the more defended one, whatever its PGD-10 at its own eps says.
    wider = _entry(store, val_accuracy=0.97, threat_model={**PGD, "eps": 0.4}, val_pgd_accuracy=0.6)
    _entry(store, val_accuracy=0.99, threat_model={**PGD, "eps": 0.1}, val_pgd_accuracy=0.99)
    assert store.resolve("cnn-small-at").id == wider.id


def test_add_to_zoo_copies_byte_for_byte_and_refuses_what_it_cannot_check(user_and_zoo):
    store, zoo = user_and_zoo
    entry = _entry(store)
    target = add_to_zoo(entry, zoo)
    for name in (CARD_FILE, WEIGHTS_FILE):
        assert (target / name).read_bytes() == (entry.path / name).read_bytes()
    assert not [p for p in zoo.iterdir() if p.name.startswith(".")]
    with pytest.raises(StoreError, match="already holds"):
        add_to_zoo(entry, zoo)
    with pytest.raises(StoreError, match="no sample_accuracy"):
        add_to_zoo(_entry(store, sample=False), zoo)
    with pytest.raises(StoreError, match="trained on the bundled sample"):
        add_to_zoo(_entry(store, source="subset"), zoo)
    damaged = _entry(store)
    (damaged.path / WEIGHTS_FILE).write_bytes(b"not the weights")
    with pytest.raises(StoreError, match="does not match"):
        add_to_zoo(damaged, zoo)


def test_a_damaged_zoo_file_is_reported_and_never_loaded(user_and_zoo, tmp_path):
    store, zoo = user_and_zoo
    target = add_to_zoo(_entry(ModelStore(tmp_path / "maintainer", zoo=zoo)), zoo)
    weights = bytearray((target / WEIGHTS_FILE).read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (target / WEIGHTS_FILE).write_bytes(weights)
    [listed] = store.zoo_entries(verify=True)
    assert listed.zoo and "does not match the card's sha256" in listed.problem
    with pytest.raises(StoreError, match="does not match the card"):
        store.load(store.resolve("cnn-small"))
    (target / CARD_FILE).write_text("{")
    with pytest.raises(StoreError, match=r"zoo entry .* is broken: unreadable card.json"):
        store.resolve(target.name)


def test_zoo_command_lists_what_ships_with_its_commands_and_add_refuses_unknown_ids(tmp_path, capsys):
    assert main(["zoo", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(f"{e.id}: {e.card['command']}" in out for e in SHIPPED) and f"{len(SHIPPED)} models" in out
    assert main(["zoo", "add", "no-such-entry", "--store", str(tmp_path)]) == 2
    assert "no store entry 'no-such-entry'" in capsys.readouterr().err


# (model, data set, the recipe's epochs and batch size): the small models' Fashion-MNIST recipe differs from MNIST's.
@pytest.mark.parametrize("name, dataset, epochs, batch_size", [
    ("capsnet-small", "mnist", 12, 128), ("efficient-capsnet", "mnist", 10, 32), ("cnn-matched", "mnist", 10, 32),
    ("capsnet-small", "fashion-mnist", 10, 32), ("cnn-small", "fashion-mnist", 10, 32),
    ("efficient-capsnet", "fashion-mnist", 10, 32)])
def test_train_uses_the_models_recipe_for_the_data_set_where_no_flag_is_given(name, dataset, epochs, batch_size):
    recipe = get_model_spec(name).recipe_for(dataset)
    settings = settings_from_args(name, parse_args(["train", dataset, "--model", name]))
    assert (settings.epochs, settings.batch_size) == (epochs, batch_size)
    assert (settings.epochs, settings.batch_size, settings.learning_rate, settings.lr_decay, settings.max_shift) == \
        (recipe.epochs, recipe.batch_size, recipe.learning_rate, recipe.lr_decay, recipe.max_shift)
    flags = parse_args(["train", dataset, "--model", name, "--epochs", "2", "--batch-size", "8", "--lr", "0.01",
                        "--lr-decay", "0.5", "--shift", "0"])
    settings = settings_from_args(name, flags)
    assert (settings.epochs, settings.batch_size, settings.learning_rate, settings.lr_decay, settings.max_shift) == \
        (2, 8, 0.01, 0.5, 0)


def test_models_command_shows_each_recipe(tmp_path, capsys):
    assert main(["models", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert get_model_spec("efficient-capsnet").recipe.summary() in out
    # The small models' own recipe for Fashion-MNIST, below their MNIST one (the two families share both).
    small = get_model_spec("capsnet-small")
    fashion = small.recipe_for("fashion-mnist").summary()
    assert recipes_text(small) == f"{small.recipe.summary()}\nfashion-mnist:\n{fashion}"
    assert "fashion-mnist:" in out
    assert all(get_model_spec(name).dataset_recipes == small.dataset_recipes for name in ("cnn-small", "cnn-recon"))


# What ships ----------------------------------------------------------------------------------------------------------

def test_shipped_zoo_holds_the_converged_mnist_models_within_its_size():
    names = {(e.name, e.dataset) for e in SHIPPED}
    assert {("capsnet-small", "mnist"), ("cnn-small", "mnist")} <= names
    size = sum(f.stat().st_size for e in SHIPPED for f in e.path.iterdir())
    assert size < ZOO_LIMIT_BYTES, f"the zoo is {size / 2**20:.1f} MB"


@pytest.mark.parametrize("entry", SHIPPED, ids=[e.id for e in SHIPPED])
def test_shipped_entry_verifies_loads_and_matches_its_card_on_the_bundled_sample(entry, mnist_subset, tmp_path):
    from capsrobust.data import load_dataset

    assert not entry.problem and sha256_of(entry.path / WEIGHTS_FILE) == entry.card["weights"]["sha256"]
    card = entry.card
    assert card["command"].startswith("capsrobust train ") and card["dataset"]["source"] != "subset"
    sample = mnist_subset if entry.dataset == "mnist" else load_dataset(entry.dataset, subset=True)
    model = ModelStore(tmp_path).load(entry)
    measured = accuracy(model, sample.x_test, sample.y_test)
    # One image either way: a borderline image may flip between CPUs' float rounding.
    assert len(sample.x_test) == card["metrics"]["sample_images"] == 1000
    assert abs(measured - card["metrics"]["sample_accuracy"]) * 1000 <= 1 + 1e-9
