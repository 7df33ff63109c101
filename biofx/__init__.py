"""biofx: biological synapse mechanisms for any PyTorch model, as a torch.fx compiler pass.

>>> import torch.nn as nn, biofx
>>> bio = biofx.transform(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
>>> [type(layer).__name__ for layer in bio]
['BioLinear', 'ReLU', 'BioLinear']
"""

import importlib
import sys

from .config import DEFAULT_BIO_CONFIG, BioConfig, ConfigMap, Distribution
from .layers import LayerKind, register_layer_kind
from .bio_layer import BioLayer
from .model import BioMethods
from .state import BioSynapses
from .tracing import BioTracer, TraceError
from .transform import TransformReport, transform
# ``summary`` stays eager: the submodule of the same name would otherwise shadow the function
# once anything imports ``biofx.summary`` (the module is cheap: it needs only biofx.model).
from .summary import Summary, summary
from .compat import BioConverter, bio_config, bio_converter, bio_module
from . import hooks, kernels  # documented alias modules, attributes of biofx as they always were

# The reference's module paths, as the migration guide imports them (``from biofx.bio_config
# import BioConfig``): the modules of biofx.compat, registered under the top-level names.
for _module in (bio_config, bio_converter, bio_module):
    sys.modules[f"{__name__}.{_module.__name__.rpartition('.')[2]}"] = _module
del _module

# Public names whose modules load on first use: ``biofx.viz`` needs networkx, which alone
# costs about as much as the rest of biofx. ``from biofx import draw`` works as before.
_LAZY = {"to_networkx": "viz", "draw": "viz"}

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


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
