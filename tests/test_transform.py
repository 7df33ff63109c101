"""biofx.transform: neutral exactness, names, report, state, per-layer configs, errors."""

import copy
import io

import pytest
import torch
import torch.nn as nn

import biofx
from biofx import BioConfig, ConfigMap

from conftest import MLP, conv_input, conv_model

NEUTRAL = dict(fuzzy_lr_distribution="baseline")


@pytest.mark.parametrize("dims", [0, 1, 2, 3])
def test_neutral_forward_and_grads_bit_identical(dims):
    model = MLP() if dims == 0 else conv_model(dims)
    x = torch.randn(5, 6) if dims == 0 else conv_input(dims)
    reference = copy.deepcopy(model)
    bio = biofx.transform(model, **NEUTRAL)
    assert torch.equal(bio(x), reference(x))
    bio(x).square().sum().backward()
    reference(x).square().sum().backward()
    for (name, p), (_, q) in zip(bio.named_parameters(), reference.named_parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_parameter_names_kept_and_plain_checkpoint_round_trip():
    model = MLP()
    plain_sd = copy.deepcopy(model.state_dict())
    bio = biofx.transform(model)
    assert bio.fc1 is model.fc1  # the original layer objects stay (no copy, no empty stand-in)
    assert [n for n, _ in bio.named_parameters()] == [n for n, _ in MLP().named_parameters()]
    bio.load_state_dict(plain_sd)  # strict: bio state keeps its values
    fresh = MLP()
    fresh.load_state_dict(bio.plain_state_dict())
    with pytest.raises(RuntimeError, match="unexpected keys"):
        bio.load_state_dict({**plain_sd, "bogus": torch.zeros(1)})


def test_state_dict_round_trip_weights_only():
    cfg = dict(apply_dales_principle=True, synaptic_scaling_gamma=0.1, fuzzy_lr_distribution="activity",
               fuzzy_lr_dynamic=True, seed=5)
    bio = biofx.transform(MLP(), **cfg)
    bio(torch.randn(3, 6))
    buffer = io.BytesIO()
    torch.save(bio.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    other = biofx.transform(MLP(), **{**cfg, "seed": 6})
    other.load_state_dict(loaded)
    for key, value in bio.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    assert any(k.startswith("biofx_state.") for k in loaded)


def test_bio_state_is_four_bytes_per_weight_by_default():
    bio = biofx.transform(nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10)))
    weights = sum(l.weight.numel() for l in bio.bio_layers())
    assert weights * 4 <= bio.bio_state_bytes() <= weights * 4 + 64 * len(bio.bio_layers())


def test_report_lists_converted_and_plain_with_reasons():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 8)
            self.unused = nn.Linear(8, 8)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            x = self.attn(x, x, x)[0]
            return self.head(torch.relu(self.fc(x)))

    bio = biofx.transform(Model(), ConfigMap({"head": None}))
    report = bio.bio_report
    assert [l.name for l in report.converted] == ["fc"]
    reasons = dict(report.plain)
    assert "leaf module 'attn'" in reasons["attn.out_proj"]
    assert "not called" in reasons["unused"]
    assert "ConfigMap" in reasons["head"]
    text = str(report)
    assert "fc (Linear [8, 8])" in text and "attn.out_proj" in text


def test_configmap_per_layer():
    class Mixed(nn.Sequential):
        def forward(self, x):
            x = torch.relu(self[0](x)).unsqueeze(1)
            return self[5](torch.relu(self[3](self[2](x).squeeze(1))))

    model = Mixed(nn.Linear(4, 8), nn.ReLU(), nn.Conv1d(1, 1, 1), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    cmap = ConfigMap(
        {"3": BioConfig(fuzzy_lr_distribution="normal"), "re:[05]": BioConfig(fuzzy_lr_distribution="baseline"),
         nn.Conv1d: None},
        default=BioConfig(),
    )
    bio = biofx.transform(model, cmap)
    dists = {l.layer_name: l.config.fuzzy_lr_distribution.value for l in bio.bio_layers()}
    assert dists == {"0": "baseline", "3": "normal", "5": "baseline"}
    assert dict(bio.bio_report.plain)["2"].startswith("left plain by ConfigMap (type Conv1d)")
    x = torch.randn(3, 4)
    assert bio(x).shape == (3, 2)


def test_configmap_name_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="did you mean 'fc1'"):
        biofx.transform(MLP(), ConfigMap({"fc_1": None}))
    with pytest.raises(ValueError, match="pattern 're:enc.*' fully matches no"):
        biofx.transform(MLP(), ConfigMap({"re:enc.*": None}))


def test_overrides_apply_to_config_and_map():
    bio = biofx.transform(MLP(), BioConfig(base_lr=0.3), dampening_factor=0.7)
    assert all(l.config.base_lr == 0.3 and l.config.dampening_factor == 0.7 for l in bio.bio_layers())
    bio = biofx.transform(MLP(), ConfigMap({"fc1": BioConfig(base_lr=0.2)}), dampening_factor=0.7)
    assert all(l.config.dampening_factor == 0.7 for l in bio.bio_layers())
    bio = biofx.transform(MLP(), {"base_lr": 0.4})
    assert bio.bio_layers()[0].config.base_lr == 0.4


def test_bad_inputs():
    with pytest.raises(TypeError, match="expects an nn.Module"):
        biofx.transform(lambda x: x)
    with pytest.raises(TypeError, match="config must be"):
        biofx.transform(MLP(), config=3)
    with pytest.raises(ValueError, match="already transformed"):
        biofx.transform(biofx.transform(MLP()))
    with pytest.raises(TypeError, match="did you mean 'base_lr'"):
        biofx.transform(MLP(), base_lrr=0.1)


def test_untraceable_model_error_names_module_and_fix():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 3))  # a functional layer: no submodule to fall back on

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return torch.nn.functional.linear(x, self.weight)
            return x

    with pytest.raises(biofx.TraceError, match="leaf_modules") as info:
        biofx.transform(Branchy())
    assert "x.sum() > 0" in str(info.value)  # the failing line of the user's code


def test_leaf_modules_validated():
    with pytest.raises(TypeError, match="nn.Module subclasses"):
        biofx.transform(MLP(), leaf_modules=[5])
    with pytest.raises(TypeError, match="list of nn.Module types"):
        biofx.transform(MLP(), leaf_modules=nn.Linear)


def test_bio_state_stays_float32_when_model_is_cast():
    bio = biofx.transform(MLP(), apply_dales_principle=True, synaptic_scaling_gamma=0.1)
    bio.to(torch.bfloat16)
    assert bio.fc1.weight.dtype == torch.bfloat16
    for layer in bio.bio_layers():
        assert layer.fuzzy_lr.dtype == torch.float32 and layer.dale_sign.dtype == torch.float32
        assert layer.step.dtype == torch.int64
    out = bio(torch.randn(2, 6, dtype=torch.bfloat16))
    out.float().sum().backward()
    assert bio.fc1.weight.grad.dtype == torch.bfloat16


def test_whole_model_pickle_and_deepcopy():
    bio = biofx.transform(MLP(), weight_splitting_Gamma=2, apply_dales_principle=True,
                          automatic=("fuzzy", "volume"), seed=1)
    x = torch.randn(3, 6)
    buffer = io.BytesIO()
    torch.save(bio, buffer)
    buffer.seek(0)
    for clone in (torch.load(buffer, weights_only=False), copy.deepcopy(bio)):
        assert isinstance(clone, biofx.BioGraphModule)
        assert isinstance(clone.fc1, nn.Linear) and clone.bio_layers()[0].layer is clone.fc1
        assert torch.equal(clone(x), bio(x))
        clone(x).sum().backward()
        bio.zero_grad()
        bio(x).sum().backward()
        assert torch.equal(clone.fc1.weight.grad, bio.fc1.weight.grad)
        assert len(clone.bio_layers()) == 2
