"""Bio tags on graph nodes.

Tags live in ``node.meta["custom"]["biofx"]``: Dynamo copies the ``custom`` slot onto the
nodes of compiled graphs, while other top-level meta keys are dropped.
"""

from __future__ import annotations

from typing import Optional

import torch.fx as fx

from .. import registry

CUSTOM = "custom"
TAG = "biofx"

#: The tag of a converted layer's own nodes (weight, bias, the functional call): not a mechanism.
LAYER = "layer"
# The mechanisms with graph nodes; their names come from the registry (biofx.registry).
DALE = registry.DALE.name
FUZZY = registry.FUZZY.name
VOLUME = registry.VOLUME.name
WEIGHT_SPLIT = registry.WEIGHT_SPLIT.name
ACTIVITY = registry.ACTIVITY.name


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
