"""Fuzzy learning rates: distributions, gradient effect through the graph, dynamic updates."""

import copy
import math

import pytest
import torch
import torch.nn as nn

import biofx
from biofx import Distribution

NU = 0.2
WIDE = dict(fuzzy_lr_min=1e-3, fuzzy_lr_max=10.0)


def big_mlp():
    return nn.Sequential(nn.Linear(200, 300), nn.ReLU(), nn.Linear(300, 100))


def multipliers(bio, index=0):
    return bio.bio_layers()[index].fuzzy_lr


def grads_after_backward(model, x):
    model.zero_grad()
    model(x).square().sum().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("dist", list(Distribution))
def test_gradient_is_plain_gradient_times_multiplier(dist):
    plain = big_mlp()
    bio = biofx.transform(
        copy.deepcopy(plain), fuzzy_lr_distribution=dist, fuzzy_learning_rate_factor_nu=NU, acts_on="gradient", seed=3
    )
    x = torch.randn(16, 200)
    g_plain = dict(zip([n for n, _ in plain.named_parameters()], grads_after_backward(plain, x)))
    bio(x).square().sum().backward()
    for layer in bio.bio_layers():
        name = layer.layer_name
        expected = g_plain[f"{name}.weight"] * layer.fuzzy_lr
        torch.testing.assert_close(layer.weight.grad, expected, rtol=1e-6, atol=1e-7)
        # biases are untouched
        torch.testing.assert_close(layer.layer.bias.grad, g_plain[f"{name}.bias"], rtol=0, atol=0)


def stats(f):
    return f.mean().item(), f.std().item()


@pytest.mark.parametrize(
    "dist,std",
    [
        (Distribution.UNIFORM, NU / math.sqrt(3)),
        (Distribution.TEMPORAL, NU / math.sqrt(3)),
        (Distribution.NORMAL, NU),
        (Distribution.LOGNORMAL, math.sqrt(math.exp(NU**2) - 1)),
        (Distribution.GAMMA, NU),
        (Distribution.BETA, NU / math.sqrt(2 / NU + 1)),
    ],
)
def test_distribution_mean_one_and_std(dist, std):
    bio = biofx.transform(big_mlp(), fuzzy_lr_distribution=dist, fuzzy_learning_rate_factor_nu=NU, seed=1, **WIDE)
    mean, measured = stats(multipliers(bio))  # 60 000 samples: SE(mean) ~ 1e-3
    assert abs(mean - 1.0) < 5e-3
    assert measured == pytest.approx(std, rel=0.03)


def test_uniform_and_beta_bounds():
    for dist in (Distribution.UNIFORM, Distribution.BETA):
        f = multipliers(biofx.transform(big_mlp(), fuzzy_lr_distribution=dist, fuzzy_learning_rate_factor_nu=NU, **WIDE))
        assert f.min() >= 1 - NU and f.max() <= 1 + NU


def test_baseline_and_activity_start_at_one():
    for dist in (Distribution.BASELINE, Distribution.ACTIVITY):
        assert torch.equal(multipliers(biofx.transform(big_mlp(), fuzzy_lr_distribution=dist)), torch.ones(300, 200))


def test_clamped_to_min_max():
    f = multipliers(biofx.transform(big_mlp(), fuzzy_lr_distribution="normal", fuzzy_learning_rate_factor_nu=2.0,
                                    fuzzy_lr_min=0.7, fuzzy_lr_max=1.3))
    assert f.min().item() == pytest.approx(0.7) and f.max().item() == pytest.approx(1.3)


def test_layer_adaptive_uses_execution_order():
    model = nn.Sequential(nn.Linear(50, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 400))
    bio = biofx.transform(copy.deepcopy(model), fuzzy_lr_distribution="layer_adaptive", fuzzy_learning_rate_factor_nu=NU, **WIDE)
    for layer in bio.bio_layers():
        nu_l = NU * (1 - 0.5 * layer.index / 3)
        spread = (layer.fuzzy_lr - 1).abs()
        assert spread.max() <= nu_l + 1e-6
        assert spread.max() > 0.98 * nu_l  # reaches its own bound, not the previous layer's


def test_weight_adaptive_spread_follows_weight_size():
    model = big_mlp()
    w = model[0].weight.detach().clone()
    bio = biofx.transform(copy.deepcopy(model), fuzzy_lr_distribution="weight_adaptive", fuzzy_learning_rate_factor_nu=NU, **WIDE)
    bound = NU * torch.clamp(2 - w.abs() / (w.abs().mean() + 1e-8), 0.5, 1.5)
    assert ((multipliers(bio) - 1).abs() <= bound + 1e-6).all()
    small = w.abs() < 0.3 * w.abs().mean()
    large = w.abs() > 1.8 * w.abs().mean()
    assert (multipliers(bio) - 1)[small].abs().mean() > 2 * (multipliers(bio) - 1)[large].abs().mean()


def test_seed_reproducible_and_layers_differ():
    a = biofx.transform(big_mlp(), seed=7)
    b = biofx.transform(big_mlp(), seed=7)
    c = biofx.transform(big_mlp(), seed=8)
    assert torch.equal(multipliers(a), multipliers(b))
    assert not torch.equal(multipliers(a), multipliers(c))


def test_temporal_decay_and_noise():
    bio = biofx.transform(big_mlp(), fuzzy_lr_distribution="temporal", fuzzy_lr_dynamic=True, automatic=(),
                          fuzzy_lr_update_freq=2, fuzzy_lr_decay=0.9, fuzzy_learning_rate_factor_nu=NU, **WIDE)
    f0 = multipliers(bio).clone()
    bio.update_fuzzy_learning_rates()  # update 1: not due
    torch.testing.assert_close(multipliers(bio), f0)
    bio.update_fuzzy_learning_rates()  # update 2: decay
    f2 = 1 + (f0 - 1) * 0.9
    torch.testing.assert_close(multipliers(bio), f2)
    for _ in range(18):  # update 20 = 10th due update: decay plus noise 0.1·U(-ν, ν)
        bio.update_fuzzy_learning_rates()
    decayed = 1 + (f0 - 1) * 0.9**10
    noise = multipliers(bio) - decayed
    assert noise.abs().max() <= 0.1 * NU + 1e-5
    assert noise.std() == pytest.approx(0.1 * NU / math.sqrt(3), rel=0.05)


def test_activity_counts_own_output_and_redraws_rows():
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 32))
    bio = biofx.transform(copy.deepcopy(model), fuzzy_lr_distribution="activity", fuzzy_lr_dynamic=True, automatic=(),
                          fuzzy_learning_rate_factor_nu=NU, **WIDE)
    x = torch.randn(50, 10)
    out0 = model[0](x)  # the first layer's own output (not the model input)
    out2 = model[2](torch.relu(out0))
    bio(x)
    bio.update_fuzzy_learning_rates()
    for layer, out in zip(bio.bio_layers(), (out0, out2)):
        counts = (out.abs() > 0.01).float().sum(0)
        torch.testing.assert_close(layer.activity_count, counts)
        a = torch.clamp(1 + 0.1 * (counts / (counts.mean() + 1e-8) - 1), 0.8, 1.2)
        nu_i = NU * (2 - a)
        spread = (layer.fuzzy_lr - 1).abs()
        assert (spread <= nu_i[:, None] + 1e-6).all()
        assert not torch.equal(layer.fuzzy_lr, torch.ones_like(layer.fuzzy_lr))


def test_activity_not_counted_in_eval_mode():
    bio = biofx.transform(big_mlp(), fuzzy_lr_distribution="activity", fuzzy_lr_dynamic=True)
    bio.eval()
    bio(torch.randn(4, 200))
    assert bio.bio_layers()[0].activity_active.sum() == 0


def _one_step(model, optimizer_type, x, **kwargs):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = optimizer_type(model.parameters(), **kwargs)
    optimizer.zero_grad()
    model(x).square().mean().backward()
    optimizer.step()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


@pytest.mark.parametrize("optimizer_type, kwargs", [
    (torch.optim.Adam, dict(lr=1e-2)),
    (torch.optim.RMSprop, dict(lr=1e-2)),
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
])
def test_update_mode_gives_every_weight_its_fuzzy_rate_under_any_optimizer(optimizer_type, kwargs):
    """``acts_on="update"`` (the default): Δw = f·Δw_plain, the configured per-weight rate."""
    plain = big_mlp()
    bio = biofx.transform(copy.deepcopy(plain), fuzzy_learning_rate_factor_nu=0.5, seed=2)
    x = torch.randn(16, 200)
    step_plain, step_bio = _one_step(plain, optimizer_type, x, **kwargs), _one_step(bio, optimizer_type, x, **kwargs)
    for layer in bio.bio_layers():
        name = f"{layer.layer_name}.weight"
        torch.testing.assert_close(step_bio[name], layer.fuzzy_lr * step_plain[name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(step_bio[name.replace("weight", "bias")], step_plain[name.replace("weight", "bias")])


def test_gradient_mode_is_cancelled_by_adam():
    """Why update mode exists: under Adam a fixed factor on g changes (almost) nothing."""
    plain = big_mlp()
    bio = biofx.transform(copy.deepcopy(plain), fuzzy_learning_rate_factor_nu=0.5, acts_on="gradient", seed=2)
    x = torch.randn(16, 200)
    step_plain, step_bio = _one_step(plain, torch.optim.Adam, x, lr=1e-2), _one_step(bio, torch.optim.Adam, x, lr=1e-2)
    layer = bio.bio_layers()[0]
    name = f"{layer.layer_name}.weight"
    assert (layer.fuzzy_lr - 1).abs().mean() > 0.2  # f really differs from 1 ...
    moved = step_plain[name].abs() > 5e-3  # Adam's first step is ±lr wherever |g| >> eps
    assert moved.float().mean() > 0.95
    ratio = step_bio[name][moved] / step_plain[name][moved]
    # ... yet the step is plain's (but where |g| is near Adam's eps)
    assert ((ratio - 1).abs() < 1e-3).float().mean() > 0.98


def test_update_mode_equals_gradient_mode_under_plain_sgd():
    plain = big_mlp()
    models = [biofx.transform(copy.deepcopy(plain), acts_on=mode, seed=2) for mode in ("update", "gradient")]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in models]
    for _ in range(5):
        x = torch.randn(16, 200)
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
