"""FSDP2 (``fully_shard``): each rank acts on its shard; gathered, weights and bio state equal one process's.

Two processes (``gloo`` on 127.0.0.1, a free port, spawned, bounded by a timeout) shard a bio
MLP with ``fully_shard(bio)`` on a 2-rank CPU mesh and train it, each on its half of every
batch; after every step they gather the state dict to full tensors (``full_tensor()``). A
single process trains the same model on the full batches. The layers' row counts are odd
(uneven shards: 3 + 2 rows) and one shard starts at an odd flat index (15), where a draw's
block of the counter-based generator straddles two shards.

What "equal" means: FSDP averages the two half-batch gradients (a reduce-scatter) where one
process sums the full batch, and mean|W| is a sum of two shards' sums: float32 rounding
(``rtol=1e-5, atol=1e-6``, as in ``tests/test_distributed.py``). Everything else a shard does
(the multipliers of its rows, the random draws at its flat indices, max|W|) is exact. Ranks
must agree bit for bit on the gathered tensors.
"""

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import biofx
import biofx.kernels
from _spawn import free_port, run_workers
from biofx.config import BioConfig, ConfigMap, Distribution
from biofx.state import PER_WEIGHT_BUFFERS
import _explicit as explicit

pytestmark = [
    pytest.mark.slow,  # two spawned processes: about 10-20 s
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
]

WORLD = 2
STEPS = 4
HALF = 8
TIMEOUT_S = 120

COMMON = dict(seed=1, rejuvenate_every=2, apply_dales_principle=True)  # automatic rejuvenation every 2nd step
CONFIGS = {
    # the default acts_on="update": fuzzy, volume and crystallization on each shard's update
    "update": dict(COMMON, automatic=("fuzzy", "volume", "crystallize", "scaling"), synaptic_scaling_gamma=0.05,
                   dale_mode="column"),
    # fuzzy and volume in the backward graph (on the whole, unsharded gradient: f is gathered),
    # crystallization on each shard's gradient, ACTIVITY rates redrawn row by row, DANN interneurons
    "gradient": dict(COMMON, acts_on="gradient", automatic=("fuzzy", "volume", "crystallize"),
                     fuzzy_lr_distribution=Distribution.ACTIVITY, fuzzy_lr_dynamic=True, fuzzy_lr_update_freq=2),
    # the explicit methods on each shard's .grad and weights; fc2 with weight splitting (Γ = 5)
    # (rejuvenate_weights() after every step)
    "explicit": dict(COMMON, automatic=(), rejuvenate_every=0, synaptic_scaling_gamma=0.05, dale_mode="column"),
}
# "update" with plain SGD: the update's factors and crystallization act on each shard's gradient
# before the step (the other modes train with momentum: the update is rescaled after the step)
CONFIGS["update-plain-sgd"] = CONFIGS["update"]
MOMENTUM = {"update-plain-sgd": 0.0}
# "update" with f recomputed from the counter: each shard draws f₀ at its own flat indices and
# counts its crystallizations (the counts sharded like the weight)
CONFIGS["update-counter"] = dict(CONFIGS["update"], fuzzy_lr_storage="counter")


class Net(nn.Module):
    """8 → 5 → 5 → 3: weights [5, 8], [5, 5], [3, 5]; on 2 ranks rows 3 + 2 (fc2's second shard
    starts at flat index 15) and 2 + 1."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(8, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def make(mode):
    torch.manual_seed(0)
    config = BioConfig(**CONFIGS[mode])
    if mode == "explicit":
        config = ConfigMap({"fc2": config.replace(weight_splitting_Gamma=5)}, default=config)
    return biofx.transform(Net(), config)


def batches():
    generator = torch.Generator().manual_seed(7)
    return [(torch.randn(WORLD * HALF, 8, generator=generator), torch.randn(WORLD * HALF, 3, generator=generator))
            for _ in range(STEPS)]


def gathered(bio):
    """The state dict as full tensors (an all-gather per sharded entry, in the same order on every rank)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in bio.state_dict().items()}


def train(mode, bio, optimizer, x, y):
    """One step; returns the full state dict after it and the count rejuvenated (explicit mode)."""
    optimizer.zero_grad()
    nn.functional.mse_loss(bio(x), y).backward()
    count = None
    if mode == "explicit":
        explicit.before_step(bio)
    optimizer.step()
    if mode == "explicit":
        count = int(bio.rejuvenate_weights())
        bio.enforce_dales_principle()
    return gathered(bio), count


def run(mode, bio, rank=None):
    """Train ``bio`` (sharded when ``rank`` is given: its half of every batch) for STEPS steps."""
    optimizer = torch.optim.SGD(bio.parameters(), lr=0.1, momentum=MOMENTUM.get(mode, 0.9))
    return [train(mode, bio, optimizer, *((x, y) if rank is None else (x.chunk(WORLD)[rank], y.chunk(WORLD)[rank])))
            for x, y in batches()]


def _errors(mesh):
    """The messages of what raises under FSDP (on a freshly sharded model)."""
    from torch.distributed.fsdp import fully_shard

    errors = {}
    bio = make("update")
    fully_shard(bio, mesh=mesh)
    for name, call in [("reset_bio_state", bio.reset_bio_state), ("dale_init", bio.dalian_network_initialization)]:
        try:
            call()
        except NotImplementedError as err:
            errors[name] = str(err)
    bio = biofx.transform(Net(), seed=1, automatic=(), rejuvenation_rule="lognormal")
    fully_shard(bio, mesh=mesh)
    try:
        bio.rejuvenate_weights()
    except NotImplementedError as err:
        errors["lognormal"] = str(err)
    return errors


def _resumed(mode, mesh, bio, whole):
    """Fresh sharded models loading ``bio``'s sharded state dict (``load_state_dict``) and the
    whole one (``torch.distributed.checkpoint``'s full state dict), gathered."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard

    sharded, full = make(mode), make(mode)
    for model in (sharded, full):
        fully_shard(model, mesh=mesh)
    sharded.load_state_dict(bio.state_dict())
    set_model_state_dict(full, {k: v.clone() for k, v in whole.items()}, options=StateDictOptions(full_state_dict=True))
    return gathered(sharded), gathered(full)


def _worker(rank, port, out_dir, fused):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    biofx.kernels.set_enabled(fused)  # as in the test process: fused and plain kernels differ in the last bits
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
    )
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        for mode in CONFIGS:
            bio = make(mode)
            fully_shard(bio, mesh=mesh)
            trajectory = run(mode, bio, rank)
            state = bio.fc2.biofx_state
            local_rows = getattr(state, state._per_weight).to_local().shape[0]  # the multipliers are sharded
            torch.save((trajectory, local_rows, _resumed(mode, mesh, bio, trajectory[-1][0])),
                       os.path.join(out_dir, f"{mode}-rank{rank}.pt"))
        torch.save(_errors(mesh), os.path.join(out_dir, f"errors-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Run the two ranks once (bounded by TIMEOUT_S); return their output folder and any failure."""
    out_dir = str(tmp_path_factory.mktemp("fsdp"))
    failure = run_workers(_worker, (free_port(), out_dir, biofx.kernels.enabled()), WORLD, TIMEOUT_S, "FSDP")
    return out_dir, failure


def _load(spawned, name):
    out_dir, failure = spawned
    paths = [os.path.join(out_dir, f"{name}-rank{r}.pt") for r in range(WORLD)]
    if not all(map(os.path.exists, paths)):
        pytest.fail(f"FSDP run {name!r} did not finish: {failure}")
    return [torch.load(path, weights_only=True) for path in paths]


@pytest.mark.parametrize("mode", list(CONFIGS))
def test_fsdp_equals_one_process_on_the_full_batch(spawned, mode):
    (rank0, rows0, resumed0), (rank1, rows1, _) = _load(spawned, mode)
    assert (rows0, rows1) == (3, 2)  # each rank holds its rows of fc2's multipliers only
    full = run(mode, make(mode))
    initial = make(mode).state_dict()
    for step, ((a, count_a), (b, count_b), (one, count_one)) in enumerate(zip(rank0, rank1, full, strict=True)):
        assert a.keys() == b.keys() == one.keys()
        assert count_a == count_b == count_one, step  # rejuvenation counts summed over the shards
        for key in a:
            assert torch.equal(a[key], b[key]), (step, key)
            torch.testing.assert_close(a[key], one[key], rtol=1e-5, atol=1e-6, msg=f"{step} {key}")
    last = rank0[-1][0]
    for state in resumed0:  # checkpoints load into a sharded model: sharded ones and whole ones
        assert state.keys() == last.keys() and all(torch.equal(state[k], last[k]) for k in last)
    assert int(last["fc1.biofx_state.step"]) == STEPS
    assert int(last["fc1.biofx_state.rejuvenations"]) == (STEPS if mode == "explicit" else STEPS // 2)
    changed = [k for k in last if k.endswith(tuple(PER_WEIGHT_BUFFERS.values())) and not torch.equal(last[k], initial[k])]
    assert changed  # crystallization (and the ACTIVITY redraw) acted on the multipliers
    if mode == "explicit":
        assert sum(count for _, count in rank0) > 0  # rejuvenation replaced weights
        assert "weight_split" in make(mode).fc2.code


def test_whole_layer_operations_raise_under_fsdp(spawned):
    errors, _ = _load(spawned, "errors")
    assert set(errors) == {"reset_bio_state", "dale_init", "lognormal"}
    for message in errors.values():
        assert "FSDP" in message and "fully_shard" in message
    assert "before fully_shard" in errors["reset_bio_state"]
    assert "rejuvenation_rule='paper'" in errors["lognormal"]
