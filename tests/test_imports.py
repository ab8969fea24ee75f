"""Imports inside ``volcam`` point one way: no module of the engine takes part in an import
cycle, counting imports inside functions (which only hide a cycle, they do not break it)."""

import ast
from pathlib import Path

import volcam

PACKAGE = Path(volcam.__file__).resolve().parent

#: the engine and what it builds on; the layers above it (run, io, figures, metrics, monai,
#: commands) are checked by the same graph
ENGINE = (
    "volcam",
    "volcam.errors",
    "volcam.checks",
    "volcam.layers",
    "volcam.selectors",
    "volcam.targets",
    "volcam.capture",
    "volcam.result",
    "volcam.pca",
    "volcam.diagnostics",
    "volcam.postprocess",
    "volcam.smoothing",
    "volcam.sliding",
    "volcam.transformers",
    "volcam.methods",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every volcam module ``path`` imports, wherever the import statement is."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            # the longest known module the target names (``from volcam.x import y``: y may be a module)
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, name, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def in_engine(module: str) -> bool:
    return any(module == e or module.startswith(e + ".") for e in ENGINE[1:]) or module == "volcam"


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    # volcam/__init__.py imports volcam.sliding only inside its module __getattr__
    assert "volcam.sliding" in graph["volcam"]
    assert "volcam.methods.base" in graph["volcam.methods.gradcam"]
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(planted) == [["a", "b", "c"]]


def test_no_engine_module_is_part_of_an_import_cycle():
    found = [c for c in cycles(import_graph()) if any(in_engine(m) for m in c)]
    assert not found, f"import cycles through the engine: {found}"


def test_the_engine_imports_no_layer_above_it():
    graph = import_graph()
    above = (
        "volcam.io",
        "volcam.figures",
        "volcam.metrics",
        "volcam.monai",
        "volcam.run",
        "volcam.pipeline",
        "volcam.config",
        "volcam.distributed",
        "volcam.commands",
        "volcam.cli",
        "volcam.demo",
        "volcam.nnunet",
    )
    for module, imported in graph.items():
        if module == "volcam" or not in_engine(module):
            continue
        wrong = sorted(i for i in imported if i.startswith(above))
        assert not wrong, f"{module} imports {wrong}"
