"""The package's shape: imports point one way (no cycle inside volcam/, lazy imports included),
and modules stay small."""

import ast
from pathlib import Path

import volcam

PACKAGE = Path(volcam.__file__).resolve().parent


def module_names() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the volcam modules it imports, at the top or inside functions."""
    mods = module_names()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                # the package itself (volcam/__init__.py) re-exports; importing it is not a dependency
                if target and target != name and target != "volcam":
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if colour.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_volcam():
    graph = import_graph()
    assert len(graph) > 40 and "volcam.run.loop" in graph["volcam.run.distributed"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_loops_do_not_import_each_other():
    graph = import_graph()
    assert "volcam.run.distributed" not in graph["volcam.run.loop"]


#: the engine and what it builds on: none of them imports the layers above
ENGINE = (
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
ABOVE = (
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


def test_the_engine_imports_no_layer_above_it():
    graph = import_graph()
    engine = [m for m in graph if m.startswith(ENGINE)]
    assert "volcam.methods.gradcam" in engine and "volcam.methods.base" in graph["volcam.methods.gradcam"]
    for module in engine:
        wrong = sorted(i for i in graph[module] if i.startswith(ABOVE))
        assert not wrong, f"{module} imports {wrong}"


def test_test_modules_have_unique_names():
    # the test folders are not packages: pytest imports each test module by its file name, so two
    # files of one name in different folders stop the whole run at collection
    tests = Path(__file__).parent
    seen: dict[str, Path] = {}
    for path in sorted(tests.rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a name; pytest collects only one"
        seen[path.name] = path


def test_one_function_ends_both_loops():
    # the summary and the report are written by finish_run alone, for the local and the distributed run
    run = Path(volcam.__file__).parent / "run"
    for name in ("loop.py", "distributed.py"):
        tree = ast.parse((run / name).read_text())
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "finish_run" in called, name
        assert "write_report" not in called, f"{name} writes the report itself"
