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

The same run also shards real models as training recipes do (issue 22): an ``nn.Sequential``
of blocks and a tiny Hugging Face Llama, per block (``fully_shard`` on every block, then on
the root) and at the root only, under the default config (``acts_on="update"``, fuzzy
learning rates) with plain SGD, SGD with momentum and Adam. After 3 steps their parameters
equal one process's on the full batches (to 2e-5: Adam divides rounding-sized gradient
differences by small ``√v``) and differ from a plain model's (the mechanisms acted); each
rank holds only its rows of every layer's per-weight state from the first step on (from
``to_empty`` on, for a model built on the meta device and loaded from a checkpoint).
"""

import copy
import datetime
import functools
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import biofx
import biofx.kernels
from _spawn import free_port, run_workers
from biofx import sharding
from biofx.bio_layer import BioLayer
from biofx.config import BioConfig, ConfigMap, Distribution
from biofx.state import PER_WEIGHT_BUFFERS
import _explicit as explicit

pytestmark = [
    pytest.mark.slow,  # two spawned processes: about 30 s
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
        for case in MODEL_CASES:
            if parse(case)[0] == "llama" and transformers is None:
                continue
            torch.save(_model_case(case, mesh, rank), os.path.join(out_dir, f"{case}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


# -- real models sharded as training recipes do (issue 22) -----------------------------------
MODEL_STEPS = 3
PER_RANK = 2  # samples per rank and step
MODEL_TOLERANCE = 2e-5
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1),
    "momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2),
}
try:
    import transformers
except ImportError:  # pragma: no cover - the Llama cases skip
    transformers = None


def _cases(model):
    return [f"{model}-{how}-{optimizer}" for how in ("per-block", "root") for optimizer in OPTIMIZERS]


# "<model>-<sharding>-<optimizer>"; "blocks-meta-momentum": the blocks model built on the meta
# device, sharded per block, materialized with to_empty and loaded from a whole checkpoint
MODEL_CASES = [*_cases("blocks"), "blocks-meta-momentum", *_cases("llama")]


def parse(case):
    """``"blocks-per-block-adam"`` → ``("blocks", "per-block", "adam")``."""
    kind, rest = case.split("-", 1)
    return (kind, *rest.rsplit("-", 1))


def plain_model(kind):
    """The same initial weights on every call (and in every process)."""
    torch.manual_seed(0)
    if kind == "blocks":  # two blocks 8 → 5 → 8 (5 rows: uneven shards 3 + 2) and a head 8 → 3
        return nn.Sequential(*(nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 8)) for _ in range(2)),
                             nn.Linear(8, 3))
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


def bio_model(kind):
    """A transformed copy of :func:`plain_model` (the default config)."""
    return biofx.transform(copy.deepcopy(plain_model(kind)), seed=0)


def blocks_of(kind, model):
    return list(model)[:-1] if kind == "blocks" else list(model.model.layers)


def model_batches(kind):
    generator = torch.Generator().manual_seed(7)
    if kind == "blocks":
        n = WORLD * PER_RANK
        return [(torch.randn(n, 8, generator=generator), torch.randn(n, 3, generator=generator)) for _ in range(MODEL_STEPS)]
    return [torch.randint(0, 64, (WORLD * PER_RANK, 8), generator=generator) for _ in range(MODEL_STEPS)]


def model_loss(kind, model, batch, rank):
    if kind == "blocks":
        x, y = (t if rank is None else t.chunk(WORLD)[rank] for t in batch)
        return nn.functional.mse_loss(model(x), y)
    ids = batch if rank is None else batch.chunk(WORLD)[rank]
    return model(input_ids=ids, labels=ids).loss  # equal token counts per rank: the mean of the ranks' means


def bio_layers(model):
    return {name: module for name, module in model.named_modules() if isinstance(module, BioLayer)}


def state_shards(model):
    """Per bio layer: (its per-weight state is a DTensor, that state's shape on this rank, the weight's)."""
    return {name: (sharding.is_sharded(layer.bio_state.fuzzy_lr), tuple(sharding.local(layer.bio_state.fuzzy_lr).shape),
                   tuple(sharding.local(layer.weight).shape))
            for name, layer in bio_layers(model).items()}


def train_model(kind, model, optimizer, rank=None, after_first_step=None):
    """MODEL_STEPS steps (on this rank's part of every batch when ``rank`` is given); returns the
    state dict, gathered."""
    optimizer = OPTIMIZERS[optimizer](model.parameters())
    for step, batch in enumerate(model_batches(kind)):
        optimizer.zero_grad()
        model_loss(kind, model, batch, rank).backward()
        optimizer.step()
        if step == 0 and after_first_step is not None:
            after_first_step()
    return gathered(model)


def _model_case(case, mesh, rank):
    """Shard and train one of MODEL_CASES; returns (the gathered state dict, the layers' state
    shards once sharded, and after the first step)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import fully_shard

    kind, how, optimizer = parse(case)
    if how == "meta":
        with torch.device("meta"):
            plain = plain_model(kind)
        bio = biofx.transform(plain, seed=0)
    else:
        bio = bio_model(kind)
    if how != "root":
        for block in blocks_of(kind, bio):
            fully_shard(block, mesh=mesh)
    fully_shard(bio, mesh=mesh)
    if how == "meta":
        bio.to_empty(device="cpu")
        set_model_state_dict(bio, bio_model(kind).state_dict(), options=StateDictOptions(full_state_dict=True))
    shards = {"sharded": state_shards(bio)}
    final = train_model(kind, bio, optimizer, rank, lambda: shards.update(first_step=state_shards(bio)))
    return final, shards


@functools.cache
def one_process(kind, optimizer, bio=True):
    """The parameters (and bio state) after MODEL_STEPS steps of one process on the full batches."""
    return train_model(kind, bio_model(kind) if bio else plain_model(kind), optimizer)


@functools.cache
def layer_shapes(kind):
    """Every bio layer's weight shape (whole)."""
    return {name: layer.weight.shape for name, layer in bio_layers(bio_model(kind)).items()}


def max_gap(a, b, keys):
    return max((a[k] - b[k]).abs().max().item() for k in keys)


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


@pytest.mark.parametrize("case", MODEL_CASES)
def test_sharded_model_equals_one_process_and_not_a_plain_one(spawned, case):
    """After MODEL_STEPS steps the gathered parameters and bio state equal one process's on the
    full batches, on both ranks alike, and the parameters differ from a plain model's."""
    if case.startswith("llama") and transformers is None:
        pytest.skip("transformers is not installed")
    (rank0, _), (rank1, _) = _load(spawned, case)
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    kind, _, optimizer = parse(case)
    one, plain = one_process(kind, optimizer), one_process(kind, optimizer, bio=False)
    assert rank0.keys() == one.keys()
    assert max_gap(rank0, one, one) <= MODEL_TOLERANCE  # parameters and bio state
    assert max_gap(rank0, plain, plain) > 10 * MODEL_TOLERANCE  # the mechanisms acted
    assert max_gap(one, plain, plain) > 10 * MODEL_TOLERANCE


@pytest.mark.parametrize("case", MODEL_CASES)
def test_each_rank_holds_its_rows_of_the_per_weight_state(spawned, case):
    """From the first step on (from ``to_empty`` on for a model built on the meta device), every
    layer's ``fuzzy_lr`` is a DTensor whose local shard has this rank's rows of the weight."""
    if case.startswith("llama") and transformers is None:
        pytest.skip("transformers is not installed")
    (_, shards0), (_, shards1) = _load(spawned, case)
    whens = ["sharded", "first_step"] if "meta" in case else ["first_step"]
    full = layer_shapes(parse(case)[0])
    for when in whens:
        assert shards0[when].keys() == shards1[when].keys() == full.keys()
        for name, shape in full.items():
            (sharded0, rows0, weight0), (sharded1, rows1, weight1) = shards0[when][name], shards1[when][name]
            assert sharded0 and sharded1, (when, name)
            assert (rows0, rows1) == (weight0, weight1), (when, name)
            assert rows0[0] + rows1[0] == shape[0] and rows0[1:] == tuple(shape[1:]), (when, name)
    if case.startswith("blocks"):
        assert shards0["first_step"]["0.0"][1] == (3, 8) and shards1["first_step"]["0.0"][1] == (2, 8)
