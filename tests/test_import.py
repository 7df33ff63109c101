"""``import biofx`` stays light: the optional parts load on first use, the public names still resolve."""

import subprocess
import sys

import pytest

import biofx

OPTIONAL = ("networkx", "matplotlib", "graphviz", "transformers", "torch._dynamo", "sklearn")


def _modules_after(code: str) -> set[str]:
    """The optional modules loaded by ``code`` in a fresh interpreter."""
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_import_biofx_loads_no_optional_dependency():
    assert _modules_after("import biofx") == set()


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
