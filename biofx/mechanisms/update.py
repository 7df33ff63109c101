"""Per-weight learning rates on the optimizer's update (``BioConfig.acts_on = "update"``).

The paper scales the gradient, ``g ← g·f``. Under plain SGD that is a per-weight learning
rate, but an adaptive optimizer (Adam, RMSprop, Adagrad) divides each weight's step by its
own gradient scale, which cancels any fixed factor on g: fuzzy learning rates then change
nothing. Scaling the update instead, at the optimizer step,

    w ← w₀ + f·v·(w₁ − w₀)        (w₀ before the step, w₁ after it)

gives every weight the learning rate ``f·v·lr`` whatever the optimizer (f the fuzzy
multiplier, v the volume-dependent factor of w₀, each 1 when not automatic). It is exact
under gradient accumulation and DDP, since it runs after both, on the same numbers on every
rank.

For plain SGD (no momentum, no weight decay) the update is ``−lr·g``, so scaling g by
``f·v`` before the step takes the same step (without the rounding of ``w₁ − w₀``) and saves
keeping w₀: :func:`scale_grad_for_step_` does that, and the step hooks use it for such an
optimizer.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..tiered_compile import flat_views, fused
from . import crystallize, volume


@fused
def scale_flat_step_(
    before: torch.Tensor,
    after: torch.Tensor,
    grad: torch.Tensor,
    multipliers: torch.Tensor,
    key: torch.Tensor,
    step: torch.Tensor,
    fuzzy: bool,
    volume_args: Optional[tuple],
    crystal_args: Optional[tuple],
    offset: int = 0,
    mean_magnitude: Optional[torch.Tensor] = None,
) -> None:
    """One pass over a layer's flat weight, in place: ``after ← w₀ + f·v·(w₁ − w₀)``.

    Computed in float32, stored in ``after``'s dtype; with ``crystal_args = (crystal_thresh,
    dampening_factor)`` the multipliers are then crystallized on the effective gradient
    ``g·f·v`` and w₀, as in gradient mode, where ``.grad`` holds ``g·f·v``. For a shard of the
    layer (:mod:`biofx.sharding`): ``offset``, its first flat index, keys the volume noise and
    ``mean_magnitude`` is the layer's mean|w₀|.
    """
    factor, settled = _factor(before, grad, multipliers, key, step, fuzzy, volume_args, crystal_args, offset, mean_magnitude)
    w0 = before.float()
    after.copy_((w0 + factor * (after.float() - w0)).to(after.dtype))
    _crystallize(multipliers, settled, crystal_args)


@fused
def scale_flat_grad_(
    weight: torch.Tensor,
    grad: torch.Tensor,
    multipliers: torch.Tensor,
    key: torch.Tensor,
    step: torch.Tensor,
    fuzzy: bool,
    volume_args: Optional[tuple],
    crystal_args: Optional[tuple],
    offset: int = 0,
    mean_magnitude: Optional[torch.Tensor] = None,
) -> None:
    """:func:`scale_flat_step_` for plain SGD, before its step, in place: ``grad ← f·v·g``
    (w₀ = ``weight``), then the multipliers crystallized on ``g·f·v`` and w₀ alike."""
    factor, settled = _factor(weight, grad, multipliers, key, step, fuzzy, volume_args, crystal_args, offset, mean_magnitude)
    grad.copy_((grad.float() * factor).to(grad.dtype))
    _crystallize(multipliers, settled, crystal_args)


def _factor(before, grad, multipliers, key, step, fuzzy, volume_args, crystal_args, offset, mean_magnitude):
    """The step's factor ``f·v`` of each weight and where it crystallizes (``None`` without)."""
    factor = multipliers if fuzzy else torch.ones_like(before, dtype=torch.float32)
    if volume_args is not None:
        factor = factor * volume.factor(before, key, step, *volume_args, offset)
    if crystal_args is None:
        return factor, None
    return factor, crystallize.mask(before, grad.float() * factor, crystal_args[0], mean_magnitude)


def _crystallize(multipliers: torch.Tensor, settled: Optional[torch.Tensor], crystal_args: Optional[tuple]) -> None:
    # last in a kernel: the factor applied before may be the multipliers themselves
    if crystal_args is not None:
        multipliers.mul_(torch.where(settled, crystal_args[1], 1.0))


def scale_step_(
    weight: torch.Tensor,
    before: torch.Tensor,
    multipliers: torch.Tensor,
    key: torch.Tensor,
    step: torch.Tensor,
    fuzzy: bool,
    volume_args: Optional[tuple],
    crystal_args: Optional[tuple],
    grad: Optional[torch.Tensor] = None,
    offset: int = 0,
    mean_magnitude: Optional[torch.Tensor] = None,
) -> None:
    """Rescale the step the optimizer just took on ``weight`` (from ``before``) and crystallize, in place.

    ``grad`` defaults to ``weight.grad`` (a shard passes its own; ``offset`` and
    ``mean_magnitude`` as in :func:`scale_flat_step_`).
    """
    w = weight.detach()
    if volume_args is None and crystal_args is None and w.dtype == multipliers.dtype == torch.float32:
        if fuzzy:  # fuzzy rates alone: one eager pass, w₀ + f·(w₁ − w₀), no kernel to launch
            torch.lerp(before, w, multipliers, out=w)
        return
    grad = weight.grad if grad is None else grad
    grad = grad.reshape(-1) if crystal_args is not None else before.reshape(-1)  # unused without crystallization
    with flat_views(w, multipliers) as (flat_weight, flat_multipliers):
        scale_flat_step_(
            before.reshape(-1), flat_weight, grad, flat_multipliers, key, step, fuzzy, volume_args, crystal_args,
            offset, mean_magnitude,
        )  # fmt: skip


def scale_grad_for_step_(
    weight: torch.Tensor,
    multipliers: torch.Tensor,
    key: torch.Tensor,
    step: torch.Tensor,
    fuzzy: bool,
    volume_args: Optional[tuple],
    crystal_args: Optional[tuple],
    grad: Optional[torch.Tensor] = None,
    offset: int = 0,
    mean_magnitude: Optional[torch.Tensor] = None,
) -> None:
    """Before a plain SGD step: scale ``weight``'s gradient so that the step is the one
    :func:`scale_step_` would make of it, and crystallize, in place (arguments as there)."""
    w = weight.detach()
    grad = weight.grad if grad is None else grad
    if volume_args is None and crystal_args is None and grad.dtype == multipliers.dtype == torch.float32:
        if fuzzy:  # fuzzy rates alone: one eager pass
            grad.mul_(multipliers)
        return
    with flat_views(grad, multipliers) as (flat_grad, flat_multipliers):
        scale_flat_grad_(
            w.reshape(-1), flat_grad, flat_multipliers, key, step, fuzzy, volume_args, crystal_args, offset, mean_magnitude
        )  # fmt: skip
