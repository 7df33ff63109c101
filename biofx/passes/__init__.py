"""Graph passes, one per file, run in a fixed order by :func:`run_passes`.

Each pass takes the GraphModule and the planned :class:`~biofx.passes.plan.PlannedLayer` s,
rewrites the graph, tags every node it inserts (``node.meta["custom"]["biofx"]``) and
returns the nodes it inserted (:class:`PassRecord`). Shared graph helpers are in
:mod:`biofx.passes.utils`.
"""

from .activity_probe import activity_probe_pass
from .attach_state import attach_state_pass
from .dale import dale_pass
from .grad_nodes import grad_nodes_pass
from .inline_layers import inline_layers_pass
from .manager import PASSES, PassRecord, run_passes
from .plan import PlannedLayer, plan_layers
from .weight_split import weight_split_pass

__all__ = [
    "PASSES",
    "PassRecord",
    "run_passes",
    "PlannedLayer",
    "plan_layers",
    "inline_layers_pass",
    "attach_state_pass",
    "dale_pass",
    "grad_nodes_pass",
    "weight_split_pass",
    "activity_probe_pass",
]
