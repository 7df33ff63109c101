"""DistributedDataParallel: every rank holds the same bio state, equal to one process on the full batch.

Two processes (``gloo`` on 127.0.0.1, a free port, spawned, bounded by a timeout) train a
bio MLP wrapped in DDP, each on its half of every batch, and record the state after every
step. A single process trains the same model on the full batches. Two paths:

* **explicit** (``automatic=()``): after ``loss.backward()`` the user calls
  ``fuzzy_learning_rates()``, ``volume_dependent_lr()``, ``crystallize()``, ``scale_grad()``
  and, after the step, ``rejuvenate_weights()``. DDP has already averaged ``.grad`` when
  backward returns, so the methods act on the same full-batch gradient on every rank, and
  their random draws are counter-based (keyed by layer and step), so they agree without
  communication. Activity statistics are summed over ranks when folded.
* **automatic** (fuzzy and volume in the backward graph, crystallize and scaling in the
  optimizer-step hooks): fuzzy and volume scale each rank's gradient before DDP's all-reduce;
  being the same linear factor on every rank, ``mean_r(g_r·f·v) = f·v·mean_r(g_r)``.
  Also without scaling (no activity statistics), and the explicit path with each rank
  accumulating two micro-batches under ``DDP.no_sync``.

What "equal" means. Ranks agree bit for bit (``torch.equal``). Against one process, the only
difference is floating-point summation order: DDP averages the two half-batch gradients
``(g_0 + g_1)/2`` while one forward over the full batch sums all samples at once. The single
process that forwards the two halves separately and accumulates their losses divided by 2
computes exactly DDP's sums (two operands, scaling by 1/2 is exact), so it must match bit for
bit. The single-forward run (and, with accumulation, every run) must match to float32
rounding; crystallization compares ``|g|`` with thresholds, so it too could differ only for
a gradient within rounding of a threshold.
"""

import contextlib
import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

import biofx
import biofx.kernels
from _spawn import free_port, run_workers
import _explicit as explicit

pytestmark = [
    pytest.mark.slow,  # two spawned processes: about 10-20 s
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
]

WORLD = 2
STEPS = 3
HALF = 8
TIMEOUT_S = 120

CONFIGS = {
    "explicit": dict(automatic=(), synaptic_scaling_gamma=0.05, apply_dales_principle=True, seed=1),
    "automatic": dict(
        automatic=("fuzzy", "volume", "crystallize", "scaling"), synaptic_scaling_gamma=0.05,
        apply_dales_principle=True, seed=1,
    ),
    # no activity statistics, so no collective in the optimizer-step hooks
    "automatic-no-scaling": dict(automatic=("fuzzy", "volume", "crystallize"), apply_dales_principle=True, seed=1),
}
# modes whose ranks accumulate their half batch over 2 micro-batches (DDP.no_sync on the first)
CONFIGS["explicit-accumulation"] = CONFIGS["explicit"]
MICRO = {"explicit-accumulation": 2}
WIDTH = 8


class Net(nn.Module):
    """Three Linear(8, 8). ``ids_ascending=False`` puts the layer objects' ids (memory addresses)
    against execution order, as a process whose allocations differ may: every rank must still act
    on its layers in the same order (the per-layer all_reduce of the activity statistics; with
    equal-sized layers a wrong order would silently mix layers' statistics)."""

    def __init__(self, ids_ascending=True):
        super().__init__()
        layers = sorted((nn.Linear(WIDTH, WIDTH) for _ in range(3)), key=id, reverse=not ids_ascending)
        self.fc1, self.fc2, self.out = layers
        for layer in layers:  # weights by position, whatever the addresses
            layer.reset_parameters()

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def make(mode, ids_ascending=True):
    torch.manual_seed(0)
    bio = biofx.transform(Net(ids_ascending), **CONFIGS[mode])
    return bio, torch.optim.SGD(bio.parameters(), lr=0.1, momentum=0.9)


def batches():
    generator = torch.Generator().manual_seed(7)
    return [(torch.randn(WORLD * HALF, WIDTH, generator=generator), torch.randn(WORLD * HALF, WIDTH, generator=generator))
            for _ in range(STEPS)]


def train_step(mode, model, optimizer, micro_batches, no_sync=None):
    """One optimizer step over ``micro_batches`` (losses divided by their number, gradients accumulated)."""
    optimizer.zero_grad()
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with no_sync() if no_sync is not None and not last else contextlib.nullcontext():
            (nn.functional.mse_loss(model(x), y) / len(micro_batches)).backward()
    bio = getattr(model, "module", model)  # DDP wraps the bio model
    if mode.startswith("explicit"):
        explicit.before_step(bio)
    optimizer.step()
    if mode.startswith("explicit"):
        bio.rejuvenate_weights()
    return {k: v.clone() for k, v in bio.state_dict().items()}


def chunks(x, y, n):
    return list(zip(x.chunk(n), y.chunk(n)))


def _worker(rank, port, out_dir, fused):
    """Train every mode in turn; save each trajectory when done.

    Rank 1 builds its layers with their ids against execution order (see :class:`Net`).
    """
    torch.set_num_threads(1)
    biofx.kernels.set_enabled(fused)  # as in this process: fused and plain kernels differ in the last bits
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        for mode in CONFIGS:
            bio, optimizer = make(mode, ids_ascending=rank == 0)
            ddp = DistributedDataParallel(bio)
            trajectory = [
                train_step(mode, ddp, optimizer, chunks(x.chunk(WORLD)[rank], y.chunk(WORLD)[rank], MICRO.get(mode, 1)),
                           ddp.no_sync)
                for x, y in batches()
            ]
            torch.save(trajectory, os.path.join(out_dir, f"{mode}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Run the two ranks once (bounded by TIMEOUT_S); return their output folder and any failure."""
    out_dir = str(tmp_path_factory.mktemp("ddp"))
    failure = run_workers(_worker, (free_port(), out_dir, biofx.kernels.enabled()), WORLD, TIMEOUT_S, "DDP")
    return out_dir, failure


@pytest.fixture(
    params=["explicit", "automatic", "automatic-no-scaling", "explicit-accumulation"],
)
def ranks(request, spawned):
    """``(mode, per rank: the state_dict after every step)``."""
    mode, (out_dir, failure) = request.param, spawned
    paths = [os.path.join(out_dir, f"{mode}-rank{r}.pt") for r in range(WORLD)]
    if not all(map(os.path.exists, paths)):
        pytest.fail(f"DDP run of mode {mode!r} did not finish: {failure}")
    return mode, [torch.load(path, weights_only=True) for path in paths]


def single_process(mode, micro):
    bio, optimizer = make(mode)
    return [train_step(mode, bio, optimizer, chunks(x, y, micro)) for x, y in batches()]


def test_ranks_hold_identical_state_after_every_step(ranks):
    mode, (rank0, rank1) = ranks
    for step, (a, b) in enumerate(zip(rank0, rank1, strict=True)):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (step, key)
    keys = rank0[0].keys()
    assert any(k.endswith("fuzzy_lr") for k in keys)
    assert any(k.endswith("activity_mean") for k in keys) == (mode != "automatic-no-scaling")


def test_ddp_equals_one_process_on_the_full_batch(ranks):
    mode, (rank0, _) = ranks
    micro = MICRO.get(mode, 1)
    # the same sums as DDP (exact) exist only without accumulation: (g_0 + g_1)/2 from two micro-batches
    exact = single_process(mode, WORLD) if micro == 1 else None
    full = single_process(mode, 1)
    initial = make(mode)[0].state_dict()
    for step, ddp in enumerate(rank0):
        for key, value in ddp.items():
            if exact is not None:
                assert torch.equal(value, exact[step][key]), (step, key)
            torch.testing.assert_close(value, full[step][key], rtol=1e-5, atol=1e-6, msg=f"{step} {key}")
    last = rank0[-1]
    assert int(last["fc1.biofx_state.step"]) == STEPS
    multipliers = [k for k in last if k.endswith("fuzzy_lr")]
    assert any(not torch.equal(last[k], initial[k]) for k in multipliers)  # crystallization acted
    assert not torch.equal(last["fc1.weight"], initial["fc1.weight"])
