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

Each layer is one call of a fused kernel (:mod:`biofx.tiered_compile`; compiled with dynamic
shapes, so one compile serves every layer). One call for all the layers of a step measured
15 % faster on a CPU MLP, but Inductor then generates each layer's code anew: its compile
time grows with the number of layers (28 s for one, 65 s for three, without caches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..tiered_compile import flat, flat_views, fused
from . import crystallize, fuzzy, volume


@dataclass
class LayerStep:
    """One layer's part of an update-mode step.

    ``weight``, ``grad`` and ``multipliers`` (``fuzzy_lr``, or what recomputes it with
    ``fuzzy_lr_storage="counter"``) are this rank's (for a shard of the layer,
    :mod:`biofx.sharding`: ``offset``, its first flat index, keys the volume noise).
    ``mean_magnitude``, the layer's mean|w₀| for crystallization, is computed before the kernel
    (:func:`~biofx.mechanisms.crystallize.mean_abs`). ``before`` is w₀, kept by the pre-step hook,
    for :func:`scale_step_`; ``volume_args = (base_lr, stability_factor, lr_variability)`` and
    the step's ``volume_seed`` (:func:`~biofx.mechanisms.volume.seed`), and ``crystal_args =
    (crystal_thresh, dampening_factor)``, are ``None`` when not automatic.
    """

    weight: torch.Tensor
    grad: torch.Tensor
    multipliers: Union[torch.Tensor, fuzzy.Recomputed]
    volume_seed: Optional[torch.Tensor]
    fuzzy: bool
    volume_args: Optional[tuple]
    crystal_args: Optional[tuple]
    offset: int = 0
    mean_magnitude: Optional[torch.Tensor] = None
    before: Optional[torch.Tensor] = None

    @property
    def fuzzy_only_float32(self) -> bool:
        """Fuzzy rates alone on float32 tensors: one eager op, no kernel to launch."""
        tensors = (self.weight, self.grad, self.multipliers)
        alone = self.fuzzy and self.volume_args is None and self.crystal_args is None
        return alone and all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in tensors)


def scale_step_(layer: LayerStep) -> None:
    """After the step, in place: ``w ← w₀ + f·v·(w₁ − w₀)`` (computed in float32, stored in
    w's dtype), then the multipliers crystallized on the effective gradient ``g·f·v`` and w₀
    (as in gradient mode, where ``.grad`` holds ``g·f·v``)."""
    if layer.fuzzy_only_float32:
        torch.lerp(layer.before, layer.weight, layer.multipliers, out=layer.weight)
        return
    with flat_views(layer.weight) as (weight,), fuzzy.flat_multipliers(layer.multipliers) as multipliers:
        scale_flat_step_(flat(layer.before), weight, flat(layer.grad), multipliers, *_kernel_args(layer))


def scale_grad_for_step_(layer: LayerStep) -> None:
    """Before a plain SGD step, in place (w₀ = ``layer.weight``): ``g ← f·v·g`` (computed in
    float32, stored in g's dtype), so that the step is the one :func:`scale_step_` would make
    of it, then the same crystallization."""
    if layer.fuzzy_only_float32:
        layer.grad.mul_(layer.multipliers)
        return
    with flat_views(layer.grad) as (grad,), fuzzy.flat_multipliers(layer.multipliers) as multipliers:
        scale_flat_grad_(flat(layer.weight), grad, multipliers, *_kernel_args(layer))


def _kernel_args(layer: LayerStep) -> tuple:
    return layer.volume_seed, layer.fuzzy, layer.volume_args, layer.crystal_args, layer.offset, layer.mean_magnitude


@fused
def scale_flat_step_(
    before, after, grad, multipliers, seed, fuzzy_on, volume_args, crystal_args, offset, mean_magnitude
) -> None:  # fmt: skip
    """:func:`scale_step_` on flat tensors."""
    factor, settled = _factor(before, grad, multipliers, seed, fuzzy_on, volume_args, crystal_args, offset, mean_magnitude)
    w0 = before.float()
    after.copy_((w0 + factor * (after.float() - w0)).to(after.dtype))
    _crystallize(multipliers, settled, crystal_args)


@fused
def scale_flat_grad_(
    weight, grad, multipliers, seed, fuzzy_on, volume_args, crystal_args, offset, mean_magnitude
) -> None:  # fmt: skip
    """:func:`scale_grad_for_step_` on flat tensors."""
    factor, settled = _factor(weight, grad, multipliers, seed, fuzzy_on, volume_args, crystal_args, offset, mean_magnitude)
    grad.copy_((grad.float() * factor).to(grad.dtype))
    _crystallize(multipliers, settled, crystal_args)


def _factor(before, grad, multipliers, seed, fuzzy_on, volume_args, crystal_args, offset, mean_magnitude):
    """The step's factor ``f·v`` of each weight (``seed``: the volume noise's) and where it
    crystallizes (``None`` without)."""
    factor = fuzzy.values(multipliers) if fuzzy_on else torch.ones_like(before, dtype=torch.float32)
    if volume_args is not None:
        factor = factor * volume.factor(before, seed, *volume_args, offset)
    if crystal_args is None:
        return factor, None
    return factor, crystallize.mask(before, grad.float() * factor, crystal_args[0], mean_magnitude)


def _crystallize(multipliers: torch.Tensor, settled: Optional[torch.Tensor], crystal_args: Optional[tuple]) -> None:
    # last in a kernel: the factor applied before may be the multipliers themselves
    if crystal_args is not None:
        fuzzy.dampen_(multipliers, settled, crystal_args[1])
