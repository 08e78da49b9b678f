"""The architecture docs/architecture.md draws, kept: layers, adapters and module sizes.

The layers are read from the document itself, so the drawing and the code cannot drift.

Read from the source with :mod:`ast`, so no module is imported and no server is needed.
- **Layers.** Each module of ``offloader`` sits in one layer; it imports only modules of
  lower layers (a package counts as one module), so dependencies point one way.
- **Adapters.** Each library with an adapter is imported only by that adapter.
- **Operations depend on ports.** The table operations never import a concrete adapter.
- **Size.** No module holds more than about 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "offloader"

DOC = PACKAGE.parent / "docs" / "architecture.md"


def read_layers() -> list[set[str]]:
    """The layers docs/architecture.md draws (its ```layers block), bottom first."""
    text = DOC.read_text()
    block = text.split("```layers\n", 1)[1].split("```", 1)[0]
    rows = {}
    for line in block.splitlines():
        number, names, _ = (part.strip() for part in line.split("|"))
        rows[int(number)] = set(names.split())
    return [rows[i] for i in range(len(rows))]


LAYERS = read_layers()

# A library with an adapter, and the modules allowed to import it.
ADAPTERS = {
    "pyiceberg": {"iceberg"},
    "chdb": {"clickhouse"},
    "clickhouse_connect": {"clickhouse"},
    "apscheduler": {"scheduler"},
    "prometheus_client": {"metrics"},
    "psycopg2": {"state"},
    "sqlalchemy": {"state", "iceberg"},
    "fsspec": {"iceberg"},
    "s3fs": {"iceberg"},
    "boto3": {"iceberg"},
    "ray": {"workers"},
}

OPERATIONS = {"job", "window", "corrections", "offload", "maintenance", "consistency", "reset", "rollback", "backfill"}
CONCRETE_ADAPTERS = {"iceberg", "clickhouse", "state", "metrics", "service", "server", "app", "cli"}
MAX_LINES = 420


def modules() -> dict[str, list[Path]]:
    """Each top-level module of the package (a subpackage is one), with its files."""
    found: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        found.setdefault(relative.parts[0].removesuffix(".py"), []).append(path)
    return found


def imports(path: Path) -> set[str]:
    """The dotted names a file imports, at any depth (deferred imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "offloader":  # a module of the package, or a name of its __init__
                names.update(
                    f"offloader.{alias.name}"
                    if (PACKAGE / f"{alias.name}.py").exists() or (PACKAGE / alias.name).is_dir()
                    else "offloader.__init__"
                    for alias in node.names
                )
        elif isinstance(node, ast.ImportFrom) and node.level:  # relative: inside a subpackage
            names.add(f"offloader.{path.relative_to(PACKAGE).parts[0]}")
    return names


def internal(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "offloader" and len(parts) > 1 else None


def layer_of(module: str) -> int:
    for index, layer in enumerate(LAYERS):
        if module in layer:
            return index
    raise AssertionError(f"offloader/{module} is in no layer of LAYERS: place it there and in docs/architecture.md")


def test_every_module_is_placed_in_one_layer() -> None:
    placed = [m for layer in LAYERS for m in layer]
    assert len(placed) == len(set(placed)), "a module is in two layers"
    for module in modules():
        layer_of(module)


@pytest.mark.parametrize("module", sorted(modules()))
def test_dependencies_point_down(module: str) -> None:
    own = layer_of(module)
    upward = set()
    for path in modules()[module]:
        for name in imports(path):
            target = internal(name)
            if target is not None and target != module and layer_of(target) >= own:
                upward.add(f"{path.relative_to(PACKAGE.parent)} imports offloader.{target}")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


@pytest.mark.parametrize("library", sorted(ADAPTERS))
def test_a_library_is_imported_only_by_its_adapter(library: str) -> None:
    leaks = [
        str(path.relative_to(PACKAGE.parent))
        for module, paths in modules().items()
        if module not in ADAPTERS[library]
        for path in paths
        if any(name == library or name.startswith(library + ".") for name in imports(path))
    ]
    assert not leaks, f"{library} is imported outside its adapter ({', '.join(sorted(ADAPTERS[library]))}): {leaks}"


@pytest.mark.parametrize("module", sorted(OPERATIONS))
def test_operations_depend_on_ports_not_adapters(module: str) -> None:
    concrete = {
        f"offloader.{internal(name)}"
        for path in modules()[module]
        for name in imports(path)
        if internal(name) in CONCRETE_ADAPTERS
    }
    assert not concrete, f"offloader/{module} imports concrete adapters {sorted(concrete)}; depend on offloader.ports"


@pytest.mark.parametrize("module", sorted(modules()))
def test_modules_stay_small(module: str) -> None:
    for path in modules()[module]:
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines; split it along its seams"


def test_the_document_draws_every_layer_once() -> None:
    assert len(LAYERS) > 10 and {"errors"} <= LAYERS[0] and {"cli"} <= LAYERS[-2]


def test_the_checks_see_real_imports() -> None:
    """The reader finds what a module imports (so the rules above cannot pass on nothing)."""
    found = imports(PACKAGE / "app.py")
    assert "offloader.config" in found and any(internal(n) == "offload" for n in found)
