"""biofx: biological synapse mechanisms for any PyTorch model, as a torch.fx compiler pass.

>>> import torch.nn as nn, biofx
>>> bio = biofx.transform(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
>>> [type(layer).__name__ for layer in bio]
['BioLinear', 'ReLU', 'BioLinear']
"""

import importlib
import importlib.util
import sys
import types

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BioConfig",
    "ConfigMap",
    "Distribution",
    "DEFAULT_BIO_CONFIG",
    "transform",
    "TransformReport",
    "BioLayer",
    "BioMethods",
    "BioSynapses",
    "BioTracer",
    "TraceError",
    "BioConverter",
    "LayerKind",
    "register_layer_kind",
    "to_networkx",
    "draw",
    "summary",
    "Summary",
]

# ``import biofx`` loads nothing more, not even torch: each public name loads its module on first
# use (``from biofx import transform`` works as before), so ``biofx --version`` answers at once
# and ``biofx.draw`` alone pays for networkx. Public name -> the submodule that defines it:
_LAZY = {
    "BioConfig": "config",
    "ConfigMap": "config",
    "Distribution": "config",
    "DEFAULT_BIO_CONFIG": "config",
    "LayerKind": "layers",
    "register_layer_kind": "layers",
    "BioLayer": "bio_layer",
    "BioMethods": "model",
    "BioSynapses": "state",
    "BioTracer": "tracing",
    "TraceError": "tracing",
    "transform": "transform",
    "TransformReport": "transform",
    "summary": "summary",
    "Summary": "summary",
    "BioConverter": "compat",
    "to_networkx": "viz",
    "draw": "viz",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # a submodule (biofx.hooks, biofx.kernels, biofx.bio_config, ...), as when they loaded eagerly
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The module type of ``biofx``: ``biofx.transform`` and ``biofx.summary`` stay the functions.

    Loading a submodule sets it as an attribute of its package, and these two submodules have
    the names of the functions they define (once they loaded eagerly, before anything else).
    """

    def __setattr__(self, name: str, value) -> None:
        if _LAZY.get(name) == name and isinstance(value, types.ModuleType):
            return  # the submodule stays importable by its full name (sys.modules)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
