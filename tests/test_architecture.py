"""The import graph of src/kdsweep: no cycle, and no import from a lower layer to a higher one.

The layers and the modules in each live in one place, docs/architecture.md (its `### N. name` headings and
their "- `module`: ..." lines); this test reads them from there. Every import statement counts, at module
level or inside a function, absolute or relative. Importing `a.b.c` runs the __init__ of `a.b` too, so that
counts as well (except for the packages the importing module itself lies in, whose __init__ has started
already); `from <package> import x` counts as importing the package's __init__, the importer's own
package included, and `x` where it is a module.
"""

import ast
import graphlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "kdsweep"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def modules(package: Path) -> dict[str, Path]:
    """{dotted name: file} of every module of the package (a package's __init__.py: the package's name)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from every import statement of its source."""
    found = modules(package)
    graph = {name: set() for name in found}
    for name, path in found.items():
        own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        started = set(_ancestors(name)) | {name}  # their __init__ runs before this module's code does
        explicit = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                explicit |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = own_package.split(".")[:len(own_package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                explicit.add(target)
                explicit |= {f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in found}
        implicit = {ancestor for target in explicit for ancestor in _ancestors(target)} - started
        graph[name] = {target for target in explicit | implicit if target in found and target != name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its modules in import order, the first again at the end), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(reversed(error.args[1]))
    return None


def read_layers(text: str) -> dict[str, tuple[int, str]]:
    """{module: (layer number, layer name)} from docs/architecture.md's `### N. name` headings and the
    "- `module`, `module`: ..." lines under each (module names relative to kdsweep; `kdsweep`: the package)."""
    layers, current = {}, None
    for line in text.splitlines():
        heading = re.match(r"### (\d+)\. (.+)", line)
        if heading:
            current = int(heading.group(1)), heading.group(2).strip()
            continue
        listed = re.match(r"- ((?:`[\w.]+`(?:, )?)+):", line)
        if listed and current is not None:
            for module in re.findall(r"`([\w.]+)`", listed.group(1)):
                full = module if module == "kdsweep" else f"kdsweep.{module}"
                assert full not in layers, f"docs/architecture.md places {module} twice"
                layers[full] = current
    return layers


def upward(graph: dict[str, set[str]], layers: dict[str, tuple[int, str]]) -> list[str]:
    """Every import from a lower layer to a higher one, in words."""
    return [f"{module} (layer {layers[module][0]}, {layers[module][1]}) imports {target} "
            f"(layer {layers[target][0]}, {layers[target][1]})"
            for module in sorted(graph) for target in sorted(graph[module])
            if layers[target][0] > layers[module][0]]


GRAPH = import_graph(PACKAGE)
LAYERS = read_layers(ARCHITECTURE.read_text())


def test_the_graph_sees_every_kind_of_import():
    """The parser itself, on edges of kdsweep's source that each kind of import statement makes: a relative
    module-level import, a function-level one, an absolute one, a submodule from its package, and a module's
    own package's __init__ through `from . import x`."""
    assert "kdsweep.errors" in GRAPH["kdsweep.io"]  # from .errors import KdsweepError
    assert "kdsweep.models" in GRAPH["kdsweep.trained"]  # from .models import load_model, inside load()
    assert "kdsweep.layout" in GRAPH["kdsweep.tables.collect"]  # from kdsweep.layout import ...
    assert "kdsweep.tables.choices" in GRAPH["kdsweep.cli.decisions"]  # from ..tables.choices import ..., in a function
    assert "kdsweep.tables" in GRAPH["kdsweep.cli.decisions"]  # which runs tables/__init__ first
    assert {"kdsweep.bench", "kdsweep.bench.floor"} <= GRAPH["kdsweep.bench.command"]  # from . import floor


def test_a_cycle_is_found_and_named(tmp_path):
    """A cycle through a function-level relative import, and one through a package's __init__, are found."""
    package = tmp_path / "kdsweep"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import x\n")
    (package / "b.py").write_text("def f():\n    from . import a\n")
    (package / "sub" / "__init__.py").write_text("from .c import y\n")
    (package / "sub" / "c.py").write_text("from kdsweep.sub import z\n")
    graph = import_graph(package)
    found = cycle({name: targets for name, targets in graph.items() if name.startswith("kdsweep.sub")})
    assert found is not None and set(found) == {"kdsweep.sub", "kdsweep.sub.c"}
    found = cycle({name: targets - {"kdsweep.sub", "kdsweep.sub.c"} for name, targets in graph.items()
                   if not name.startswith("kdsweep.sub")})
    assert found is not None and set(found) == {"kdsweep.a", "kdsweep.b"} and found[0] == found[-1]


def test_no_import_cycle():
    found = cycle(GRAPH)
    assert found is None, "import cycle: " + " -> ".join(found)


def test_every_module_has_a_layer():
    unplaced = sorted(set(GRAPH) - set(LAYERS))
    assert not unplaced, (f"modules without a layer: {', '.join(unplaced)}; place each in docs/architecture.md "
                          "(the lowest layer that holds everything it imports)")
    stale = sorted(set(LAYERS) - set(GRAPH))
    assert not stale, f"docs/architecture.md places modules that do not exist: {', '.join(stale)}"


def test_no_import_upward():
    assert set(GRAPH) <= set(LAYERS), "every module needs a layer first (test_every_module_has_a_layer)"
    arrows = upward(GRAPH, LAYERS)
    assert not arrows, "imports from a lower layer to a higher one:\n" + "\n".join(arrows)


@pytest.mark.parametrize("text, found", [
    ("### 1. low\n- `errors`: e\n### 2. high\n- `plan`, `halving`: p\n",
     {"kdsweep.errors": (1, "low"), "kdsweep.plan": (2, "high"), "kdsweep.halving": (2, "high")}),
])
def test_layers_read_from_the_document(text, found):
    assert read_layers(text) == found
    assert upward({"kdsweep.errors": {"kdsweep.plan"}, "kdsweep.plan": {"kdsweep.errors"}, "kdsweep.halving": set()},
                  found) == ["kdsweep.errors (layer 1, low) imports kdsweep.plan (layer 2, high)"]
