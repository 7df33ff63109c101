"""fuzzy_lr_storage="counter": f recomputed from the counter-based generator, only the counts of
crystallizations stored. Checked against the float32 buffer given the same initial f (same
weights, batches and optimizers, every path), for its distributions, its state size, its
checkpoints and its errors."""

import copy
import math

import pytest
import torch
import torch.nn as nn

import biofx
from biofx import Distribution
from biofx.mechanisms import fuzzy

ALL = ("fuzzy", "volume", "crystallize")


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 6))


def pair(**options):
    """(counter, buffer) bio models of one MLP; the buffer's fuzzy_lr set to the counter's f₀."""
    base = mlp()
    counter = biofx.transform(copy.deepcopy(base), fuzzy_lr_storage="counter", seed=3, **options)
    stored = biofx.transform(copy.deepcopy(base), seed=3, **options)
    for c, s in zip(counter.bio_layers(), stored.bio_layers()):
        s.fuzzy_lr.copy_(c.fuzzy_multipliers())
    return counter, stored


def train(model, optimizer, steps, explicit=False):
    torch.manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(16, 12)).square().mean().backward()
        if explicit:
            model.volume_dependent_lr()
            model.fuzzy_learning_rates()
            model.crystallize()
        optimizer.step()


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.5),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=0.05),
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize(
    "options",
    [dict(automatic=ALL), dict(automatic=ALL, acts_on="gradient"), dict(automatic=("fuzzy",)), dict(automatic=())],
    ids=["update", "gradient", "fuzzy-only", "explicit"],
)
def test_counter_trains_as_the_buffer_does(optimizer, options, request):
    """Same weights and the same f after 8 steps (f₀·d^c against repeated f·d: rounding)."""
    if options.get("acts_on", "update") == "update" and options["automatic"] == ALL and optimizer != "momentum":
        request.getfixturevalue("fused_kernels")  # the step kernels compiled (plain SGD's and the general path's)
    counter, stored = pair(**options)
    explicit = options["automatic"] == ()
    for model in (counter, stored):
        train(model, OPTIMIZERS[optimizer](model.parameters()), 8, explicit)
    for c, s in zip(counter.bio_layers(), stored.bio_layers()):
        torch.testing.assert_close(c.weight, s.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c.fuzzy_multipliers(), s.fuzzy_lr, rtol=1e-5, atol=1e-7)
    if options["automatic"] != ("fuzzy",):  # crystallization ran: some weights were dampened
        assert sum(int((layer.fuzzy_dampenings > 0).sum()) for layer in counter.bio_layers()) > 0
    assert not torch.equal(counter.bio_layers()[0].weight, mlp()[0].weight)


def test_state_is_one_byte_per_weight():
    counter = biofx.transform(mlp(), fuzzy_lr_storage="counter", seed=0)
    stored = biofx.transform(mlp(), seed=0)
    weights = sum(layer.weight.numel() for layer in counter.bio_layers())
    scalars = sum(b.numel() * b.element_size() for layer in counter.bio_layers() for b in layer.buffers() if b.dim() == 0)
    assert counter.bio_state_bytes() - scalars == weights  # uint8 counts
    assert stored.bio_state_bytes() - scalars == 4 * weights
    assert "fuzzy_lr" not in dict(counter.bio_layers()[0].named_buffers())
    # a dampening factor whose 255th power does not underflow needs a wider count
    wide = biofx.transform(mlp(), fuzzy_lr_storage="counter", dampening_factor=0.9, seed=0)
    assert wide.bio_layers()[0].fuzzy_dampenings.dtype == torch.int16


def test_saturated_counts_give_zero_and_stay():
    model = biofx.transform(mlp(), fuzzy_lr_storage="counter", automatic=(), seed=0)
    layer = model.bio_layers()[0]
    layer.fuzzy_dampenings.fill_(255)
    assert torch.equal(layer.fuzzy_multipliers(), torch.zeros_like(layer.weight))
    model(torch.randn(4, 12)).sum().backward()
    model.crystallize()
    assert int(layer.fuzzy_dampenings.min()) == 255  # saturates, never wraps to 0
    assert float(torch.tensor(2.0) * torch.tensor(0.6) ** 255) == 0.0


WIDE = dict(fuzzy_lr_min=1e-3, fuzzy_lr_max=10.0, fuzzy_learning_rate_factor_nu=0.2)


def _f0(distribution, **options):
    big = nn.Sequential(nn.Linear(400, 500), nn.ReLU(), nn.Linear(500, 300))
    model = biofx.transform(big, fuzzy_lr_storage="counter", fuzzy_lr_distribution=distribution, seed=5, **WIDE, **options)
    return [layer.fuzzy_multipliers().flatten().double() for layer in model.bio_layers()]


def _ks(sorted_values: torch.Tensor, cdf) -> float:
    n = sorted_values.numel()
    empirical = torch.arange(1, n + 1, dtype=torch.float64) / n
    return (cdf(sorted_values) - empirical).abs().max().item() * math.sqrt(n)


def test_uniform_is_uniform_and_layers_are_independent():
    first, second = _f0(Distribution.UNIFORM)
    for f in (first, second):
        assert 0.8 <= f.min() and f.max() <= 1.2
        assert _ks(torch.sort(f).values, lambda x: (x - 0.8) / 0.4) < 1.63  # KS, 1 % level
    n = second.numel()
    corr = torch.corrcoef(torch.stack([first[:n], second]))[0, 1].item()
    assert abs(corr) < 4 / math.sqrt(n)


@pytest.mark.parametrize("distribution", [Distribution.NORMAL, Distribution.LOGNORMAL])
def test_normal_and_lognormal(distribution):
    (f, _) = _f0(distribution)
    z = (f - 1.0) / 0.2 if distribution is Distribution.NORMAL else (torch.log(f) + 0.02) / 0.2
    normal_cdf = lambda x: 0.5 * torch.special.erfc(-x / math.sqrt(2))  # noqa: E731
    assert _ks(torch.sort(z).values, normal_cdf) < 1.63


def test_layer_adaptive_and_baseline():
    first, second = _f0(Distribution.LAYER_ADAPTIVE)
    nu = [0.2 * (1 - 0.5 * index / 2) for index in (0, 1)]  # ν_l = ν·(1 − 0.5·l/L), L = 2
    for f, nu_l in zip((first, second), nu):
        assert f.min() >= 1 - nu_l and f.max() <= 1 + nu_l and f.max() > 1 + 0.99 * nu_l
    assert all(torch.equal(f, torch.ones_like(f)) for f in _f0(Distribution.BASELINE))


def test_checkpoint_resumes_bit_for_bit():
    def fresh():
        return biofx.transform(mlp(), fuzzy_lr_storage="counter", automatic=ALL, seed=9)

    straight = fresh()
    train(straight, torch.optim.Adam(straight.parameters(), lr=0.05), 6)
    first = fresh()
    optimizer = torch.optim.Adam(first.parameters(), lr=0.05)
    train(first, optimizer, 3)
    saved = copy.deepcopy((first.state_dict(), optimizer.state_dict()))
    resumed = biofx.transform(mlp(), fuzzy_lr_storage="counter", automatic=ALL, seed=123)  # another key: loaded
    resumed.load_state_dict(saved[0])
    optimizer = torch.optim.Adam(resumed.parameters(), lr=0.05)
    optimizer.load_state_dict(saved[1])
    torch.manual_seed(1)
    for _ in range(3):
        torch.randn(16, 12)  # the batches the first 3 steps used
    for _ in range(3):
        optimizer.zero_grad()
        resumed(torch.randn(16, 12)).square().mean().backward()
        optimizer.step()
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_of_the_other_storage_is_a_clear_error():
    counter = biofx.transform(mlp(), fuzzy_lr_storage="counter", seed=0)
    stored = biofx.transform(mlp(), seed=0)
    with pytest.raises(RuntimeError, match="saved with fuzzy_lr_storage='buffer'.*transform the model with"):
        counter.load_state_dict(stored.state_dict())
    with pytest.raises(RuntimeError, match="saved with fuzzy_lr_storage='counter'"):
        stored.load_state_dict(counter.state_dict())


def test_compiled_gradient_mode_equals_eager():
    """f₀ recomputed inside the compiled backward graph (no graph break) gives eager's gradient."""
    counter, _ = pair(automatic=("fuzzy",), acts_on="gradient")
    compiled = torch.compile(copy.deepcopy(counter), fullgraph=True)
    x = torch.randn(8, 12)
    counter(x).square().sum().backward()
    compiled(x).square().sum().backward()
    for a, b in zip(counter.parameters(), compiled.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("distribution", [Distribution.GAMMA, Distribution.BETA, Distribution.WEIGHT_ADAPTIVE,
                                          Distribution.TEMPORAL, Distribution.ACTIVITY])  # fmt: skip
def test_distributions_it_cannot_recompute_are_an_error(distribution):
    with pytest.raises(ValueError, match=f"{distribution.name}.*fuzzy_lr_storage='buffer'"):
        biofx.BioConfig(fuzzy_lr_storage="counter", fuzzy_lr_distribution=distribution)
    with pytest.raises(ValueError, match="'buffer' or 'counter'"):
        biofx.BioConfig(fuzzy_lr_storage="float32")


def test_count_type_is_the_smallest_that_reaches_zero():
    assert fuzzy.dampening_count_type(0.6, 2.0) == (torch.uint8, 255)
    assert fuzzy.dampening_count_type(0.9, 2.0) == (torch.int16, 32767)
    assert fuzzy.dampening_count_type(0.9999, 2.0) == (torch.int32, 2**31 - 1)


@pytest.mark.parametrize("dampening", [0.6, 0.9, 0.999])
def test_power_of_the_count_is_d_to_the_c(dampening):
    dtype, cap = fuzzy.dampening_count_type(dampening, 2.0)
    c = torch.cat([torch.arange(300), torch.randint(0, cap, (2000,))]).clamp(max=cap).to(dtype)
    got = fuzzy._power(dampening, c, cap).double()
    expected = torch.tensor(dampening, dtype=torch.float64) ** c.double()
    normal = expected > 1e-30  # (float32's subnormal range aside)
    torch.testing.assert_close(got[normal], expected[normal], rtol=1e-6, atol=0)
    assert (got[~normal] < 1e-29).all()


def _recomputed_f(layer):
    """f₀·d^c computed here from the layer's own draw and counts (independent of the skip)."""
    law = layer.fuzzy_law
    f0 = fuzzy.drawn(layer.weight.numel(), layer._multipliers(None).seed, law)
    return (f0 * law[4] ** layer.fuzzy_dampenings.reshape(-1).double()).float().view(layer.weight.shape)


def test_untouched_counts_skip_the_power_and_any_write_ends_the_skip():
    """While every count is known to be 0 (fresh, reset, moved), f = f₀ and d^c is skipped;
    a crystallization, an in-place edit, ``.data =``, a load or a new buffer end the skip, and
    f is then f₀·d^c again."""
    bio = biofx.transform(mlp(), fuzzy_lr_storage="counter", automatic=("fuzzy",), seed=3)
    layer = bio.bio_layers()[0]
    assert layer._multipliers(None).dampened is False
    torch.testing.assert_close(layer.fuzzy_multipliers(), _recomputed_f(layer))
    bio.to(torch.device("cpu"))  # a move keeps the note
    assert layer._multipliers(None).dampened is False

    layer.fuzzy_dampenings[0, :5] = 3  # an in-place edit
    assert layer._multipliers(None).dampened is True
    torch.testing.assert_close(layer.fuzzy_multipliers(), _recomputed_f(layer))
    assert layer.fuzzy_multipliers()[0, 0] < layer.fuzzy_multipliers()[1, 0] * 0.6**2  # d³ applied

    layer.reset_bio_state()  # zeroed again: skipped again
    assert layer._multipliers(None).dampened is False
    layer.fuzzy_dampenings.data = torch.full_like(layer.fuzzy_dampenings, 2)  # no version change
    assert layer._multipliers(None).dampened is True
    torch.testing.assert_close(layer.fuzzy_multipliers(), _recomputed_f(layer))

    source = biofx.transform(mlp(), fuzzy_lr_storage="counter", automatic=(), crystal_thresh=0.5, seed=3)
    source(torch.randn(8, 12)).square().sum().backward()
    source.crystallize()  # writes counts: no longer skipped
    crystallized = source.bio_layers()[0]
    assert crystallized.fuzzy_dampenings.any() and crystallized._multipliers(None).dampened is True
    for assign in (False, True):
        fresh = biofx.transform(mlp(), fuzzy_lr_storage="counter", seed=3)
        fresh.load_state_dict(source.state_dict(), assign=assign)
        loaded = fresh.bio_layers()[0]
        assert loaded._multipliers(None).dampened is True
        torch.testing.assert_close(loaded.fuzzy_multipliers(), crystallized.fuzzy_multipliers())
    assert copy.deepcopy(bio).bio_layers()[0]._multipliers(None).dampened is True  # a copy: not vouched for


def test_skipping_the_power_trains_as_the_buffer_does_with_compiled_kernels(fused_kernels):
    """Fuzzy rates alone (counts never written, the power skipped in the fused kernel) equal
    the buffer storage; crystallizing on top ends the skip mid-run and still matches."""
    from biofx import kernels

    kernels.set_enabled(True, after_calls=0)
    for automatic in (("fuzzy",), ("fuzzy", "crystallize")):
        counter, stored = pair(automatic=automatic, crystal_thresh=0.05)
        opts = [torch.optim.SGD(m.parameters(), lr=0.3) for m in (counter, stored)]
        for model, opt in zip((counter, stored), opts):
            train(model, opt, 4)
        for c, s in zip(counter.bio_layers(), stored.bio_layers()):
            torch.testing.assert_close(c.weight, s.weight, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(c.fuzzy_multipliers(), s.fuzzy_lr, rtol=1e-5, atol=1e-7)
        crystallized = any(layer.fuzzy_dampenings.any() for layer in counter.bio_layers())
        assert crystallized == ("crystallize" in automatic)
