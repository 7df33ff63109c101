"""biofx: biological synapse mechanisms for any PyTorch model, as a torch.fx compiler pass.

>>> import torch.nn as nn, biofx
>>> bio = biofx.transform(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
>>> [layer.layer_name for layer in bio.bio_layers()]
['0', '2']
"""

from .config import DEFAULT_BIO_CONFIG, BioConfig, ConfigMap, Distribution
from .layers import LayerKind, register_layer_kind
from .model import BioGraphModule
from .state import BioSynapses
from .tracing import BioTracer, TraceError
from .transform import TransformReport, transform
from .compat import BioConverter
from .viz import draw, to_networkx
from .summary import Summary, summary

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "BioConfig",
    "ConfigMap",
    "Distribution",
    "DEFAULT_BIO_CONFIG",
    "transform",
    "TransformReport",
    "BioGraphModule",
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
