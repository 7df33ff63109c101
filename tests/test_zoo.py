"""The built-in model zoo: shapes, traceability, and the attention block against its formula."""

import copy
import math

import pytest
import torch
import torch.nn as nn

import biofx
from biofx import zoo

CASES = {
    "mlp": ((2, 10), ["fc1", "fc2", "out"]),
    "cnn": ((2, 10), ["conv1", "conv2", "fc1", "out"]),
    "residual": ((2, 8, 64), ["attn.q", "attn.k", "attn.v", "attn.out", "mlp.0", "mlp.2"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_zoo_model_runs_and_converts_whole(name):
    model, x = zoo.get(name)
    out_shape, layers = CASES[name]
    assert model(x).shape == out_shape
    bio = biofx.transform(copy.deepcopy(model), seed=0)
    assert [layer.name for layer in bio.bio_report.converted] == layers
    assert bio.bio_report.plain == ()
    # the default config changes only gradients: the forward pass is the original one
    torch.testing.assert_close(bio(x), model(x))


def test_zoo_lists_exactly_the_documented_models():
    assert list(zoo.MODELS) == ["mlp", "cnn", "residual"]


def test_get_returns_fresh_models_and_fixed_inputs():
    (a, xa), (b, xb) = zoo.get("mlp"), zoo.get("mlp")
    assert a is not b and a.fc1.weight is not b.fc1.weight
    assert torch.equal(xa, xb)
    assert xa.shape == (2, 784)


def test_example_input_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    zoo.MODELS["cnn"].example_input()
    assert torch.equal(torch.rand(3), expected)


def test_unknown_name_lists_the_models():
    with pytest.raises(ValueError, match=r"unknown zoo model 'mpl'; available: mlp, cnn, residual; did you mean 'mlp'"):
        zoo.get("mpl")


def test_mlp_layers_follow_the_widths():
    model = zoo.MLP(in_features=6, hidden=(5, 4, 3), out_features=2)
    linears = [(name, m.in_features, m.out_features) for name, m in model.named_children() if isinstance(m, nn.Linear)]
    assert linears == [("fc1", 6, 5), ("fc2", 5, 4), ("fc3", 4, 3), ("out", 3, 2)]
    assert model(torch.randn(7, 1, 2, 3)).shape == (7, 2)  # the input is flattened


def test_cnn_matches_its_layers_by_hand():
    model = zoo.CNN(in_channels=1, channels=(2, 3), hidden=5, classes=4, image_size=8)
    x = torch.randn(2, 1, 8, 8)
    pool = nn.functional.max_pool2d
    h = pool(torch.relu(model.conv1(x)), 2)
    h = pool(torch.relu(model.conv2(h)), 2)
    expected = model.out(torch.relu(model.fc1(h.reshape(2, -1))))
    torch.testing.assert_close(model(x), expected)


def test_cnn_rejects_an_image_size_the_poolings_do_not_divide():
    with pytest.raises(ValueError, match="image_size must be divisible by 4"):
        zoo.CNN(image_size=30)


def test_self_attention_is_softmax_qk_v_per_head():
    torch.manual_seed(0)
    attn = zoo.SelfAttention(dim=8, heads=2)
    x = torch.randn(3, 5, 8)
    q, k, v = attn.q(x), attn.k(x), attn.v(x)
    heads = []
    for h in range(2):
        cols = slice(4 * h, 4 * (h + 1))
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(4)
        heads.append(torch.softmax(scores, dim=-1) @ v[..., cols])
    expected = attn.out(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x), expected)


def test_self_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match=r"dim \(10\) must be divisible by heads \(3\)"):
        zoo.SelfAttention(10, 3)


def test_residual_block_adds_both_branches():
    block = zoo.ResidualBlock(dim=8, heads=2, hidden=16)
    x = torch.randn(2, 4, 8)
    h = x + block.attn(block.norm1(x))
    torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)))
