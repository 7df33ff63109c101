"""Pass: give every bio layer its :class:`~biofx.state.BioSynapses` state module.

The state modules live in ``gm.biofx_state`` (an ``nn.ModuleDict``) under collision-free
keys derived from the layer names, so the original parameter names are untouched and all
bio state is in ``state_dict()`` under ``biofx_state.``.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from ..state import BioSynapses

STATE_ROOT = "biofx_state"


def state_key(name: str, taken: set) -> str:
    """A ModuleDict key for layer ``name``: dots become underscores, clashes get a suffix."""
    base = name.replace(".", "_") or "root"
    key, n = base, 1
    while key in taken:
        key, n = f"{base}_{n}", n + 1
    return key


def attach_state_pass(gm: fx.GraphModule, layers: list) -> list:
    if not hasattr(gm, STATE_ROOT):
        gm.add_module(STATE_ROOT, nn.ModuleDict())
    states = getattr(gm, STATE_ROOT)
    for layer in layers:
        layer.state_key = state_key(layer.name, set(states.keys()))
        states[layer.state_key] = BioSynapses(
            layer.name, layer.module, layer.kind, layer.config, layer.index, len(layers), layer.seed
        )
    return []  # state modules, no nodes: the passes after this one read them through get_attr


def state_attr(layer, attr: str) -> str:
    """The ``get_attr`` target of a layer's state buffer or submodule."""
    return f"{STATE_ROOT}.{layer.state_key}.{attr}" if attr else f"{STATE_ROOT}.{layer.state_key}"
