"""The package's layering, read from its own source: no import cycles, and no module importing a higher layer.

Every import counts, function-level ones included (they hide cycles rather than remove them). The
layers, low to high: the leaf helpers, then audio -> datasets -> encoders -> bank -> probes -> train ->
sweep -> report -> predict -> export -> demo/bench -> cli, and the package's top level (the public API) above all.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "patchprobe"  # parsed, not imported
TOP = PACKAGE.name

LAYERS = [
    {"_version", "errors", "_io", "_lock", "registry", "_progress"},
    {"audio"},
    {"datasets"},
    {"encoders"},
    {"bank"},
    {"probes"},
    {"train"},
    {"sweep"},
    {"report"},
    {"predict"},
    {"export"},
    {"demo", "bench", "bench_plan"},
    {"cli"},
    {TOP},  # patchprobe/__init__.py: re-exports the public API, so it sits on top
]
LAYER_OF = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = [TOP, *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `module` imports anywhere in its body (a package import counts as its __init__)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            names = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        targets.update(name for name in names if name in known and name != module)
    return targets


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYER_OF[parts[1] if len(parts) > 1 else TOP]


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {module: imported(module, path, known) for module, path in known.items()}


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in modules() if (m.split(".")[1] if "." in m else TOP) not in LAYER_OF)
    assert not unplaced, f"add these modules to a layer in tests/test_architecture.py: {unplaced}"


def test_no_module_imports_a_higher_layer():
    upward = [f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
              for module, targets in import_graph().items() for target in sorted(targets)
              if layer(target) > layer(module)
              # a sub-package's __init__ gathers its own modules; those may import each other freely
              and not target.startswith(module + ".")]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {module: {t for t in targets if not module.startswith(t + ".")}  # a module reading its own package's __init__
             for module, targets in import_graph().items()}
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(group) for group in cycles)


def test_the_checks_catch_a_cycle_and_an_upward_import():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer(f"{TOP}.bank.store") < layer(f"{TOP}.train.run") < layer(f"{TOP}.cli") < layer(TOP)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of more than one node that reach each other (Tarjan), each sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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
    return groups
