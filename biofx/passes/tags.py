"""Bio tags on graph nodes.

Tags live in ``node.meta["custom"]["biofx"]``: Dynamo copies the ``custom`` slot onto the
nodes of compiled graphs, while other top-level meta keys are dropped.
"""

from __future__ import annotations

from typing import Optional

import torch.fx as fx

CUSTOM = "custom"
TAG = "biofx"

# mechanism names used in tags
LAYER = "layer"
STATE = "state"
DALE = "dale"
FUZZY = "fuzzy"
VOLUME = "volume"
WEIGHT_SPLIT = "weight_split"
ACTIVITY = "activity"


def tag(node: fx.Node, mechanism: str, layer: str, pass_name: str, **extra) -> fx.Node:
    """Tag ``node`` as inserted by ``pass_name`` for ``mechanism`` of ``layer``."""
    node.meta.setdefault(CUSTOM, {})[TAG] = {"mechanism": mechanism, "layer": layer, "pass": pass_name, **extra}
    return node


def get_tag(node: fx.Node) -> Optional[dict]:
    """The node's bio tag, or ``None`` for a node biofx did not insert or replace."""
    return node.meta.get(CUSTOM, {}).get(TAG)


def copy_source_meta(source: fx.Node, target: fx.Node) -> None:
    """Give ``target`` the source location and module stack of the node it replaces."""
    for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
        if key in source.meta:
            target.meta[key] = source.meta[key]
