"""CUDA: no host-device sync in a training step, same numbers as the CPU, compiled = eager.

Skipped without a GPU; ``tools/gpu_check.sh`` runs these on a GPU machine.
"""

import copy

import pytest
import torch
import torch.nn as nn

import biofx

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

EVERYTHING = dict(
    automatic=("fuzzy", "volume", "crystallize", "scaling"),
    weight_splitting_Gamma=2,
    apply_dales_principle=True,
    synaptic_scaling_gamma=0.01,
    rejuvenate_every=2,
    fuzzy_lr_distribution="temporal",
    fuzzy_lr_dynamic=True,
    fuzzy_lr_update_freq=1,
    seed=0,
)


def model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(),
                         nn.Linear(16, 4))


def train(bio, x, steps=4, explicit=False):
    opt = torch.optim.SGD(bio.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        bio(x).square().mean().backward()
        if explicit:
            bio.volume_dependent_lr()
            bio.fuzzy_learning_rates()
            bio.crystallize()
            bio.scale_grad()
            bio.update_fuzzy_learning_rates()
        opt.step()
        if explicit:
            bio.rejuvenate_weights()
            bio.enforce_dales_principle()


@pytest.mark.parametrize("explicit", [False, True])
def test_training_step_has_no_host_sync(explicit):
    cfg = dict(EVERYTHING, automatic=()) if explicit else EVERYTHING
    bio = biofx.transform(model().cuda(), **cfg)
    x = torch.randn(4, 3, 6, 6, device="cuda")
    train(bio, x, steps=1, explicit=explicit)  # warm up allocations and lazy init
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train(bio, x, steps=3, explicit=explicit)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_matches_cpu():
    base = model()
    cpu = biofx.transform(copy.deepcopy(base), **EVERYTHING)
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(4, 3, 6, 6)
    train(cpu, x)
    train(gpu, x.cuda())
    for (name, a), (_, b) in zip(cpu.state_dict().items(), gpu.state_dict().items()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-5, msg=name)


def test_bio_state_follows_the_model_to_cuda():
    bio = biofx.transform(model(), **EVERYTHING).cuda()
    for layer in bio.bio_layers():
        assert all(b.is_cuda for b in layer.buffers())
        assert layer.fuzzy_lr.dtype == torch.float32


def test_compiled_equals_eager_on_cuda():
    eager = biofx.transform(model().cuda(), **EVERYTHING)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, fullgraph=True)
    x = torch.randn(4, 3, 6, 6, device="cuda")
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.05)
    opt_c = torch.optim.SGD(twin.parameters(), lr=0.05)
    for _ in range(3):
        for net, opt in ((eager, opt_e), (compiled, opt_c)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for (name, a), (_, b) in zip(eager.state_dict().items(), twin.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("acts_on", ["update", "gradient"])
def test_cuda_graphs_equal_eager(acts_on):
    """``mode="reduce-overhead"`` replays forward and backward as CUDA graphs: the bio nodes'
    device state (step counters read by the volume noise, activity and fuzzy buffers written in
    the graph) must advance as in eager mode, step after step."""
    cfg = dict(EVERYTHING, acts_on=acts_on)
    eager = biofx.transform(model().cuda(), **cfg)
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, mode="reduce-overhead", fullgraph=True)
    x = torch.randn(4, 3, 6, 6, device="cuda")
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.05)
    opt_c = torch.optim.SGD(twin.parameters(), lr=0.05)
    for _ in range(6):  # past cudagraph trees' warm-up and recording runs, into replays
        for net, opt in ((eager, opt_e), (compiled, opt_c)):
            torch.compiler.cudagraph_mark_step_begin()
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for (name, a), (_, b) in zip(eager.state_dict().items(), twin.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_autocast_fp16_keeps_bio_state_float32():
    bio = biofx.transform(model().cuda(), **EVERYTHING)
    opt = torch.optim.SGD(bio.parameters(), lr=0.05)
    x = torch.randn(4, 3, 6, 6, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = bio(x).float().square().mean()
    loss.backward()
    opt.step()
    for layer in bio.bio_layers():
        assert layer.fuzzy_lr.dtype == torch.float32 and torch.isfinite(layer.fuzzy_lr).all()
