"""Pass: gradient nodes for the automatic multiplicative mechanisms.

Only for layers with ``acts_on="gradient"`` (with ``"update"``, the default, fuzzy and volume
scale the optimizer's update at the step instead: :mod:`biofx.mechanisms.update`), and not
for a weight that a non-bio module also reads (a tied embedding): a node here would scale
only the bio layer's share of its gradient, so the step hook scales the whole ``.grad``.
For a layer with automatic ``fuzzy`` (:data:`biofx.registry.FUZZY`), ``w`` → ``fuzzy_grad(w, fuzzy_lr)``
(with ``fuzzy_lr_storage="counter"``: ``fuzzy_grad(w, fuzzy_dampenings, rng_key, law)``);
with ``volume``, → ``volume_grad(w, rng_key, step, base_lr, stability_factor,
lr_variability)``. Both are identities in the forward pass; in the backward pass they scale
the weight gradient (``g·f`` and ``g·|N(μ, lr_variability·μ)|``). Being linear in g, they are
exact under gradient accumulation and DDP averaging.
"""

from __future__ import annotations

import torch.fx as fx

from .. import ops, registry
from . import tags
from .utils import chain_weight, state_attr

NAME = __name__.rpartition(".")[2]  # the tags' "pass": this module's name


def grad_nodes_pass(gm: fx.GraphModule, layers: list) -> list:
    inserted = []
    for layer in (l for l in layers if l.config.acts_on == "gradient"):
        if layer.state.shared_with:
            continue  # a tied weight: scaled on its whole .grad at the step (biofx.runtime.before_step)
        cfg = layer.config
        for site in layer.sites:
            if registry.FUZZY.is_on(cfg):

                def make_fuzzy(graph, weight):
                    state = layer.state
                    if cfg.fuzzy_lr_storage == "buffer":
                        multipliers = graph.get_attr(state_attr("fuzzy_lr"))
                        return [multipliers, graph.call_function(ops.fuzzy_grad, (weight, multipliers))]
                    counts = graph.get_attr(state_attr("fuzzy_dampenings"))
                    key = graph.get_attr(state_attr("rng_key"))
                    args = (weight, counts, key, state.fuzzy_law)
                    return [counts, key, graph.call_function(ops.fuzzy_grad, args)]

                for node in chain_weight(gm, layer, site, make_fuzzy):
                    inserted.append(tags.tag(node, tags.FUZZY, layer.path, NAME))
            if registry.VOLUME.is_on(cfg):

                def make_volume(graph, weight):
                    key = graph.get_attr(state_attr("rng_key"))
                    step = graph.get_attr(state_attr("step"))
                    args = (weight, key, step, cfg.base_lr, cfg.stability_factor, cfg.lr_variability)
                    return [key, step, graph.call_function(ops.volume_grad, args)]

                for node in chain_weight(gm, layer, site, make_volume):
                    inserted.append(tags.tag(node, tags.VOLUME, layer.path, NAME))
    return inserted
