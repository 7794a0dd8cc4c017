"""Imports flow one way: data -> models -> training -> cards -> store -> ART bridge -> attacks, detection -> sweep ->
report -> cli, never back. Read from the source (every import, including those inside functions), so no module is
imported to check it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Layer of each package or module (longest prefix wins); a module may import only from its own layer or lower ones.
LAYERS = [
    ("capsrobust.errors", 0), ("capsrobust.io", 0), ("capsrobust.console", 0), ("capsrobust.stats", 0),
    ("capsrobust.backend", 0), ("capsrobust.ops", 0), ("capsrobust", 0),
    ("capsrobust.data", 1),
    ("capsrobust.routing", 2), ("capsrobust.routing_reference", 2), ("capsrobust.em_routing", 2),
    ("capsrobust.losses", 2), ("capsrobust.layers", 2),
    ("capsrobust.models", 3),
    ("capsrobust.training", 4),
    ("capsrobust.cards", 5),
    ("capsrobust.store", 6),
    ("capsrobust.art_bridge", 7),
    ("attacks", 8), ("capsrobust.detection", 8), ("capsrobust.pose_grid", 8),
    ("capsrobust.sweep", 9),
    ("capsrobust.report", 10), ("capsrobust.plots", 10), ("capsrobust.crosscheck", 10),
    ("capsrobust.cli", 11), ("capsrobust.__main__", 11),
]
# Inside a package, the order its modules may import each other in (the package's __init__ comes last).
ORDERS = {
    "attacks": ["base", "iterative", "apgd", "fab", "square", "rbim", "vote", "autoattack", "transfer", "registry"],
    "capsrobust.sweep": ["plan", "results", "metrics", "checks", "run", "records", "merge"],
}


def _layer(module: str) -> int | None:
    matches = [(len(name), layer) for name, layer in LAYERS if module == name or module.startswith(name + ".")]
    return max(matches)[1] if matches else None


def _modules() -> dict[str, Path]:
    found = {}
    for path in [*ROOT.glob("capsrobust/**/*.py"), *ROOT.glob("attacks/*.py")]:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x` in package a.b is a.b.x
                parents = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([base] if base else []))
            # `from package import submodule` imports the submodule
            names.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names)
    return names


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_from_its_own_or_lower_layers(module):
    own = _layer(module)
    assert own is not None, f"{module} is in no layer: add it to LAYERS"
    for imported in _imports(MODULES[module], module):
        layer = _layer(imported)
        if layer is not None:  # a third-party library
            assert layer <= own, f"{module} (layer {own}) imports {imported} (layer {layer})"
        for package, order in ORDERS.items():
            inside = lambda name: name.startswith(package + ".") and name.split(".")[-1] in order  # noqa: E731
            if inside(module) and inside(imported):
                assert order.index(imported.split(".")[-1]) <= order.index(module.split(".")[-1]), \
                    f"{module} imports {imported}, which comes after it in {package}"


def test_the_layer_table_catches_a_backward_import(tmp_path):
    """The check itself: a store that imports the sweep would be refused."""
    path = tmp_path / "store.py"
    path.write_text("from capsrobust.sweep import run_sweep\n")
    assert {_layer(name) for name in _imports(path, "capsrobust.store")} == {9} and _layer("capsrobust.store") == 6
