"""Pass: give the layer its :class:`~biofx.state.BioSynapses` state module.

The state module is the child ``biofx_state`` of the module that owns the graph (the bio
layer itself), so the original parameter names are untouched and all bio state is in
``state_dict()`` under ``<layer>.biofx_state.``.

One Parameter has one state: layers that share a weight (tied layers) share the first one's
state module (``layer.state``, set by the pipeline before this pass), so every mechanism acts
on the weight's whole gradient once per step. A weight also read by a module that is not a
bio layer (a tied embedding) is marked (``layer.shared_with``): its gradient nodes would see
only the bio layers' share of the gradient, so with ``acts_on="gradient"`` its factors act on
``.grad`` at the optimizer step instead (see :func:`biofx.runtime.before_step`).

Attaching the state also initializes what it constrains: a layer with Dale's principle gets
the balanced Dale initialization of its weight (``BioSynapses.dalian_network_initialization``,
keyed by the layer's seed) here, so the later passes and the build only rewrite and assemble.
On the meta device the weight has no values yet: ``reset_bio_state()`` initializes it later.
"""

from __future__ import annotations

import torch.fx as fx

from .. import registry
from ..state import BioSynapses
from .utils import STATE_ROOT


def attach_state_pass(gm: fx.GraphModule, layers: list) -> list:
    for layer in layers:
        if layer.state is None:
            layer.state = BioSynapses(
                layer.path, layer.module, layer.kind, layer.config, layer.index, layer.total, layer.seed
            )
            layer.state.shared_with = tuple(layer.shared_with)
            if registry.DALE.is_on(layer.config) and not layer.module.weight.is_meta:  # meta: in reset_bio_state()
                layer.state.dalian_network_initialization()
        gm.add_module(STATE_ROOT, layer.state)
    return []  # a state module, no nodes: the passes after this one read it through get_attr
