"""Gradient accumulation: k micro-batches of b samples give what one batch of k·b gives.

Mechanisms that depend on the step's whole gradient (crystallization, synaptic scaling) run
once per optimizer step on the accumulated gradient, the linear ones (fuzzy, volume) scale
every micro-batch's gradient by the same factor (volume noise is keyed by the step, not the
micro-batch), and activity statistics are counted per sample and folded once per step. So
the bio state (fuzzy rates after crystallization, activity statistics, counters) and the
parameters agree with the full batch up to float32 summation order.
"""

import pytest
import torch
import torch.nn as nn

import biofx

from conftest import MLP, conv_input, conv_model
import _explicit as explicit

K, B, STEPS = 4, 4, 3

CONFIGS = {
    "automatic": dict(automatic=("fuzzy", "volume", "crystallize", "scaling"), synaptic_scaling_gamma=0.05,
                      crystal_thresh=0.02),
    "explicit": dict(automatic=(), synaptic_scaling_gamma=0.05, apply_dales_principle=True, crystal_thresh=0.02),
    "activity": dict(fuzzy_lr_distribution="activity", fuzzy_lr_dynamic=True, fuzzy_lr_update_freq=1,
                     automatic=("fuzzy", "crystallize")),
}
MODELS = {
    "mlp": (MLP, lambda n: torch.randn(n, 6), lambda n: torch.randn(n, 4)),
    "conv2d": (lambda: conv_model(2), lambda n: conv_input(2, batch=n), lambda n: torch.randn(n, 2, 5, 5)),
}


def run(model_name, mode, micro_batches, momentum=0.9):
    make, make_x, make_y = MODELS[model_name]
    torch.manual_seed(0)
    bio = biofx.transform(make(), seed=2, **CONFIGS[mode])
    optimizer = torch.optim.SGD(bio.parameters(), lr=0.05, momentum=momentum)
    generator_state = torch.random.get_rng_state()
    trajectory = []
    for _ in range(STEPS):
        x, y = make_x(K * B), make_y(K * B)
        optimizer.zero_grad()
        for xs, ys in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
            (nn.functional.mse_loss(bio(xs), ys) / micro_batches).backward()
        if mode == "explicit":
            explicit.before_step(bio)
        optimizer.step()
        trajectory.append({k: v.clone() for k, v in bio.state_dict().items()})
    torch.random.set_rng_state(generator_state)
    return trajectory


# plain SGD scales the gradient before the step; with momentum the update is rescaled after it
@pytest.mark.parametrize("momentum", [0.9, 0.0], ids=["update-after-step", "gradient-before-step"])
@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("mode", list(CONFIGS))
def test_k_micro_batches_equal_one_batch(model_name, mode, momentum):
    accumulated = run(model_name, mode, K, momentum)
    whole = run(model_name, mode, 1, momentum)
    for step, (a, b) in enumerate(zip(accumulated, whole)):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"step {step}: {key}")
    # the comparison is not vacuous: the state moved
    initial = biofx.transform(MODELS[model_name][0](), seed=2, **CONFIGS[mode]).state_dict()
    last = whole[-1]
    fuzzy = [k for k in last if k.endswith("fuzzy_lr")]
    assert any(not torch.equal(last[k], initial[k]) for k in fuzzy)
    assert all(int(last[k]) == STEPS for k in last if k.endswith(".step"))
    activity = [k for k in last if k.endswith("activity_mean") or k.endswith("activity_count")]
    assert activity and all(last[k].abs().sum() > 0 for k in activity)


def test_accumulation_differs_from_crystallizing_every_micro_batch():
    """Control: crystallizing on each micro-batch's gradient (a per-backward rule) gives other rates."""
    torch.manual_seed(0)
    bio = biofx.transform(MLP(), seed=2, automatic=())
    x, y = torch.randn(K * B, 6), torch.randn(K * B, 4)
    per_micro = biofx.transform(MLP(), seed=2, automatic=())
    per_micro.load_state_dict(bio.state_dict())
    nn.functional.mse_loss(bio(x), y).backward()
    bio.crystallize()
    for xs, ys in zip(x.chunk(K), y.chunk(K)):
        per_micro.zero_grad()
        nn.functional.mse_loss(per_micro(xs), ys).backward()
        per_micro.crystallize()
    assert any(not torch.equal(a.fuzzy_lr, b.fuzzy_lr) for a, b in zip(bio.bio_layers(), per_micro.bio_layers()))
