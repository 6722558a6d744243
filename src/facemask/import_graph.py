"""The package's layers, and a check that imports only go down them and never in a circle.

Each top-level module or subpackage of `facemask` is a unit; a unit may import units of lower layers
only. Within a unit, modules may import each other, but no module may reach itself again through its
imports (a cycle: two modules that need each other belong in one, or share a third). `python -m
facemask.import_graph` prints the unit graph, every import that goes up or sideways and every import
cycle (exit 1 if any); the tests run it. Imports inside functions count too.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

# Lowest first. docs/architecture.md describes what each holds.
LAYERS: list[list[str]] = [
    ["errors", "atomic_files", "machine", "numerics"],
    ["config"],
    [
        "imageio",
        "boxes",
        "plots",
        "mlflow_tracking",
        "subprocesses",
        "compute",
        "quantization",
        "onnx_sessions",
        "drift",
    ],
    ["data", "tracking_server"],
    ["cli"],
    ["detection", "preprocess", "augment"],
    ["classifier"],
    ["pipeline", "classification_metrics"],
    ["draw", "face_crops", "crop_scoring", "registry"],
    ["scenes", "training", "stream"],
    ["detector_training", "serving"],
    ["stages", "bench", "import_graph"],
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# Units whose modules stand alone: one DVC stage script never imports another.
STANDALONE = {"stages"}
PACKAGE = "facemask"


def unit_of(module: str) -> str | None:
    """`facemask.scenes.evaluate` -> `scenes`; None outside the package (or the package itself)."""
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else None


def module_name(root: Path, path: Path) -> str:
    """`<root>/scenes/evaluate.py` -> `facemask.scenes.evaluate` (a package: its `__init__`'s name)."""
    return ".".join((PACKAGE, *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")


def imported_names(path: Path) -> set[str]:
    """Every module name the file's import statements name, anywhere in it: `import a.b` gives a.b,
    `from a import x` gives a and a.x (x may be a submodule imported by name)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def imports(root: Path) -> dict[tuple[str, str], set[str]]:
    """{(importing unit, imported unit): the importing modules} for every import between units."""
    edges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in sorted(root.rglob("*.py")):
        module = module_name(root, path)
        source = unit_of(module)
        if source is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from facemask import plots` imports the unit `plots`
                targets = [f"{node.module}.{a.name}" for a in node.names] if node.module == PACKAGE else [node.module]
            for target in targets:
                dest = unit_of(target)
                if dest is not None and dest != source:
                    edges[(source, dest)].add(module)
                elif dest == source and source in STANDALONE and target.startswith(f"{PACKAGE}.{source}."):
                    edges[(module, target)].add(module)  # a sibling import: reported by `violations`
    return edges


def _module_path(root: Path, module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for candidate in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def closure(root: Path, modules: list[str]) -> set[Path]:
    """The files of `modules` and of every facemask module they import, transitively (a package's
    `__init__.py` included, as Python runs it): what a DVC stage running them depends on."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # facemask.a.b runs facemask/__init__, a/__init__, then b
            path = _module_path(root, ".".join(parts[:i])) if i > 1 else root / "__init__.py"
            if path is None or path in seen:
                continue
            seen.add(path)
            todo += sorted(n for n in imported_names(path) if n.startswith(f"{PACKAGE}."))
    return seen


def module_imports(root: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports} (a package is its `__init__`), anywhere in the file."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        module = module_name(root, path)
        graph[module] = {
            name
            for name in imported_names(path)
            if name != module and name.startswith(f"{PACKAGE}.") and _module_path(root, name) is not None
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: each group of modules that reach one another (Tarjan's strongly connected
    components of more than one module), sorted, as a path that closes on its first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dest in sorted(graph.get(node, ())):
            if dest not in index:
                visit(dest)
                low[node] = min(low[node], low[dest])
            elif dest in on_stack:
                low[node] = min(low[node], index[dest])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def violations(edges: dict[tuple[str, str], set[str]]) -> list[str]:
    """Each import that is not strictly downward, or involves a unit no layer names."""
    out = []
    for (source, dest), modules in sorted(edges.items()):
        if "." in source:
            out.append(f"{source} imports {dest}: modules of {source.split('.')[1]} stand alone")
            continue
        unknown = [u for u in (source, dest) if u not in RANK]
        if unknown:
            out.append(f"{source} -> {dest}: no layer names {', '.join(unknown)} (add it to LAYERS)")
        elif RANK[dest] >= RANK[source]:
            out.append(f"{source} -> {dest} goes up or sideways (in {', '.join(sorted(modules))})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent, help="the package folder")
    args = parser.parse_args(argv)
    edges = imports(args.root)
    graph: dict[str, set[str]] = defaultdict(set)
    for source, dest in edges:
        if "." not in source:
            graph[source].add(dest)
    for rank, units in enumerate(LAYERS):
        for unit in units:
            print(f"{rank:2d} {unit:22s} -> {', '.join(sorted(graph.get(unit, ()))) or '-'}")
    problems = violations(edges)
    for line in problems:
        print(f"layer violation: {line}", file=sys.stderr)
    circles = cycles(module_imports(args.root))
    for group in circles:
        print(f"import cycle: {' -> '.join([*group, group[0]])}", file=sys.stderr)
    print(f"{len(edges)} imports between {len(RANK)} units; {len(problems)} violations; {len(circles)} import cycles")
    return 1 if problems or circles else 0


if __name__ == "__main__":
    sys.exit(main())
