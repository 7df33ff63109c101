"""Pass: give every bio layer its :class:`~biofx.state.BioSynapses` state module.

The state modules live in ``gm.biofx_state`` (an ``nn.ModuleDict``) under collision-free
keys derived from the layer names, so the original parameter names are untouched and all
bio state is in ``state_dict()`` under ``biofx_state.``.

One Parameter has one state: layers that share a weight (tied layers) share the first one's
state module, so every mechanism acts on the weight's whole gradient once per step. A weight
also read by a module that is not a bio layer (a tied embedding) is marked: its gradient
nodes would see only the bio layers' share of the gradient, so with ``acts_on="gradient"``
its factors act on ``.grad`` at the optimizer step instead (see ``BioSynapses.before_step``).

Attaching the state also initializes what it constrains: a layer with Dale's principle gets
the balanced Dale initialization of its weight (``BioSynapses.dalian_network_initialization``,
keyed by the layer's seed) here, so the later passes and ``build`` only rewrite and assemble.
On the meta device the weight has no values yet: ``reset_bio_state()`` initializes it later.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn as nn

from .. import registry
from ..state import BioSynapses
from .utils import STATE_ROOT


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
    owner: dict[int, str] = {}  # id(weight) -> state key
    outside = _readers_outside(gm, layers)
    for layer in layers:
        weight = layer.module.weight
        if id(weight) in owner:
            layer.state_key = owner[id(weight)]
            continue
        layer.state_key = state_key(layer.name, set(states.keys()))
        state = BioSynapses(layer.path, layer.module, layer.kind, layer.config, layer.index, layer.total, layer.seed)
        state.shared_with = tuple(outside.get(id(weight), ()))
        states[layer.state_key] = state
        owner[id(weight)] = layer.state_key
        if registry.DALE.is_on(layer.config) and not weight.is_meta:  # meta: in reset_bio_state()
            state.dalian_network_initialization()
    return []  # state modules, no nodes: the passes after this one read them through get_attr


def _readers_outside(gm: fx.GraphModule, layers: list) -> dict[int, list[str]]:
    """``id(weight) -> names`` of the modules other than bio layers that hold a bio weight."""
    bio_weights = {id(layer.module.weight) for layer in layers}
    bio_names = {layer.name for layer in layers}
    readers: dict[int, list[str]] = {}
    for name, module in gm.named_modules(remove_duplicate=False):
        if name in bio_names:
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in bio_weights:
                readers.setdefault(id(param), []).append(f"{name}.{param_name}" if name else param_name)
    return readers

