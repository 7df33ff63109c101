"""The pass manager: the fixed order of the rewrite passes.

A pass is a function ``(gm, layers) -> inserted nodes``: it rewrites ``gm.graph`` for the
planned layers (:class:`~biofx.passes.plan.PlannedLayer`) and tags every node it inserts.
:func:`run_passes` runs them in :data:`PASSES` order, then lints and recompiles once.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch.fx as fx

from .activity_probe import activity_probe_pass
from .attach_state import attach_state_pass
from .dale import dale_pass
from .grad_nodes import grad_nodes_pass
from .inline_layers import inline_layers_pass
from .weight_split import weight_split_pass


@dataclasses.dataclass(frozen=True)
class PassRecord:
    """What one pass did: its name and the nodes it inserted (``bio_report.passes`` counts them).

    Not torch.fx's ``PassResult`` (a graph module and whether it changed): biofx's passes
    rewrite one graph module in place, so what is worth keeping is which nodes each inserted.
    """

    name: str
    inserted: list


#: The passes in the order they run. Weight nodes are chained in this order
#: (weight → dale → fuzzy → volume → layer), output nodes likewise (layer → split → probe).
PASSES: tuple[Callable, ...] = (
    inline_layers_pass,
    attach_state_pass,
    dale_pass,
    grad_nodes_pass,
    weight_split_pass,
    activity_probe_pass,
)


def run_passes(gm: fx.GraphModule, layers: list) -> list[PassRecord]:
    """Run every pass, then lint and recompile once."""
    records = [PassRecord(bio_pass.__name__, bio_pass(gm, layers)) for bio_pass in PASSES]
    gm.graph.lint()
    gm.recompile()
    return records
