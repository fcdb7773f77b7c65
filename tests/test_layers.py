"""The package's layers, read from its source: imports point strictly downward (application ->
models -> nn -> ops -> kernels), with no circle, function-level imports included; and no function
outside bench/ is longer than 80 lines."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Module prefix -> layer height; an import may only go to the same height or lower.
LAYERS = [("dlsn.kernels", 0), ("dlsn._C", 0), ("dlsn.ops", 1), ("dlsn.nn", 2), ("dlsn.models", 3), ("dlsn.sr", 4),
          ("dlsn", 5)]
MAX_FUNCTION_LINES = 80


def _sources():
    """{module name: path} of every module of the package, the kernels as installed (dlsn.kernels)."""
    modules = {}
    for path in sorted((ROOT / "dlsn").rglob("*.py")) + sorted((ROOT / "kernels").glob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[0] == "kernels":
            parts = ["dlsn"] + parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _layer(module):
    return next(height for prefix, height in LAYERS if module == prefix or module.startswith(prefix + "."))


def _imports(module, path, modules):
    """The package modules `module` imports, anywhere in its file (functions included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import name` imports the submodule `name` when there is one.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(name for name in names if name == "dlsn" or name.startswith("dlsn."))
    found.discard(module)
    return found


@pytest.fixture(scope="module")
def graph():
    modules = _sources()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def test_the_tree_shows_the_layers():
    modules = _sources()
    for layer in ("dlsn.ops", "dlsn.nn", "dlsn.models", "dlsn.sr", "dlsn.kernels"):
        assert layer in modules, layer
    # Every module lives in a layer package (the package's own __init__/__main__ are the top, with
    # dlsn.spandrel: an integration other tools import, above the models it registers).
    loose = [m for m in modules if _layer(m) == 5 and m not in ("dlsn", "dlsn.__main__", "dlsn.spandrel")]
    assert not loose, loose


def test_imports_point_downward(graph):
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets if _layer(b) > _layer(a)]
    assert not upward, upward


def test_no_import_circle(graph):
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_checker_sees_upward_and_circular_imports(tmp_path):
    """The two checks above can fail: a model importing the application, and a pair importing each other."""
    upward = {"dlsn.models.x": {"dlsn.sr.config"}}
    assert [f"{a} -> {b}" for a, t in upward.items() for b in t if _layer(b) > _layer(a)]
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle({"dlsn.sr.a": {"dlsn.sr.b"}, "dlsn.sr.b": {"dlsn.sr.a"}})
    hidden = tmp_path / "hidden.py"
    hidden.write_text("def f():\n    from ..sr import config\n")
    assert _imports("dlsn.models.hidden", hidden, {"dlsn.sr.config": hidden}) == {"dlsn.sr.config"}


def test_no_function_over_80_lines():
    paths = [p for folder in ("dlsn", "kernels", "tests") for p in sorted((ROOT / folder).rglob("*.py"))]
    paths.append(ROOT / "setup.py")
    long = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long
