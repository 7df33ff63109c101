"""Counter-based randomness: distribution statistics, independence, determinism."""

import math

import pytest
import torch

from biofx import rng

SHAPE = torch.Size([400, 500])


def test_uniform_statistics_and_range():
    u = rng.uniform(SHAPE, torch.tensor(1), torch.tensor(0), rng.VOLUME)
    assert u.dtype == torch.float32 and 0 < u.min() and u.max() < 1
    assert u.mean().item() == pytest.approx(0.5, abs=2e-3)
    assert u.var().item() == pytest.approx(1 / 12, rel=1e-2)
    hist = torch.histc(u, bins=20, min=0, max=1)
    expected = SHAPE.numel() / 20
    chi2 = ((hist - expected) ** 2 / expected).sum().item()
    assert chi2 < 45  # chi-square, 19 dof: p ~ 1e-3


def test_normal_statistics_and_ks():
    z = rng.normal(SHAPE, torch.tensor(9), torch.tensor(3), rng.VOLUME).flatten().double()
    assert z.mean().item() == pytest.approx(0.0, abs=5e-3)
    assert z.std().item() == pytest.approx(1.0, abs=5e-3)
    skew = (z**3).mean().item()
    kurt = (z**4).mean().item()
    assert abs(skew) < 0.02 and kurt == pytest.approx(3.0, abs=0.05)
    # Kolmogorov-Smirnov distance to N(0, 1)
    sorted_z, _ = torch.sort(z)
    cdf = 0.5 * torch.special.erfc(-sorted_z / math.sqrt(2))
    n = z.numel()
    empirical = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert (cdf - empirical).abs().max().item() < 1.63 / math.sqrt(n)  # 1 % level


def test_counters_keys_and_streams_are_independent():
    base = rng.uniform(SHAPE, torch.tensor(1), torch.tensor(0), rng.VOLUME).flatten()
    others = [
        rng.uniform(SHAPE, torch.tensor(1), torch.tensor(1), rng.VOLUME),  # next step
        rng.uniform(SHAPE, torch.tensor(2), torch.tensor(0), rng.VOLUME),  # another layer
        rng.uniform(SHAPE, torch.tensor(1), torch.tensor(0), rng.TEMPORAL),  # another stream
    ]
    for other in others:
        corr = torch.corrcoef(torch.stack([base, other.flatten()]))[0, 1].item()
        assert abs(corr) < 0.01
    # neighbouring elements are uncorrelated too
    corr = torch.corrcoef(torch.stack([base[:-1], base[1:]]))[0, 1].item()
    assert abs(corr) < 0.01


def test_deterministic_and_device_agnostic_shape():
    a = rng.bits(torch.Size([3, 4]), torch.tensor(5), torch.tensor(7), rng.ACTIVITY)
    b = rng.bits(torch.Size([3, 4]), torch.tensor(5), torch.tensor(7), rng.ACTIVITY)
    assert torch.equal(a, b) and a.shape == (3, 4) and (a >= 0).all() and (a < 2**32).all()


def test_layer_keys_distinct():
    keys = {rng.layer_key(seed, index) for seed in range(20) for index in range(20)}
    assert len(keys) == 400 and all(0 <= k < 2**32 for k in keys)


def test_uniform_never_reaches_one_and_normal_stays_finite():
    top = torch.tensor([2**32 - 1, 0], dtype=torch.int64)
    u = ((top >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))  # the extreme values uniform() can take
    assert (u > 0).all() and (u < 1).all()
    z = rng.ndtri(u)
    assert torch.isfinite(z).all() and z[0] > 5 and z[1] < -5


def test_ndtri_polynomial_matches_torch():
    u = torch.linspace(1e-7, 1 - 1e-7, 100001)
    torch.testing.assert_close(rng.ndtri(u), torch.special.ndtri(u.double()).float(), rtol=2e-6, atol=2e-6)
