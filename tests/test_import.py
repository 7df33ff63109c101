"""``import biofx`` stays light: the optional parts load on first use, the public names still resolve."""

import subprocess
import sys

import pytest

import biofx
from biofx import cli

OPTIONAL = ("networkx", "matplotlib", "graphviz", "transformers", "torch._dynamo", "sklearn")
# Parts of torch that biofx needs for sharded models only, costing more than the rest of biofx:
# torch.distributed.tensor (about 0.5 s) pulls in symbolic_shapes and sympy.
HEAVY_TORCH = ("torch.distributed.tensor", "torch.fx.experimental.symbolic_shapes", "sympy")
# biofx's names load on first use; this loads all of them but the drawing (what ``import biofx``
# loaded when it was eager), and the submodules that were attributes of biofx then.
LOAD_ALL = """
import biofx
for name in biofx.__all__:
    if name not in ("draw", "to_networkx"):
        getattr(biofx, name)
import biofx.hooks, biofx.kernels, biofx.bio_config, biofx.bio_converter, biofx.bio_module
"""


def _modules_after(code: str, watched: tuple[str, ...] = OPTIONAL) -> set[str]:
    """The ``watched`` modules loaded by ``code`` in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {watched!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_import_biofx_loads_no_optional_dependency():
    assert _modules_after(LOAD_ALL) == set()
    # nor the heavy parts of torch, beyond what ``import torch`` itself loads (none of them, on torch 2.13)
    assert _modules_after(LOAD_ALL, HEAVY_TORCH) <= _modules_after("import torch", HEAVY_TORCH)


def test_version_does_not_import_torch():
    """``biofx --version`` (``biofx.cli:main``) and ``python -m biofx --version`` answer without torch."""
    probe = """
import runpy, sys
sys.argv = ["biofx", "--version"]
try:
    runpy.run_module("biofx", run_name="__main__", alter_sys=True)  # python -m biofx --version
except SystemExit as exit_:
    assert exit_.code == 0, exit_.code
print("torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"biofx {cli.version()}", "False"]


def test_drawing_loads_networkx_on_first_use():
    assert _modules_after("from biofx import draw, to_networkx") == {"networkx"}


def test_every_public_name_resolves_and_is_listed():
    for name in biofx.__all__:
        assert getattr(biofx, name) is not None, name
    assert set(biofx.__all__) <= set(dir(biofx))
    assert callable(biofx.summary)  # the function, not the submodule of the same name
    assert biofx.draw.__module__ == "biofx.viz" and biofx.BioConverter.__module__ == "biofx.compat"
    with pytest.raises(AttributeError, match="module 'biofx' has no attribute 'nope'"):
        biofx.nope


def _imports_of_package() -> dict[str, set[str]]:
    """``module -> biofx modules it imports`` (any import statement, also inside functions)."""
    import ast
    from pathlib import Path

    root = Path(biofx.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
                candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            # a module's own packages are imported before it anyway: not an edge
            edges |= {c for c in candidates if c in modules and not f"{name}.".startswith(f"{c}.")}
        graph[name] = edges
    return graph


def test_the_package_import_graph_has_no_cycle():
    graph = _imports_of_package()
    assert "biofx.pipeline" in graph["biofx.transform"] and "biofx.transform" not in graph["biofx.pipeline"]
    state, stack = {}, []  # depth-first search: a back edge is a cycle

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                cycle = stack[stack.index(other):] + [other]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if other not in state:
                visit(other)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
