"""The package graph of lcie_fast is a DAG with the seams of DESIGN.md: walked from the AST.

Every import counts, the lazy ones inside functions too: a cycle through a lazy import is still
a cycle for a reader. ``python tests/test_import_graph.py`` prints the graph as a table.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lcie_fast"

# (importer, imported) pairs that must never appear
FORBIDDEN = [
    *[("runtime", other) for other in ("deploy", "tagger", "cli", "train", "demo", "benchmark")],
    *[("artifacts", other) for other in ("deploy", "runtime", "tagger", "cli", "models", "train")],
    *[(other, "tagger") for other in ("outputs", "inputs", "runtime", "deploy", "data", "postprocess", "thresholds",
                                      "webdataset", "remote")],
    *[(other, "distributed") for other in ("tagger", "batch", "outputs", "inputs", "runtime", "deploy", "data", "models",
                                           "demo", "benchmark")],
    *[(other, "batch") for other in ("tagger", "outputs", "inputs", "runtime", "deploy", "data", "postprocess",
                                     "webdataset", "remote")],
    *[(other, "demo") for other in ("benchmark", "deploy", "tagger", "train")],
    ("deploy", "benchmark"), ("deploy", "info"), ("models", "deploy"), ("models", "runtime"),
    ("ops", "models"), ("data", "models"),
]


def unit(module: str) -> str:
    """``lcie_fast.deploy.export`` -> ``deploy``; ``lcie_fast.tagger`` -> ``tagger``; ``lcie_fast`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = PACKAGE) -> set[str]:
    """Absolute names of the lcie_fast modules ``path`` imports (at any depth of the file)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == root.name}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root.name:
                continue
            found.add(target)
            for alias in node.names:  # `from .. import benchmark` imports a module
                candidate = Path(root.parent, *target.split("."), alias.name)
                if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
                    found.add(f"{target}.{alias.name}")
    return found


def package_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Top-level unit (subpackage or module) -> the other units it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        source = unit(module_name(path, root))
        edges = graph.setdefault(source, set())
        edges |= {unit(m) for m in imported_modules(path, root) if unit(m) not in (source, "__init__")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_graph_has_no_cycle():
    graph = package_graph()
    assert {"artifacts", "runtime", "deploy", "cli", "tagger", "inputs", "outputs"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_seams_hold():
    graph = package_graph()
    broken = [f"{a} imports {b}" for a, b in FORBIDDEN if b in graph.get(a, set())]
    assert not broken, broken


def test_only_the_entry_points_import_the_cli():
    importers = sorted(p for p, edges in package_graph().items() if "cli" in edges)
    assert importers == ["__main__"], importers


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    """The checks above would pass vacuously if the walker missed imports: check it on a known tree."""
    root = tmp_path / "lcie_fast"
    (root / "a").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "a" / "__init__.py").write_text("")
    (root / "a" / "x.py").write_text("def f():\n    from ..b import y\n    from .. import c\n")
    (root / "b.py").write_text("import lcie_fast.a.x\n")
    (root / "c.py").write_text("")
    graph = package_graph(root)
    assert graph["a"] == {"b", "c"} and graph["b"] == {"a"}
    assert find_cycle(graph) in (["a", "b", "a"], ["b", "a", "b"])


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    print("| package | imports |\n|---|---|")
    for name, edges in sorted(package_graph(root).items()):
        print(f"| {name} | {', '.join(sorted(edges)) or '-'} |")
