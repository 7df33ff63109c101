"""The functions bio graph nodes call.

Forward-pass nodes (``dale_weight``, ``dale_inhibit``, ``weight_split``) are plain tensor functions.
Gradient nodes (``fuzzy_grad``, ``volume_grad``) are identities in the forward pass whose
backward scales the weight gradient; they are ``autograd.Function`` s, which Dynamo traces
into the compiled forward and backward graphs (no graph break, fused by Inductor).
All are graph leaves (``biofx._leaf``), so re-tracing a bio model keeps them as single nodes.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import registry, rng, sharding
from ._leaf import graph_leaf

from .mechanisms import dale, fuzzy, volume

__all__ = ["dale_weight", "dale_inhibit", "fuzzy_grad", "volume_grad", "weight_split"]


@graph_leaf(registry.DALE.name)
def dale_weight(weight: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Dale parametrization: ``s·|w|``, one sign per presynaptic unit."""
    return dale.constrain(weight, sign)


@graph_leaf(registry.DALE.name)
def dale_inhibit(weight: torch.Tensor, w_ei: torch.Tensor, w_ie: torch.Tensor, out_axis: int) -> torch.Tensor:
    """DANN's interneurons: ``W − |W_EI|·|W_IE|``."""
    return dale.inhibit(weight, w_ei, w_ie, out_axis)


class _FuzzyGrad(torch.autograd.Function):
    @staticmethod
    def forward(weight, multipliers, key, law):
        return weight.view_as(weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, multipliers, key, ctx.law = inputs
        ctx.save_for_backward(multipliers, key)

    @staticmethod
    def backward(ctx, grad):
        multipliers, key = ctx.saved_tensors
        if ctx.law is not None:  # fuzzy_lr_storage="counter": f = f₀·d^c, from the counts
            seed = rng.stream_seed(key, key.new_zeros(()), rng.FUZZY)
            multipliers = fuzzy.values(fuzzy.Recomputed(multipliers, seed, ctx.law)).view_as(grad)
        return fuzzy.apply(grad, multipliers), None, None, None


class _VolumeGrad(torch.autograd.Function):
    @staticmethod
    def forward(weight, key, step, base_lr, stability_factor, lr_variability):
        return weight.view_as(weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        weight, key, step, ctx.base_lr, ctx.stability_factor, ctx.lr_variability = inputs
        ctx.save_for_backward(weight, key, step)

    @staticmethod
    def backward(ctx, grad):
        weight, key, step = ctx.saved_tensors
        seed = volume.seed(key, step)
        scaled = volume.scale(grad, weight, seed, ctx.base_lr, ctx.stability_factor, ctx.lr_variability)
        return scaled, None, None, None, None, None


@graph_leaf(registry.FUZZY.name)
def fuzzy_grad(
    weight: torch.Tensor, multipliers: torch.Tensor, key: Optional[torch.Tensor] = None, law: Optional[tuple] = None
) -> torch.Tensor:
    """Identity forward; backward ``g ← g·f`` (synaptic diversity).

    ``multipliers`` is f, or with ``law`` (``fuzzy_lr_storage="counter"``) the counts c of
    ``f = f₀·d^c``, f₀ recomputed from the layer's ``key``
    (:class:`~biofx.mechanisms.fuzzy.Recomputed`). Under FSDP the weight is whole here and the
    multipliers sharded: they are gathered (:func:`biofx.sharding.full`).
    """
    return _FuzzyGrad.apply(weight, sharding.full(multipliers), key, law)


@graph_leaf(registry.VOLUME.name)
def volume_grad(
    weight: torch.Tensor,
    key: torch.Tensor,
    step: torch.Tensor,
    base_lr: float,
    stability_factor: float,
    lr_variability: float,
) -> torch.Tensor:
    """Identity forward; backward ``g ← g·|N(μ, lr_variability·μ)|``, ``μ = base_lr·exp(−s·|w|/(|w|+1))``."""
    return _VolumeGrad.apply(weight, key, step, base_lr, stability_factor, lr_variability)


@graph_leaf(registry.WEIGHT_SPLIT.name)
def weight_split(output: torch.Tensor, gamma: int, dim: int) -> torch.Tensor:
    """Multi-synaptic connectivity: sum groups of Γ consecutive units, give each member the sum.

    Equal to ``repeat_interleave(view(..., C/Γ, Γ).sum(-1), Γ)`` along ``dim``.
    """
    dim = dim % output.dim()
    channels = output.shape[dim]
    grouped = output.unflatten(dim, (channels // gamma, gamma))
    summed = grouped.sum(dim + 1, keepdim=True)
    return summed.expand_as(grouped).flatten(dim, dim + 1)
