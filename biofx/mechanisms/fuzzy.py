"""Synaptic diversity: fuzzy learning rates.

Every weight w gets a multiplier f, and its gradient becomes ``g·f``. f is drawn once per
layer from the configured :class:`~biofx.Distribution` and clamped to
``[fuzzy_lr_min, fuzzy_lr_max]`` (ν = ``fuzzy_learning_rate_factor_nu``):

==================  =================================================================
BASELINE            f = 1
UNIFORM             f ~ U(1 − ν, 1 + ν)
NORMAL              f = 1 + N(0, ν)
LOGNORMAL           f = exp(N(−ν²/2, ν))                       (mean 1)
GAMMA               f ~ Gamma(shape 1/ν², rate 1/ν²)            (mean 1, std ν)
BETA                f = 1 + (2·Beta(1/ν, 1/ν) − 1)·ν
LAYER_ADAPTIVE      uniform with ν_l = ν·(1 − 0.5·l/L), l = layer position, L = layers
WEIGHT_ADAPTIVE     uniform with ``ν_w = ν·clamp(2 − |w|/mean|w|, 0.5, 1.5)``
TEMPORAL            uniform, then decays towards 1 (:func:`temporal_update`)
ACTIVITY            1, then rows redrawn from unit activity (:func:`activity_update`)
==================  =================================================================
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch

from .. import rng
from ..config import BioConfig, Distribution
from ..tiered_compile import flat, flat_views, fused


def _uniform_around_one(rand01: torch.Tensor, nu) -> torch.Tensor:
    return 1.0 + (2.0 * rand01 - 1.0) * nu


def initial_multipliers(
    weight: torch.Tensor, config: BioConfig, layer_index: int, total_layers: int, seed: int
) -> torch.Tensor:
    """Draw f for one layer (float32, on ``weight``'s device), reproducibly from ``seed``.

    On the meta device (a model built without memory) f is an empty meta tensor: draw it
    with ``reset_bio_state()`` once the model is materialized.
    """
    if weight.is_meta:
        return torch.empty(weight.shape, dtype=torch.float32, device="meta")
    nu = config.fuzzy_learning_rate_factor_nu
    dist = config.fuzzy_lr_distribution
    w = weight.detach().float().cpu()
    shape = w.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if dist in (Distribution.BASELINE, Distribution.ACTIVITY):
            f = torch.ones(shape)
        elif dist in (Distribution.UNIFORM, Distribution.TEMPORAL):
            f = _uniform_around_one(torch.rand(shape), nu)
        elif dist is Distribution.NORMAL:
            f = 1.0 + nu * torch.randn(shape)
        elif dist is Distribution.LOGNORMAL:
            f = torch.exp(-0.5 * nu * nu + nu * torch.randn(shape))
        elif dist is Distribution.GAMMA:
            k = 1.0 / (nu * nu)
            f = torch.distributions.Gamma(torch.tensor(k), torch.tensor(k)).sample(shape)
        elif dist is Distribution.BETA:
            a = torch.tensor(1.0 / nu)
            f = 1.0 + (2.0 * torch.distributions.Beta(a, a).sample(shape) - 1.0) * nu
        elif dist is Distribution.LAYER_ADAPTIVE:
            f = _uniform_around_one(torch.rand(shape), _layer_nu(config, layer_index, total_layers))
        elif dist is Distribution.WEIGHT_ADAPTIVE:
            magnitude = w.abs()
            nu_w = nu * torch.clamp(2.0 - magnitude / (magnitude.mean() + 1e-8), 0.5, 1.5)
            f = _uniform_around_one(torch.rand(shape), nu_w)
        else:  # pragma: no cover - Distribution is a closed enum validated by BioConfig
            raise NotImplementedError(dist)
    f = torch.clamp(f, config.fuzzy_lr_min, config.fuzzy_lr_max)
    return f.to(device=weight.device, dtype=torch.float32)


def _layer_nu(config: BioConfig, layer_index: int, total_layers: int) -> float:
    """LAYER_ADAPTIVE's ``ν_l = ν·(1 − 0.5·l/L)``."""
    index = config.fuzzy_lr_layer_index if config.fuzzy_lr_layer_index >= 0 else layer_index
    total = config.fuzzy_lr_total_layers if config.fuzzy_lr_total_layers > 0 else total_layers
    return config.fuzzy_learning_rate_factor_nu * (1.0 - 0.5 * index / total)


# -- fuzzy_lr_storage="counter": f recomputed at each use, crystallization counted ----------
class Recomputed(NamedTuple):
    """A layer's multipliers kept as ``f = f₀·d^c`` (``BioConfig.fuzzy_lr_storage="counter"``).

    f₀ is drawn by :mod:`biofx.rng` from ``seed`` (the layer's :data:`~biofx.rng.FUZZY`
    stream) at each weight's flat index (from ``offset`` for a shard), so it is recomputed
    rather than stored; ``dampenings`` counts each weight's crystallizations (c, an integer
    tensor of the weight's shape); ``law`` is :func:`counter_law`'s. ``dampened=False`` says
    that every count is 0 (nothing crystallized since the counts were zeroed), so f = f₀ and
    ``d^c`` is skipped (40 % of the recomputation's time on a CPU).
    """

    dampenings: torch.Tensor
    seed: torch.Tensor
    law: tuple
    offset: int = 0
    dampened: bool = True


def counter_law(config: BioConfig, layer_index: int, total_layers: int) -> tuple:
    """``(distribution, ν, f_min, f_max, d, c_max)``, the constants of a layer's recomputed f.

    The count c saturates at ``c_max`` (255, 32767 or 2³¹ − 1: the first count type in which
    ``f_max·d^c_max`` is 0 in float32), so a saturated count gives the f repeated
    multiplication reaches.
    """
    dist = config.fuzzy_lr_distribution
    nu = config.fuzzy_learning_rate_factor_nu
    if dist is Distribution.LAYER_ADAPTIVE:
        dist, nu = Distribution.UNIFORM, _layer_nu(config, layer_index, total_layers)
    d = config.dampening_factor
    _, cap = dampening_count_type(d, config.fuzzy_lr_max)
    return dist.value, nu, config.fuzzy_lr_min, config.fuzzy_lr_max, d, cap


@functools.lru_cache(maxsize=None)
def dampening_count_type(dampening: float, f_max: float) -> tuple:
    """``(dtype, c_max)`` of the crystallization counts: the smallest integer type whose largest
    value c_max dampens every f to 0 in float32 (uint8 for ``dampening`` ≤ 0.66). Cached: the
    float32 check takes about 50 µs, and :func:`counter_law` asks at every step."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        cap = torch.iinfo(dtype).max
        if float(torch.tensor(f_max) * torch.tensor(dampening) ** cap) == 0.0:
            return dtype, cap
    return torch.int32, torch.iinfo(torch.int32).max


def drawn(numel: int, seed: torch.Tensor, law: tuple, offset: int = 0) -> torch.Tensor:
    """f₀ of flat elements ``offset … offset + numel − 1``, clamped (float32)."""
    dist, nu, low, high = law[:4]
    if dist == Distribution.BASELINE.value:
        return torch.ones(numel, device=seed.device).clamp(low, high)
    if dist == Distribution.UNIFORM.value:
        f = _uniform_around_one(rng.uniform(torch.Size([numel]), seed, offset), nu)
    elif dist == Distribution.NORMAL.value:
        f = 1.0 + nu * rng.normal(torch.Size([numel]), seed, offset)
    else:  # LOGNORMAL
        f = torch.exp(-0.5 * nu * nu + nu * rng.normal(torch.Size([numel]), seed, offset))
    return f.clamp(low, high)


def values(multipliers) -> torch.Tensor:
    """f, float32: the ``fuzzy_lr`` tensor itself, or a :class:`Recomputed`'s ``f₀·d^c``
    (flat, ``dampenings`` flattened)."""
    if isinstance(multipliers, torch.Tensor):
        return multipliers
    return _recomputed(multipliers)


@fused
def _recomputed(multipliers: Recomputed) -> torch.Tensor:
    counts, seed, law, offset, dampened = multipliers
    f0 = drawn(counts.numel(), seed, law, offset)
    return f0 * _power(law[4], counts.reshape(-1), law[5]) if dampened else f0


def _power(d: float, counts: torch.Tensor, cap: int) -> torch.Tensor:
    """``d^c`` (float32) as the product of ``d^(2^k)`` over the set bits k of c: one select and
    multiply per bit of ``cap``, vectorized (``torch.pow(d, c)`` compiles to a scalar loop on
    the CPU, 3x slower; ``exp(c·ln d)`` 1.5x)."""
    c = counts.to(torch.int32)
    factor = torch.where((c & 1) != 0, d, 1.0)
    for bit in range(1, cap.bit_length()):
        factor = factor * torch.where((c & (1 << bit)) != 0, d ** (1 << bit), 1.0)
    return factor


@contextlib.contextmanager
def flat_multipliers(multipliers):
    """``multipliers`` (a tensor or a :class:`Recomputed`) as flat views for a kernel that
    updates them in place (:func:`~biofx.tiered_compile.flat_views`)."""
    if isinstance(multipliers, torch.Tensor):
        with flat_views(multipliers) as (alias,):
            yield alias
    else:  # the counts are made contiguous (and sharded by rows, which keeps them so)
        yield multipliers._replace(dampenings=flat(multipliers.dampenings))


def dampen_(multipliers, settled: torch.Tensor, dampening: float) -> None:
    """One crystallization where ``settled``: ``f ← f·d`` on a tensor, ``c ← c + 1`` (up to
    c_max) on a :class:`Recomputed`."""
    if isinstance(multipliers, torch.Tensor):
        multipliers.mul_(torch.where(settled, dampening, 1.0))
        return
    counts, cap = multipliers.dampenings, multipliers.law[5]
    counts.copy_(torch.where(settled.view(counts.shape) & (counts < cap), counts + 1, counts))


def apply(grad: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """``g·f`` (computed in float32, returned in ``grad``'s dtype)."""
    return (grad.float() * multipliers).to(grad.dtype)


def temporal_update(
    multipliers: torch.Tensor, update: int, counter: torch.Tensor, key: torch.Tensor, config: BioConfig, offset: int = 0
) -> None:
    """TEMPORAL, in place, for the ``update``-th update (1-based; ``counter`` is it as a tensor;
    ``offset``: the flat index of ``multipliers``' first element in the layer's, for a shard).

    On every ``fuzzy_lr_update_freq``-th update ``f ← 1 + (f − 1)·fuzzy_lr_decay``; on every
    tenth of those, noise ``0.1·U(−ν, ν)`` is added; then f is clamped.
    """
    freq = config.fuzzy_lr_update_freq
    if update % freq:
        return
    multipliers.sub_(1.0).mul_(config.fuzzy_lr_decay).add_(1.0)
    if update % (10 * freq) == 0:
        u = rng.uniform(multipliers.shape, rng.stream_seed(key, counter, rng.TEMPORAL), offset)
        multipliers.add_(0.1 * config.fuzzy_learning_rate_factor_nu * (2.0 * u - 1.0))
    multipliers.clamp_(config.fuzzy_lr_min, config.fuzzy_lr_max)


def activity_update(
    multipliers: torch.Tensor,
    counts: torch.Tensor,
    out_axis: int,
    update: int,
    counter: torch.Tensor,
    key: torch.Tensor,
    config: BioConfig,
    rows: slice = slice(None),
    offset: int = 0,
) -> None:
    """ACTIVITY, in place, on the first update and every ``fuzzy_lr_update_freq``-th one
    (``update`` counts from 1; ``counter`` is it as a tensor, keying the draw).

    ``c_i`` counts how often output unit i exceeded 0.01 in magnitude;
    ``a_i = clamp(1 + 0.1·(c_i/mean c − 1), 0.8, 1.2)``; row i is redrawn as
    ``U(1 − ν_i, 1 + ν_i)`` with ``ν_i = ν·(2 − a_i)``, then clamped. For a shard of the layer
    (:mod:`biofx.sharding`), ``multipliers`` holds the layer's ``rows`` (dim 0) from flat index ``offset``.
    """
    if update != 1 and update % config.fuzzy_lr_update_freq:
        return
    activity = torch.clamp(1.0 + 0.1 * (counts / (counts.mean() + 1e-8) - 1.0), 0.8, 1.2)
    shape = [1] * multipliers.dim()
    shape[out_axis] = -1
    nu = (config.fuzzy_learning_rate_factor_nu * (2.0 - activity)).view(shape)
    if out_axis == 0:
        nu = nu[rows]
    u = rng.uniform(multipliers.shape, rng.stream_seed(key, counter, rng.ACTIVITY), offset)
    multipliers.copy_(torch.clamp(_uniform_around_one(u, nu), config.fuzzy_lr_min, config.fuzzy_lr_max))
