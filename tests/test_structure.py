"""The package's shape, read from its source with ``ast`` (no module is imported).

The design (``docs/architecture.md``) promises small units and inward dependencies. This test
keeps the promise honest:

- no function body in ``syncengine/`` over 60 lines (a body that is one statement, such as an
  SQL script, is data rather than logic and is allowed);
- no class over 400 lines;
- no import cycle between modules of ``syncengine/``;
- ``core/`` and ``protocol/`` (the pure layers) import no I/O module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "syncengine"
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 400
PURE_LAYERS = ("syncengine.core", "syncengine.protocol")
IO_MODULES = frozenset(
    {
        "asyncio",
        "time",
        "os",
        "socket",
        "ssl",
        "threading",
        "selectors",
        "subprocess",
        "sqlite3",
        "sqlite_utils",
        "httpx",
        "websockets",
        "starlette",
        "uvicorn",
        "anyio",
        "trio",
    }
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        out[_module_name(path)] = (path, ast.parse(path.read_text(), filename=str(path)))
    return out


SOURCES = _sources()


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring is documentation, not logic
    if len(body) <= 1:
        return 0  # one statement (an SQL script, a table): data, not logic
    return int(body[-1].end_lineno or 0) - body[0].lineno + 1


def _imports(module: str, tree: ast.Module) -> set[str]:
    """Absolute names this module imports (relative imports resolved).

    ``from package import name`` depends on the submodule ``package.name`` when there is one,
    otherwise on ``package`` itself.
    """
    names: set[str] = set()
    is_package = SOURCES[module][0].name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & SOURCES.keys()
            names.update(submodules or {base})
    return names


def _internal_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, (_, tree) in SOURCES.items():
        deps = {name for name in _imports(module, tree) if name in SOURCES and name != module}
        graph[module] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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


def test_no_function_over_60_lines() -> None:
    long = []
    for module, (_, tree) in SOURCES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = _body_lines(node)
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}:{node.name} ({lines} lines)")
    assert not long, "functions over 60 lines: " + ", ".join(long)


def test_no_class_over_400_lines() -> None:
    big = []
    for module, (_, tree) in SOURCES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                lines = int(node.end_lineno or 0) - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    big.append(f"{module}:{node.name} ({lines} lines)")
    assert not big, "classes over 400 lines: " + ", ".join(big)


def test_no_import_cycles() -> None:
    assert _cycles(_internal_graph()) == []


@pytest.mark.parametrize("layer", PURE_LAYERS)
def test_pure_layers_import_no_io(layer: str) -> None:
    offenders = []
    for module, (_, tree) in SOURCES.items():
        if module != layer and not module.startswith(layer + "."):
            continue
        for name in _imports(module, tree):
            if name.split(".")[0] in IO_MODULES:
                offenders.append(f"{module} imports {name}")
    assert not offenders, "; ".join(offenders)


def test_the_checks_can_fail() -> None:
    # The checks above must see what they look for: a cycle and a long body drawn here.
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    long_function = "def f():\n" + "".join(f"    x{i} = {i}\n" for i in range(61))
    node = ast.parse(long_function).body[0]
    assert isinstance(node, ast.FunctionDef) and _body_lines(node) == 61
    script = 'def g():\n    """Doc."""\n    run("""\n' + "x\n" * 100 + '""")\n'
    node = ast.parse(script).body[0]
    assert isinstance(node, ast.FunctionDef) and _body_lines(node) == 0
