"""biofx.summary: rows per bio layer, totals from the live bio state, the plain layers and why."""

import copy
import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import biofx
from biofx import zoo
from biofx.summary import Summary, summary

CONFIG = dict(weight_splitting_Gamma=2, apply_dales_principle=True, automatic=("fuzzy", "volume"), seed=0)


@pytest.fixture
def bio():
    """An MLP with one layer left plain by a ConfigMap."""
    model = zoo.MLP(in_features=12, hidden=(8, 6), out_features=4)
    return biofx.transform(copy.deepcopy(model), biofx.ConfigMap({"fc2": None}), **CONFIG)


def test_totals_are_the_sums_over_the_bio_layers(bio):
    s = summary(bio)
    layers = bio.bio_layers()
    assert s.layers == len(layers) == 2
    assert s.state_bytes == sum(layer.state_bytes() for layer in layers) == bio.bio_state_bytes()
    # counted independently: every buffer of every state module
    assert s.state_bytes == sum(b.numel() * b.element_size() for layer in bio.bio_layers() for b in layer.buffers())
    assert s.weights == sum(layer.weight.numel() for layer in layers) == 8 * 12 + 4 * 6
    assert s.bytes_per_weight == pytest.approx(s.state_bytes / s.weights)
    assert s.bytes_per_weight >= 4  # at least one float32 fuzzy multiplier per weight


def test_rows_follow_the_layers_and_the_report(bio):
    s = summary(bio)
    report = {layer.name: layer for layer in bio.bio_report.converted}
    assert [row.name for row in s.rows] == ["fc1", "out"]
    for row, layer in zip(s.rows, bio.bio_layers()):
        assert row.kind == "Linear"
        assert row.weight_shape == tuple(layer.weight.shape)
        assert row.mechanisms == report[row.name].mechanisms
        assert row.state_bytes == layer.state_bytes()
    assert "weight_split (Γ=2)" in s.rows[0].mechanisms and "dale" in s.rows[0].mechanisms
    assert not any(m.startswith("weight_split") for m in s.rows[1].mechanisms)  # the last layer is not split
    assert s.plain == (("fc2", "left plain by ConfigMap (name 'fc2')"),)


def test_table_shows_rows_totals_and_plain_layers(bio):
    s = summary(bio)
    text = str(s)
    lines = text.splitlines()
    assert lines[1] == "MLP (biofx)"
    assert lines[3].split() == ["Bio", "layer", "Kind", "Weight", "shape", "Mechanisms", "Bio", "state"]
    fc1 = next(line for line in lines if line.startswith("fc1 "))
    assert "[8, 12]" in fc1 and ", ".join(s.rows[0].mechanisms) in fc1 and fc1.endswith(f"{s.rows[0].state_bytes} B")
    assert "Bio layers: 2" in lines
    assert f"Bio weights: {s.weights:,}" in lines
    assert f"Bio state: {s.state_bytes:,} B ({s.bytes_per_weight:.2f} bytes per weight)" in lines
    assert "  fc2: left plain by ConfigMap (name 'fc2')" in lines


def test_conv_layers_and_large_state_use_binary_units():
    model, _ = zoo.get("cnn")
    s = summary(biofx.transform(copy.deepcopy(model), seed=0))
    assert [(row.name, row.kind) for row in s.rows] == [
        ("conv1", "Conv2d"),
        ("conv2", "Conv2d"),
        ("fc1", "Linear"),
        ("out", "Linear"),
    ]
    assert s.rows[1].weight_shape == (64, 32, 3, 3)
    assert f"{s.state_bytes / 1024**2:,.1f} MiB" in str(s)
    assert s.plain == () and "Left plain" not in str(s)


def test_a_model_that_is_one_layer_is_the_root():
    s = summary(biofx.transform(nn.Linear(3, 4), seed=0))
    assert s.rows[0].name == "" and "<root>" in str(s)
    assert isinstance(s, Summary)


@pytest.mark.parametrize("model", [nn.Linear(2, 2), fx.symbolic_trace(nn.Sequential(nn.Linear(2, 2)))])
def test_non_bio_models_are_a_type_error_with_a_hint(model):
    with pytest.raises(TypeError, match=r"needs a model transformed by biofx.*biofx\.transform\(model\)"):
        summary(model)


def test_table_fits_100_columns_with_every_mechanism():
    config = dict(weight_splitting_Gamma=2, apply_dales_principle=True, synaptic_scaling_gamma=0.1,
                  automatic=("fuzzy", "volume", "crystallize", "scaling"), rejuvenate_every=5)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10),
                          nn.Sequential(nn.Linear(10, 10)))
    model[5] = torch.ao.quantization.quantize_dynamic(model[5], dtype=torch.qint8)  # a long plain reason
    text = str(biofx.summary(biofx.transform(model, **config)))
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "rejuvenate (every 5 steps)" in text and "weight_split (Γ=2)," in text  # wrapped at the commas
