"""The rules ARCHITECTURE.md states, checked on the source: layers with no import upward, no
import cycles, thin scripts, one place for argparse, a light top-level import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from deepcovidxr import stages

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deepcovidxr"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Edges for every import, module-level or inside a function (a deferred import still ties
    two modules together)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                    base = ".".join([*package, base] if base else package)
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    edges.add(candidate if candidate in modules else base)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
    return {k: {d for d in v if d in modules and d != k and d != "deepcovidxr"} for k, v in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# The layers, lowest first. A module may import its own layer and the layers below it, never one
# above. Every module of the package belongs to exactly one (the test below refuses a stranger).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("deepcovidxr", "deepcovidxr.errors"),
    ("deepcovidxr.contract",),
    ("deepcovidxr.config",),
    ("deepcovidxr.scoring",),
    ("deepcovidxr.imaging",),
    ("deepcovidxr.reports",),
    ("deepcovidxr.networks",),
    ("deepcovidxr.runtime",),
    ("deepcovidxr.lungs",),
    ("deepcovidxr.data",),
    ("deepcovidxr.training",),
    ("deepcovidxr.inference",),
    ("deepcovidxr.explain",),
    ("deepcovidxr.audit",),  # the lung/site audit: scores (inference), Grad-CAM (explain)
    ("deepcovidxr.synthetic",),
    ("deepcovidxr.predictor",),  # the Python API: prediction (inference) and Grad-CAM (explain)
    ("deepcovidxr.stages",),
    ("deepcovidxr.cli", "deepcovidxr.__main__"),
)


# The package's lazy re-exports (``deepcovidxr.Predictor``, imported by ``__getattr__`` on first use):
# the one import allowed to reach up, since ``import deepcovidxr`` itself stays light.
PUBLIC_API = {("deepcovidxr", "deepcovidxr.predictor")}


def layer_of(module: str) -> int:
    best = (-1, -1)  # (length of the matching prefix, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            exact_only = prefix == "deepcovidxr"  # the package's __init__ alone, not everything
            if module == prefix or (not exact_only and module.startswith(prefix + ".")):
                best = max(best, (len(prefix), index))
    return best[1]


def test_every_module_belongs_to_a_layer() -> None:
    assert [m for m in sorted(import_graph()) if layer_of(m) < 0] == []


def test_the_package_top_level_stays_small() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module) and (module, target) not in PUBLIC_API
    ]
    assert upward == []


def test_layer_check_sees_an_upward_import() -> None:
    assert layer_of("deepcovidxr.contract.layout") < layer_of("deepcovidxr.runtime.load")
    assert layer_of("deepcovidxr.lungs.cropper") > layer_of("deepcovidxr.imaging.geometry")
    assert layer_of("deepcovidxr.stages.crop") < layer_of("deepcovidxr.cli")


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_in_the_package() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("stem", sorted(stages.STAGES))
def test_scripts_are_a_docstring_and_one_call(stem: str) -> None:
    tree = ast.parse((ROOT / f"{stem}.py").read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree)
    assert docstring and "Example" in docstring and f"python {stem}.py" in docstring
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert [f.name for f in functions] == ["main"]
    body = functions[0].body
    assert len(body) == 1 and isinstance(body[0], ast.Return)
    call = body[0].value
    assert isinstance(call, ast.Call) and ast.unparse(call.func) == "cli.main"
    assert ast.unparse(call.args[0]) == repr(stem)


def test_argparse_lives_in_one_module() -> None:
    users = sorted(
        str(p.relative_to(ROOT))
        for p in [*PACKAGE.rglob("*.py"), *ROOT.glob("*.py")]
        if "add_argument(" in p.read_text(encoding="utf-8")
    )
    assert users == ["deepcovidxr/config/schema.py"]


def test_the_quick_tier_names_existing_test_modules() -> None:
    from tests.conftest import QUICK, TESTS

    assert sorted(name for name in QUICK if not (TESTS / name).is_file()) == []
