"""Layer kinds biofx converts, in one registry.

A :class:`LayerKind` says where a layer's synapses are: which weight axis is postsynaptic
(output units) and presynaptic (input units), which axis of the layer's output holds the
output units, and how to call the layer functionally with a (possibly rewritten) weight.
Register a new kind with :func:`register_layer_kind`; the passes do not change.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ._leaf import graph_leaf

__all__ = ["LayerKind", "register_layer_kind", "kind_of", "LAYER_KINDS", "transposed_linear"]


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """How biofx sees one layer type.

    Attributes:
        name: short name used in reports and tags.
        module_type: the ``nn.Module`` subclass.
        out_axis: weight axis of the output (postsynaptic) units.
        in_axis: weight axis of the input (presynaptic) units.
        channel_dim: axis of the output units in the layer's output tensor.
        emit: ``emit(graph, x, weight, bias, module) -> node`` inserts the functional call.
        limits: ``limits(module) -> reason or None``: why this layer cannot be converted.
    """

    name: str
    module_type: type
    out_axis: int
    in_axis: int
    channel_dim: int
    emit: Callable[[fx.Graph, fx.Node, fx.Node, Optional[fx.Node], nn.Module], fx.Node]
    limits: Optional[Callable[[nn.Module], Optional[str]]] = None

    def __reduce__(self):  # pickled by its layer type: its emit functions are not importable
        return (kind_for_type, (self.module_type,))

    def out_features(self, module: nn.Module) -> int:
        return module.weight.shape[self.out_axis]

    def unsupported(self, module: nn.Module) -> Optional[str]:
        """Why ``module`` is left plain, or ``None`` when it can be converted."""
        return self.limits(module) if self.limits is not None else None


LAYER_KINDS: dict[type, LayerKind] = {}


def register_layer_kind(kind: LayerKind) -> LayerKind:
    """Add (or replace) the kind for ``kind.module_type``."""
    LAYER_KINDS[kind.module_type] = kind
    return kind


def kind_of(module: nn.Module) -> Optional[LayerKind]:
    """The registered kind of ``module`` (most specific class first), or ``None``."""
    return kind_for_type(type(module))


def kind_for_type(module_type: type) -> Optional[LayerKind]:
    """The registered kind of a module class (most specific class first), or ``None``."""
    for cls in module_type.__mro__:
        if cls in LAYER_KINDS:
            return LAYER_KINDS[cls]
        lazy = _LAZY_KINDS.get((cls.__module__, cls.__name__))
        if lazy is not None:
            return register_layer_kind(lazy(cls))
    return None


def _emit_linear(graph, x, weight, bias, module):
    return graph.call_function(F.linear, (x, weight, bias))


def _conv_emitter(conv_fn: Callable) -> Callable:
    def emit(graph, x, weight, bias, module):
        padding = module.padding
        if module.padding_mode != "zeros":
            x = graph.call_function(
                F.pad, (x, module._reversed_padding_repeated_twice), {"mode": module.padding_mode}
            )
            padding = 0
        return graph.call_function(
            conv_fn, (x, weight, bias, module.stride, padding, module.dilation, module.groups)
        )

    return emit


register_layer_kind(LayerKind("Linear", nn.Linear, out_axis=0, in_axis=1, channel_dim=-1, emit=_emit_linear))
for _dims, _cls, _fn in ((1, nn.Conv1d, F.conv1d), (2, nn.Conv2d, F.conv2d), (3, nn.Conv3d, F.conv3d)):
    register_layer_kind(
        LayerKind(f"Conv{_dims}d", _cls, out_axis=0, in_axis=1, channel_dim=1, emit=_conv_emitter(_fn))
    )


def _conv_transpose_emitter(conv_fn: Callable) -> Callable:
    def emit(graph, x, weight, bias, module):
        args = (x, weight, bias, module.stride, module.padding, module.output_padding, module.groups, module.dilation)
        return graph.call_function(conv_fn, args)

    return emit


def _grouped_transpose(module: nn.Module) -> Optional[str]:
    # weight [in, out/groups, k...]: output unit o of group g sits at axis 1 index o - g*out/groups,
    # so the per-output-unit state (activity, scaling, ACTIVITY rows) would need a group map
    if module.groups > 1:
        return f"grouped transposed convolution (groups={module.groups}) is not supported; it stays plain"
    return None


for _dims, _cls, _fn in (
    (1, nn.ConvTranspose1d, F.conv_transpose1d),
    (2, nn.ConvTranspose2d, F.conv_transpose2d),
    (3, nn.ConvTranspose3d, F.conv_transpose3d),
):
    # weight [in, out/groups, k...]: presynaptic units on axis 0, postsynaptic on axis 1
    register_layer_kind(
        LayerKind(
            f"ConvTranspose{_dims}d", _cls, out_axis=1, in_axis=0, channel_dim=1,
            emit=_conv_transpose_emitter(_fn), limits=_grouped_transpose,
        )
    )


@graph_leaf("layer")
def transposed_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``x @ weight + bias`` for a weight stored [in, out] (Hugging Face's GPT-2 ``Conv1D``).

    Computed as ``Conv1D`` does (``addmm`` on the 2-D view), so outputs are bit-identical.
    """
    if bias is None:
        return x.matmul(weight)
    out = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight)
    return out.view(*x.shape[:-1], weight.shape[-1])


def _emit_transposed(graph, x, weight, bias, module):
    return graph.call_function(transposed_linear, (x, weight, bias))


# Kinds of optional libraries, registered when their class is first seen (no import cost).
_LAZY_KINDS: dict[tuple[str, str], Callable[[type], LayerKind]] = {
    ("transformers.pytorch_utils", "Conv1D"): lambda cls: LayerKind(
        "HFConv1D", cls, out_axis=1, in_axis=0, channel_dim=-1, emit=_emit_transposed
    ),
}
