"""Checkpoints: resume from a state_dict, whole-model pickling, deepcopy, plain checkpoints.

All bio state (multipliers, Dale signs, activity statistics, step/update/rejuvenation
counters that key the counter-based noise) is in ``state_dict()``, so a run saved after k
steps, loaded with ``torch.load(weights_only=True)`` into a fresh transform and continued,
follows the uninterrupted run bit for bit.
"""

import copy
import io

import pytest
import torch
import torch.nn as nn

import biofx

from conftest import MLP
import _explicit as explicit

CONFIGS = {
    "temporal": dict(
        automatic=("fuzzy", "volume", "crystallize"), fuzzy_lr_distribution="temporal", fuzzy_lr_dynamic=True,
        fuzzy_lr_update_freq=1, rejuvenate_every=3, apply_dales_principle=True, crystal_thresh=0.02, seed=3,
    ),
    "activity": dict(
        automatic=("fuzzy", "volume", "crystallize", "scaling"), fuzzy_lr_distribution="activity",
        fuzzy_lr_dynamic=True, fuzzy_lr_update_freq=2, synaptic_scaling_gamma=0.05, seed=3,
    ),
    "explicit": dict(automatic=(), synaptic_scaling_gamma=0.05, weight_splitting_Gamma=2, seed=3),
}
K, TOTAL = 5, 12  # save after K steps; TOTAL > 10 so TEMPORAL's noise (every 10th update) is reached


class Untraceable(nn.Module):
    """Data-dependent control flow at the root: planned from the module tree."""

    def __init__(self):
        super().__init__()
        self.body = MLP((6, 8, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = self.body(x)
        if torch.isfinite(h).all():
            h = torch.relu(h)
        return self.head(h)


MODELS = {"mlp": lambda: MLP((6, 8, 4)), "untraceable": Untraceable}


def batch(step):
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=generator), torch.randn(16, 4, generator=generator)


def step(bio, optimizer, mode, i):
    x, y = batch(i)
    optimizer.zero_grad()
    nn.functional.mse_loss(bio(x), y).backward()
    if mode == "explicit":
        explicit.before_step(bio)
    optimizer.step()
    if mode == "explicit":
        bio.rejuvenate_weights()
    return {k: v.clone() for k, v in bio.state_dict().items()}


def fresh(model_name, mode, init_seed=0):
    torch.manual_seed(init_seed)
    bio = biofx.transform(MODELS[model_name](), **CONFIGS[mode])
    return bio, torch.optim.Adam(bio.parameters(), lr=1e-2)


def assert_same(a, b, where):
    assert a.keys() == b.keys(), where
    for key in a:
        assert torch.equal(a[key], b[key]), (where, key)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("mode", list(CONFIGS))
def test_resume_from_state_dict_follows_the_uninterrupted_run(model_name, mode, tmp_path):
    bio, optimizer = fresh(model_name, mode)
    reference = [step(bio, optimizer, mode, i) for i in range(TOTAL)]

    bio, optimizer = fresh(model_name, mode)
    for i in range(K):
        step(bio, optimizer, mode, i)
    torch.save({"model": bio.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.pt")

    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed, optimizer = fresh(model_name, mode, init_seed=1)  # other initial weights: loading must matter
    first_key = next(iter(checkpoint["model"]))
    assert not torch.equal(resumed.state_dict()[first_key], checkpoint["model"][first_key])
    resumed.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    assert_same(resumed.state_dict(), reference[K - 1], "after load")
    for i in range(K, TOTAL):
        assert_same(step(resumed, optimizer, mode, i), reference[i], f"step {i}")
    counters = [k for k in reference[-1] if k.endswith(".step")]
    assert counters and all(int(reference[-1][k]) == TOTAL for k in counters)


def _pickle(bio):
    buffer = io.BytesIO()
    torch.save(bio, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("clone", [copy.deepcopy, _pickle], ids=["deepcopy", "torch.save"])
def test_whole_model_copies_keep_training_identically(model_name, clone):
    mode = "temporal"
    bio, optimizer = fresh(model_name, mode)
    for i in range(K):
        step(bio, optimizer, mode, i)
    other = clone(bio)
    assert other is not bio
    assert type(other) is type(bio) and isinstance(other, biofx.BioMethods) and isinstance(other, MODELS[model_name]().__class__)
    assert other.bio_report == bio.bio_report
    assert [layer.layer_name for layer in other.bio_layers()] == [layer.layer_name for layer in bio.bio_layers()]
    for mine, theirs in zip(bio.bio_layers(), other.bio_layers()):
        assert theirs.weight is not mine.weight and theirs.weight.data_ptr() != mine.weight.data_ptr()
    other_optimizer = torch.optim.Adam(other.parameters(), lr=1e-2)
    # a copy: load_state_dict keeps the given tensors, which state_dict() does not copy
    other_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for i in range(K, TOTAL):
        assert_same(step(other, other_optimizer, mode, i), step(bio, optimizer, mode, i), f"step {i}")


def test_pickled_model_keeps_its_class_names():
    bio = biofx.transform(MLP())
    assert type(bio).__name__ == "MLP" and type(bio.fc1).__name__ == "BioLinear"
    other = _pickle(bio)
    assert type(other) is type(bio) and type(other.fc1) is type(bio.fc1)


def test_deepcopy_keeps_the_report():
    bio = biofx.transform(MLP())
    assert copy.deepcopy(bio).bio_report == bio.bio_report


@pytest.mark.parametrize("model_name", list(MODELS))
def test_plain_checkpoints_load_both_ways(model_name):
    torch.manual_seed(0)
    plain = MODELS[model_name]()
    plain_state = copy.deepcopy(plain.state_dict())
    bio = biofx.transform(MODELS[model_name](), seed=0, apply_dales_principle=True)
    bio_state = {k: v.clone() for k, v in bio.state_dict().items() if ".biofx_state." in k}
    bio.load_state_dict(plain_state)  # strict: only the bio state is absent, and it keeps its values
    for key, value in plain_state.items():
        assert torch.equal(bio.state_dict()[key], value), key
    for key, value in bio_state.items():
        assert torch.equal(bio.state_dict()[key], value), key
    with pytest.raises(RuntimeError, match="missing keys"):
        bio.load_state_dict({k: v for k, v in plain_state.items() if not k.endswith("bias")})

    other = MODELS[model_name]()
    other.load_state_dict(bio.plain_state_dict())  # strict
    assert bio.plain_state_dict().keys() == plain_state.keys()
    x = torch.randn(3, 6)
    expected = other(x)
    neutral = biofx.transform(other, fuzzy_lr_distribution="baseline")
    assert torch.equal(neutral(x), expected)
