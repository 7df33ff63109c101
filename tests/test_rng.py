"""Counter-based randomness: distribution statistics across elements and across steps,
pairwise independence, the mixer's avalanche, determinism and compiled = eager."""

import math

import pytest
import torch

from biofx import rng

SHAPE = torch.Size([400, 500])


def _seed(key: int, counter: int, stream: int) -> torch.Tensor:
    return rng.stream_seed(torch.tensor(key), torch.tensor(counter), stream)


def _uniform(shape: torch.Size, key: int, counter: int, stream: int) -> torch.Tensor:
    return rng.uniform(shape, _seed(key, counter, stream))


def test_uniform_statistics_and_range():
    u = _uniform(SHAPE, 1, 0, rng.VOLUME)
    assert u.dtype == torch.float32 and 0 < u.min() and u.max() < 1
    assert u.mean().item() == pytest.approx(0.5, abs=2e-3)
    assert u.var().item() == pytest.approx(1 / 12, rel=1e-2)
    hist = torch.histc(u, bins=20, min=0, max=1)
    expected = SHAPE.numel() / 20
    chi2 = ((hist - expected) ** 2 / expected).sum().item()
    assert chi2 < 45  # chi-square, 19 dof: p ~ 1e-3


def test_normal_statistics_and_ks():
    z = rng.normal(SHAPE, _seed(9, 3, rng.VOLUME)).flatten().double()
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
    base = _uniform(SHAPE, 1, 0, rng.VOLUME).flatten()
    others = [
        _uniform(SHAPE, 1, 1, rng.VOLUME),  # next step
        _uniform(SHAPE, 2, 0, rng.VOLUME),  # another layer
        _uniform(SHAPE, 1, 0, rng.TEMPORAL),  # another stream
    ]
    for other in others:
        corr = torch.corrcoef(torch.stack([base, other.flatten()]))[0, 1].item()
        assert abs(corr) < 0.01
    # neighbouring elements are uncorrelated too
    corr = torch.corrcoef(torch.stack([base[:-1], base[1:]]))[0, 1].item()
    assert abs(corr) < 0.01


def test_deterministic():
    a = _uniform(torch.Size([3, 5]), 5, 7, rng.ACTIVITY)
    b = _uniform(torch.Size([3, 5]), 5, 7, rng.ACTIVITY)
    assert torch.equal(a, b) and a.shape == (3, 5)
    # a prefix of a larger draw is the smaller draw (elements are indexed, not sequenced)
    assert torch.equal(_uniform(torch.Size([7]), 5, 7, 1), _uniform(torch.Size([8]), 5, 7, 1)[:7])


@pytest.mark.parametrize("offset, numel", [(0, 63), (9, 27), (15, 10), (1, 1), (62, 1), (63, 0)])
def test_offset_draws_are_the_full_draws_at_those_indices(offset, numel):
    """A shard (biofx.sharding) draws elements offset … offset + numel − 1 of the full tensor, at
    odd offsets too (its first element is then the low half of a block's hash)."""
    seed = _seed(5, 3, rng.VOLUME)
    full = rng.normal(torch.Size([7, 9]), seed).reshape(-1)
    assert torch.equal(rng.normal(torch.Size([numel]), seed, offset), full[offset : offset + numel])


def test_mix64_is_splitmix64():
    """Against SplitMix64 written with Python integers (its first output for state 0 is known)."""
    mask = (1 << 64) - 1

    def reference(x):
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & mask
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & mask
        return x ^ (x >> 31)

    inputs = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15, 0x0123456789ABCDEF]
    got = rng.mix64(torch.tensor([rng._signed(x) for x in inputs])).tolist()
    assert [g & mask for g in got] == [reference(x) for x in inputs]
    assert reference(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


def test_mix64_avalanche():
    """Flipping any input bit flips every output bit with probability 1/2 (±0.05 over 2000 inputs)."""
    x = rng.mix64(torch.arange(2000, dtype=torch.int64) + 12345)  # random 64-bit inputs
    out = rng.mix64(x)
    positions = torch.arange(64, dtype=torch.int64)
    for bit in range(64):
        flipped = rng.mix64(x ^ (1 << bit) if bit < 63 else x ^ torch.tensor(-(2**63)))
        diff = out ^ flipped
        rates = ((diff[:, None] >> positions) & 1).float().mean(0)
        assert (rates - 0.5).abs().max() < 0.05, (bit, rates)


@pytest.mark.parametrize("key", [0, 1, -1, rng.layer_key(7, 3), -(2**63), 2**63 - 1])
@pytest.mark.parametrize("counter", [0, 1, 2**31 + 5, 2**62 + 0x7FFF])
def test_host_seed_equals_device_seed(key, counter):
    """On the CPU a draw's seed is computed on the host with Python ints: it must equal the
    tensor formula that devices and compiled graphs evaluate, for every stream."""
    k, c = torch.tensor(key), torch.tensor(counter)
    for stream in (rng.VOLUME, rng.REJUVENATE_THRESHOLD, rng.REJUVENATE_VALUE, rng.TEMPORAL, rng.ACTIVITY):
        device_formula = rng.mix64(rng.mix64(k + rng._signed(stream * rng.GAMMA % 2**64)) + c * rng.GAMMA)
        host = rng.stream_seed(k, c, stream)
        assert host.dtype == torch.int64 and host.dim() == 0 and int(host) == int(device_formula)


def test_layer_key_is_two_mixes_of_seed_and_index():
    for seed, index in [(0, 0), (1, 2), (2**64 - 1, 7), (-5, 3)]:
        x = rng.mix64(rng.mix64(torch.tensor(rng._signed(seed % 2**64))) + torch.tensor(index) * rng.GAMMA)
        assert rng.layer_key(seed, index) == int(x)


def test_layer_keys_distinct():
    keys = {rng.layer_key(seed, index) for seed in range(20) for index in range(20)}
    assert len(keys) == 400 and all(-(2**63) <= k < 2**63 for k in keys)


def _steps(n_elements: int, n_steps: int, stream=rng.REJUVENATE_THRESHOLD) -> torch.Tensor:
    """uniform draws, one row per step (counter), one column per element."""
    key = torch.tensor(rng.layer_key(7, 3))
    return torch.stack([rng.uniform(torch.Size([n_elements]), rng.stream_seed(key, torch.tensor(t), stream)) for t in range(n_steps)])


def test_each_element_is_uniform_across_steps():
    """An element's draws over 4000 steps: chi-square against U(0, 1), for every element."""
    u = _steps(64, 4000)
    hist = torch.nn.functional.one_hot((u * 10).long(), 10).sum(0).float()  # element x bin
    chi2 = ((hist - 400) ** 2 / 400).sum(1)
    assert chi2.max() < 33.7  # 9 dof, p = 1e-4 per element
    assert abs(chi2.mean().item() - 9) < 1.2  # the average over 64 elements: 9 ± 0.2 expected


def test_elements_are_pairwise_independent_across_steps():
    """Two elements see the same index difference at every step; their draws must not notice.

    Over 2048 steps: the correlation of every pair of 256 elements (32640 pairs) and, for
    neighbours and far pairs, the distribution of the XOR of their top 4 bits.
    """
    u = _steps(256, 2048)
    z = (u - u.mean(0)) / u.std(0)
    corr = (z.T @ z) / (u.shape[0] - 1)
    off = corr[~torch.eye(256, dtype=torch.bool)]
    sigma = 1 / math.sqrt(u.shape[0])
    assert off.std().item() == pytest.approx(sigma, rel=0.05)
    assert off.abs().max().item() < 5.5 * sigma
    nibbles = (u * 16).long()
    for distance in (1, 2, 3, 64, 128):
        xor = nibbles[:, :-distance] ^ nibbles[:, distance:]
        hist = torch.nn.functional.one_hot(xor, 16).sum(0).float()
        expected = u.shape[0] / 16
        chi2 = ((hist - expected) ** 2 / expected).sum(1)  # 15 dof per pair
        assert abs(chi2.mean().item() - 15) < 1.5 and chi2.max() < 50, distance


def test_steps_are_independent_for_each_element():
    """Lag-1 and lag-2 correlation of an element's draws across steps, pooled over elements."""
    u = _steps(128, 2000) - 0.5
    for lag in (1, 2):
        corr = (u[lag:] * u[:-lag]).mean(0) / u.var(0)
        assert corr.mean().abs().item() < 4 / math.sqrt(2000 * 128) and corr.abs().max() < 0.12


def test_rejuvenation_rate_per_element_matches_the_formula():
    """A fixed weight w is replaced with probability erfc(|w|·d_re/(√2·max|W|)) at every step,
    the rate torch.randn would give: checked per element over 1500 steps."""
    from biofx.mechanisms import rejuvenate

    weight = torch.linspace(-0.5, 0.5, 41)
    key = torch.tensor(rng.layer_key(1, 0))
    hits = torch.zeros(41)
    for t in range(1500):
        new, _ = rejuvenate.rejuvenated(weight, 8.0, key, torch.tensor(t))
        hits += (new != weight).float()
    p = torch.special.erfc(weight.abs() * 8.0 / (math.sqrt(2) * 0.5)).clamp(1e-6, 1 - 1e-6)
    z = (hits - 1500 * p) / torch.sqrt(1500 * p * (1 - p))
    assert z.abs().max() < 4.5 and abs(z.mean().item()) < 4.5 / math.sqrt(41)


def test_compiled_draws_equal_eager_for_every_size():
    """Inductor's vector body and scalar tail give the eager bits (a tail once diverged)."""
    key, counter = torch.tensor(rng.layer_key(3, 2)), torch.tensor(7)
    draw = torch.compile(lambda k, c, n: rng.uniform(torch.Size([n]), rng.stream_seed(k, c, rng.VOLUME)), dynamic=True)
    for n in (11, 1001):
        assert torch.equal(draw(key, counter, n), rng.uniform(torch.Size([n]), rng.stream_seed(key, counter, rng.VOLUME)))


def test_uniform_never_reaches_one_and_normal_stays_finite():
    top = torch.tensor([2**23 - 1, 0], dtype=torch.int64)
    u = (top.to(torch.float32) + 0.5) * (1.0 / (1 << 23))  # the extreme values uniform() can take
    assert (u > 0).all() and (u < 1).all()
    z = rng.ndtri(u)
    assert torch.isfinite(z).all() and z[0] > 5 and z[1] < -5


def test_ndtri_polynomial_matches_torch():
    u = torch.linspace(1e-7, 1 - 1e-7, 100001)
    torch.testing.assert_close(rng.ndtri(u), torch.special.ndtri(u.double()).float(), rtol=2e-6, atol=2e-6)
