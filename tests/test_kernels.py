"""Fused kernels equal the plain functions, and fall back cleanly when compiling fails."""

import copy
import logging

import pytest
import torch
import torch.nn as nn

import biofx
from biofx import kernels
from biofx.mechanisms import crystallize, fuzzy, rejuvenate, volume


def test_fused_equals_unfused(fused_kernels):
    w = torch.randn(37, 23)
    g = torch.randn(37, 23)
    f = torch.rand(37, 23) + 0.5
    key, step = torch.tensor(9), torch.tensor(4)
    kernels.set_enabled(False)
    unfused = volume.scale(g, w, volume.seed(key, step), 0.1, 2.0, 0.2)
    kernels.set_enabled(True, after_calls=0)
    torch.testing.assert_close(volume.scale(g, w, volume.seed(key, step), 0.1, 2.0, 0.2), unfused, rtol=1e-5, atol=1e-7)
    fused_f, unfused_f = f.reshape(-1).clone(), f.reshape(-1).clone()
    crystallize.crystallize_flat_(fused_f, w.reshape(-1), g.reshape(-1), 0.5, 0.6)
    crystallize.crystallize_flat_.unfused(unfused_f, w.reshape(-1), g.reshape(-1), 0.5, 0.6)
    torch.testing.assert_close(fused_f, unfused_f)
    assert not torch.equal(fused_f, f.reshape(-1))  # some multipliers were dampened, in place
    new, count = rejuvenate.rejuvenated(w, 8.0, key, step)
    kernels.set_enabled(False)
    new_u, count_u = rejuvenate.rejuvenated(w, 8.0, key, step)
    torch.testing.assert_close(new, new_u)
    assert int(count) == int(count_u) > 0
    # fuzzy_lr_storage="counter": f₀·d^c recomputed (a normal f₀, counts up to the cap)
    counts = torch.randint(0, 256, (37 * 23,), dtype=torch.uint8)
    recomputed = fuzzy.Recomputed(counts, torch.tensor(77), ("normal", 0.2, 0.5, 2.0, 0.9, 255), 5)
    kernels.set_enabled(True, after_calls=0)
    f = fuzzy.values(recomputed)
    kernels.set_enabled(False)
    torch.testing.assert_close(f, fuzzy.values(recomputed), rtol=1e-6, atol=0)
    assert f.shape == (37 * 23,) and (f > 0).any() and (f < 2.0 * 0.9).any()


# plain SGD scales the gradient before the step, momentum SGD the update after it
PATHS = pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["gradient-before-step", "update-after-step"])


@PATHS
def test_training_with_fused_kernels_matches_plain_functions(fused_kernels, momentum):
    base = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    cfg = dict(automatic=("fuzzy", "volume", "crystallize"), rejuvenate_every=2, seed=1)
    runs = []
    for enabled in (True, False):
        kernels.set_enabled(enabled, after_calls=0)
        bio = biofx.transform(copy.deepcopy(base), **cfg)
        opt = torch.optim.SGD(bio.parameters(), lr=0.1, momentum=momentum)
        for step in range(3):
            opt.zero_grad()
            bio(torch.ones(4, 8) * step).square().mean().backward()
            opt.step()
        runs.append(bio.state_dict())
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=1e-5, atol=1e-6, msg=key)


def test_compile_failure_falls_back_with_warning(monkeypatch, fused_kernels):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)

    @kernels.fused
    def double(x):
        return 2 * x

    with pytest.warns(RuntimeWarning, match="unfused"):
        assert torch.equal(double(torch.ones(2)), torch.full((2,), 2.0))
    assert torch.equal(double(torch.ones(2)), torch.full((2,), 2.0))  # no second attempt, no warning


def test_tiered_compilation_waits_until_hot_and_says_so_once(monkeypatch, caplog):
    compiled_calls = []
    monkeypatch.setitem(kernels_state(), "announced", False)

    def fake_compile(fn, **kw):
        def run(*args):
            compiled_calls.append(args)
            return fn(*args)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    kernels.set_enabled(True, after_calls=3)
    try:

        @kernels.fused
        def inc(x):
            return x + 1

        @kernels.fused
        def dec(x):
            return x - 1

        with caplog.at_level(logging.INFO, logger="biofx"):
            for _ in range(5):
                inc(torch.zeros(1))
                dec(torch.zeros(1))
    finally:
        kernels.set_enabled(False, after_calls=200)
    assert len(compiled_calls) == 4  # calls 4 and 5 of each
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "compiling the fused step kernels now (after 3 eager calls" in warned[0].getMessage()


def kernels_state():
    from biofx import tiered_compile

    return tiered_compile._STATE


def test_set_enabled_validates():
    with pytest.raises(TypeError):
        kernels.set_enabled("yes")
    with pytest.raises(ValueError):
        kernels.set_enabled(True, after_calls=-1)


@PATHS
def test_in_place_kernels_write_back_non_contiguous_weights(fused_kernels, momentum):
    """A channels-last conv weight is not contiguous: the in-place step kernels work on a
    contiguous copy and write it back, so both layouts train alike."""
    kernels.set_enabled(True, after_calls=0)
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    x = torch.randn(4, 3, 6, 6)
    runs = []
    for channels_last in (False, True):
        model = copy.deepcopy(base)
        if channels_last:
            model[0].to(memory_format=torch.channels_last)
            assert not model[0].weight.is_contiguous()
        bio = biofx.transform(copy.deepcopy(model), automatic=("fuzzy", "volume", "crystallize"), seed=1)
        initial = bio.bio_layers()[0].fuzzy_lr.clone()
        opt = torch.optim.SGD(bio.parameters(), lr=0.5, momentum=momentum)
        for _ in range(3):
            opt.zero_grad()
            bio(x).square().mean().backward()
            opt.step()
        runs.append(bio)
    contiguous, strided = runs
    assert not torch.equal(contiguous.bio_layers()[0].fuzzy_lr, initial)  # crystallized
    for a, b in zip(contiguous.bio_layers(), strided.bio_layers()):
        torch.testing.assert_close(b.weight, a.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.fuzzy_lr, a.fuzzy_lr)


def test_one_compiled_kernel_serves_every_layer(fused_kernels):
    """A small Conv2d (108 weights) and a larger Linear (5,760) share one compiled kernel: the
    kernels take flat aliases that are not views (Dynamo guards a view's base layout: a 4-D and
    a 2-D weight compiled one each) and no reduction (mean|w| inside made Inductor guard on
    the size, ``size <= 4096``: the first layer's size decided which layers recompiled)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 40))
    # a base_lr no other test uses: the kernel's constants are new, so it compiles here
    bio = biofx.transform(copy.deepcopy(model), automatic=("fuzzy", "volume", "crystallize"), base_lr=0.0123, seed=0)
    optimizer = torch.optim.SGD(bio.parameters(), lr=0.1)
    before = counters["stats"]["unique_graphs"]
    for _ in range(2):
        optimizer.zero_grad()
        bio(torch.randn(2, 3, 8, 8)).square().sum().backward()
        optimizer.step()
    assert counters["stats"]["unique_graphs"] - before == 1


def test_kernel_scope_sets_the_kernel_settings_once_and_restores_them():
    """The step hooks enter the kernels' Dynamo settings once around all layers; a nested
    scope (a kernel call inside) neither re-enters nor restores them early."""
    from biofx import tiered_compile

    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    outside = (config.specialize_float, getattr(config, limit))
    assert outside != (True, 64)
    with tiered_compile.kernel_scope():
        assert (config.specialize_float, getattr(config, limit)) == (True, 64)
        with tiered_compile.kernel_scope():
            pass
        assert (config.specialize_float, getattr(config, limit)) == (True, 64)
    assert (config.specialize_float, getattr(config, limit)) == outside
