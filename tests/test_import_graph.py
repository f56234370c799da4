"""The package's import graph (read from the source with ast, nothing imported): no cycle, and
imports only downward: kernel core < model layer (nn < snn < convert < io) < app."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "na_kernels"
MODEL_LAYERS = ("nn", "snn", "convert", "io")  # each may import only the ones before it
UPPER = MODEL_LAYERS + ("app",)


def _modules():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("na_kernels",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name, path, modules):
    """The na_kernels modules that ``name`` imports anywhere in its source (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
                if alias.name != "_C"
            ]  # the compiled extension
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path, _modules()) for name, path in _modules().items()}


def _layer(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in UPPER else "core"


def test_the_graph_is_read():
    # a parser that finds nothing would pass every rule below
    assert "na_kernels.snn.network" in GRAPH["na_kernels.convert.convert"]
    assert "na_kernels.nn.if_layer" in GRAPH["na_kernels.snn.network"]
    assert "na_kernels.app.train" in GRAPH["na_kernels.app.cli"]


def test_no_import_cycle():
    state, cycles = {}, []

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_downward(module):
    order = ("core",) + UPPER
    layer = _layer(module)
    upward = sorted(t for t in GRAPH[module] if order.index(_layer(t)) > order.index(layer))
    if module == "na_kernels.nn":  # re-exports the layers above lazily, by name, never by import
        assert all(_layer(t) in ("core", "nn") for t in GRAPH[module])
    assert not upward, f"{module} ({layer}) imports {upward}, a layer above it"
