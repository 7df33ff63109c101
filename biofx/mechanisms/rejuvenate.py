"""Rejuvenation (spine turnover).

The paper's rule (default): per layer ``σ = max|W|/d_re``; each weight draws
``t ~ |N(0, σ)|`` and where ``t > |w|`` it is replaced by ``U(−max|W|, max|W|)``. A weight is
therefore replaced with probability ``erfc(|w|·d_re/(√2·max|W|))``: small weights turn over
often, large ones rarely. Non-finite weights (NaN, ±Inf) are always replaced; max|W| is taken
over the finite ones. With Dale's principle on, a new weight takes its unit's sign.

``rule="lognormal"`` offers the reference 0.0.5's later rule: weights are clamped to
[−1, 1] and replaced with probability ``exp(−d_re·|w|/std)`` by log-normal draws matching
the layer's mean and std (near zero for zero-mean layers).

Both return the number replaced as a 0-d tensor: no host-device sync.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import rng
from ..tiered_compile import flat, fused


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """``|w|`` in float32, 0 where w is not finite (max|W| is taken over the finite weights)."""
    w = weight.detach()
    return torch.where(torch.isfinite(w), w.float().abs(), 0.0)


def rejuvenated(
    weight: torch.Tensor,
    dre: float,
    key: torch.Tensor,
    counter: torch.Tensor,
    sign: Optional[torch.Tensor] = None,
    rule: str = "paper",
    offset: int = 0,
    max_magnitude: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rejuvenated weight and how many entries were replaced (0-d tensor).

    For a shard of the layer (:mod:`biofx.sharding`, paper rule): ``offset``, its first flat
    index, keys the draws and ``max_magnitude`` is the layer's max|W|.
    """
    seeds = (
        rng.stream_seed(key, counter, rng.REJUVENATE_VALUE),
        rng.stream_seed(key, counter, rng.REJUVENATE_THRESHOLD),
        rng.stream_seed(key, counter + 0x7FFF, rng.REJUVENATE_VALUE),  # the log-normal rule's values
    )
    return _rejuvenated(weight, dre, seeds, sign, rule, offset, max_magnitude)


@fused
def _rejuvenated(weight, dre, seeds, sign, rule, offset, max_magnitude):
    """:func:`rejuvenated` with its draws' seeds (``value, threshold, log-normal value``)."""
    value_seed, threshold_seed, lognormal_seed = seeds
    w = weight.detach()
    finite = torch.isfinite(w)
    size = magnitude(w)
    u = rng.uniform(w.shape, value_seed, offset)
    if rule == "paper":
        max_w = size.amax() if max_magnitude is None else max_magnitude
        threshold = rng.normal(w.shape, threshold_seed, offset).abs() * (max_w / dre)
        replace = (threshold > size) | ~finite
        new = (u * max_w - max_w / 2.0) * 2.0  # U(−max|W|, max|W|), rounded as the authors' code does
        kept = w.float()
    else:
        kept = torch.where(finite, w.float(), 0.0).clamp(-1.0, 1.0)
        mean = kept.mean().clamp(min=1e-8)
        std = kept.std().nan_to_num(0.0).clamp(min=1e-8)
        log_var = torch.log1p(std * std / (mean * mean))
        log_mean = torch.log(mean) - 0.5 * log_var
        probability = torch.exp(-dre * kept.abs() / std)
        replace = (rng.uniform(w.shape, threshold_seed, offset) < probability) | ~finite
        z = rng.normal(w.shape, lognormal_seed, offset)
        new = torch.exp(log_mean + 0.5 * torch.sqrt(log_var) * z).clamp(-1.0, 1.0)
    if sign is not None:
        new = new.abs() * sign
    return torch.where(replace, new, kept).to(w.dtype), replace.sum()


def rejuvenate_(
    weight: torch.Tensor,
    dre: float,
    key: torch.Tensor,
    counter: torch.Tensor,
    sign: Optional[torch.Tensor] = None,
    rule: str = "paper",
    offset: int = 0,
    max_magnitude: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Rejuvenate ``weight`` in place; returns how many entries were replaced.

    Runs on flat views (one kernel for every layer shape; same numbers, the noise is indexed
    by the flat element index). ``offset`` and ``max_magnitude`` as in :func:`rejuvenated`.
    """
    w = weight.detach()
    if w.numel() == 0:  # nothing to replace (and no max|W| to take)
        return torch.zeros((), dtype=torch.int64, device=w.device)
    flat_sign = None if sign is None else flat(sign.expand_as(w))
    new, count = rejuvenated(flat(w), dre, key, counter, flat_sign, rule, offset, max_magnitude)
    w.copy_(new.view(w.shape))
    return count
