"""Mixed precision: autocast (bf16 on CPU, fp16 on CUDA) and models cast to bf16/fp16.

biofx.state promises that bio state stays float32 (multipliers, Dale signs, activity
statistics) and counters int64, whether the model runs under autocast or is cast with
``model.to(dtype)`` / ``model.half()``; the mechanisms compute in float32 and write
gradients in the gradient's dtype.
"""

import copy
import pytest
import torch
import torch.nn as nn

import biofx

from conftest import MLP, GeneralPathSGD

FULL = dict(automatic=("fuzzy", "volume", "crystallize", "scaling"), acts_on="gradient", apply_dales_principle=True,
            weight_splitting_Gamma=2, synaptic_scaling_gamma=0.05, seed=0)


def assert_state_dtypes(bio, device="cpu"):
    for layer in bio.bio_layers():
        for name, buffer in layer.named_buffers():
            expected = torch.int64 if name in ("rng_key", "step", "updates", "rejuvenations") else torch.float32
            assert buffer.dtype == expected, (layer.layer_name, name, buffer.dtype)
            assert buffer.device.type == device, (layer.layer_name, name)


def data(n=32, dtype=torch.float32, device="cpu"):
    """A learnable target: y = tanh(x·A)."""
    generator = torch.Generator().manual_seed(1)
    x, a = torch.randn(n, 6, generator=generator), torch.randn(6, 4, generator=generator)
    return x.to(device, dtype), torch.tanh(x @ a).to(device)


def train(bio, x, y, steps, autocast=None, scaler=None):
    optimizer = torch.optim.SGD(bio.parameters(), lr=0.05, momentum=0.9)  # Adam's eps underflows in fp16
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        with autocast or torch.autocast("cpu", enabled=False):
            loss = nn.functional.mse_loss(bio(x).float(), y)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        losses.append(loss.item())
    return losses


def test_autocast_bf16_on_cpu_trains_and_keeps_state_float32():
    torch.manual_seed(0)
    bio = biofx.transform(MLP((6, 16, 4)), **FULL)
    x, y = data()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    with autocast:
        assert bio(x).dtype == torch.bfloat16  # autocast is really on
    losses = train(bio, x, y, 20, autocast)
    assert losses[-1] < 0.9 * losses[0]
    assert_state_dtypes(bio)
    for layer in bio.bio_layers():
        assert layer.weight.dtype == torch.float32 and torch.isfinite(layer.fuzzy_lr).all()
        assert int(layer.step) == 20 and layer.activity_mean.abs().sum() > 0


def test_neutral_transform_under_autocast_is_bit_identical():
    model = MLP()
    x = torch.randn(5, 6)
    bio = biofx.transform(copy.deepcopy(model), fuzzy_lr_distribution="baseline")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(bio(x), model(x))


@pytest.mark.parametrize("cast", ["to_bfloat16", "half"])
def test_cast_model_keeps_state_float32_and_trains(cast):
    dtype = torch.bfloat16 if cast == "to_bfloat16" else torch.float16
    torch.manual_seed(0)
    model = MLP((6, 16, 4))
    bio = biofx.transform(model, **{**FULL, "automatic": ("fuzzy", "volume")})
    bio = bio.half() if cast == "half" else bio.to(dtype)
    assert bio is model and bio.fc1.weight.dtype == dtype
    assert_state_dtypes(bio)
    x, y = data(dtype=dtype)
    losses = train(bio, x, y, 15)
    assert losses[-1] < 0.9 * losses[0]
    assert_state_dtypes(bio)
    for layer in bio.bio_layers():
        assert layer.weight.dtype == dtype and layer.weight.grad.dtype == dtype
        assert torch.isfinite(layer.weight).all()
    bio.crystallize()
    bio.scale_grad()
    bio.enforce_dales_principle()
    assert int(bio.rejuvenate_weights()) >= 0
    assert_state_dtypes(bio)


def test_cast_model_fuzzy_gradient_is_computed_in_float32():
    """bf16 weights: grad = (g.float()·f).to(bf16) with f float32, not g·f.to(bf16)."""
    torch.manual_seed(0)
    model = MLP().to(torch.bfloat16)
    x = torch.randn(8, 6, dtype=torch.bfloat16)
    model(x).float().square().sum().backward()
    plain = {n: p.grad for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    bio = biofx.transform(copy.deepcopy(model), seed=0, fuzzy_learning_rate_factor_nu=0.4, acts_on="gradient")
    bio(x).float().square().sum().backward()
    for layer in bio.bio_layers():
        g = plain[f"{layer.layer_name}.weight"]
        assert torch.equal(layer.weight.grad, (g.float() * layer.fuzzy_lr).to(torch.bfloat16))


@pytest.mark.parametrize("sgd", [torch.optim.SGD, GeneralPathSGD], ids=["plain-sgd", "general"])
def test_bf16_update_mode_rescales_in_float32(sgd):
    """acts_on="update" with bf16 weights: the general path rescales the bf16 step in float32,
    w ← (w₀ + f·(w₁ − w₀) in float32).to(bf16); plain SGD steps with the gradient scaled in
    float32, w ← w₀ − lr·(g·f).to(bf16)."""
    model = MLP().to(torch.bfloat16)
    bio = biofx.transform(copy.deepcopy(model), seed=0, fuzzy_learning_rate_factor_nu=0.4)
    optimizer = sgd(bio.parameters(), lr=0.5)
    before = {layer.layer_name: layer.weight.detach().clone() for layer in bio.bio_layers()}
    bio(torch.randn(8, 6, dtype=torch.bfloat16)).float().square().sum().backward()
    grads = {name: bio.get_parameter(f"{name}.weight").grad.clone() for name in before}
    optimizer.step()
    for layer in bio.bio_layers():
        w0, g, f = before[layer.layer_name], grads[layer.layer_name], layer.fuzzy_lr
        assert layer.weight.dtype == torch.bfloat16 and f.dtype == torch.float32
        if sgd is GeneralPathSGD:
            w1 = (w0.float() - 0.5 * g.float()).to(torch.bfloat16).float()
            expected = (w0.float() + f * (w1 - w0.float())).to(torch.bfloat16)
        else:
            expected = (w0.float() - 0.5 * (g.float() * f).to(torch.bfloat16).float()).to(torch.bfloat16)
        assert torch.equal(layer.weight, expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_fp16_on_cuda_trains_and_keeps_state_float32():
    torch.manual_seed(0)
    bio = biofx.transform(MLP((6, 16, 4)), **FULL).cuda()
    x, y = data(device="cuda")
    autocast = torch.autocast("cuda", dtype=torch.float16)
    with autocast:
        assert bio(x).dtype == torch.float16
    losses = train(bio, x, y, 20, autocast, torch.amp.GradScaler("cuda"))
    assert losses[-1] < 0.9 * losses[0]
    assert_state_dtypes(bio, "cuda")
    for layer in bio.bio_layers():
        assert layer.weight.dtype == torch.float32 and torch.isfinite(layer.weight).all()
        assert int(layer.step) >= 15  # GradScaler may skip the first steps (inf checks)
