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
    bio = biofx.transform(copy.deepcopy(model), **NEUTRAL)
    assert torch.equal(bio(x), reference(x))
    bio(x).square().sum().backward()
    reference(x).square().sum().backward()
    for (name, p), (_, q) in zip(bio.named_parameters(), reference.named_parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_parameter_names_kept_and_plain_checkpoint_round_trip():
    model = MLP()
    plain_sd = copy.deepcopy(model.state_dict())
    fc1 = model.fc1
    bio = biofx.transform(model)
    assert bio is model and bio.fc1 is fc1  # in place: the original layer objects stay
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
    assert any(k.startswith("fc1.biofx_state.") for k in loaded)


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
    bio = biofx.transform(copy.deepcopy(model), cmap)
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

    with pytest.warns(UserWarning, match="converted 0 layers of Branchy: it has no Linear/Conv layer"):
        bio = biofx.transform(Branchy())
    assert bio.bio_report.capture.startswith("module tree (torch.fx could not trace Branchy")
    assert "x.sum() > 0" in bio.bio_report.capture  # the failing line of the user's code


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
        assert isinstance(clone, MLP) and isinstance(clone, biofx.BioMethods)
        assert isinstance(clone.fc1, nn.Linear) and clone.bio_layers()[0].layer is clone.fc1
        assert torch.equal(clone(x), bio(x))
        clone(x).sum().backward()
        bio.zero_grad()
        bio(x).sum().backward()
        assert torch.equal(clone.fc1.weight.grad, bio.fc1.weight.grad)
        assert len(clone.bio_layers()) == 2


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_transpose_is_converted(dims):
    conv, transpose = getattr(nn, f"Conv{dims}d"), getattr(nn, f"ConvTranspose{dims}d")
    model = nn.Sequential(
        conv(3, 4, 3, padding=1), nn.ReLU(),
        transpose(4, 6, 3, stride=2, padding=1, output_padding=1, dilation=1), nn.ReLU(),
        transpose(6, 4, 3, groups=2), conv(4, 2, 1),
    )
    x = torch.randn(2, 3, *[5] * dims)
    bio = biofx.transform(copy.deepcopy(model), automatic=(), seed=0)
    assert [layer.name for layer in bio.bio_report.converted] == ["0", "2", "5"]
    why = "grouped transposed convolution (groups=2) is not supported; it stays plain"
    assert bio.bio_report.plain == (("4", why),)
    assert torch.equal(bio(x), model(x))
    full = biofx.transform(copy.deepcopy(model), apply_dales_principle=True, weight_splitting_Gamma=2, synaptic_scaling_gamma=0.1,
                           automatic=("fuzzy", "volume", "crystallize", "scaling"), seed=0)
    full(x).square().mean().backward()
    full.enforce_dales_principle()
    rows = full[2].weight.detach().flatten(1)  # [in, out·k]: one sign per input channel
    assert ((rows >= 0).all(1) | (rows <= 0).all(1)).all()
    assert full[2].weight.grad is not None and torch.isfinite(full[2].weight.grad).all()


def test_lazy_layer_asks_for_one_forward_first():
    with pytest.raises(ValueError, match=r"layer '0' \(LazyLinear\) has uninitialized parameters.*Run one forward"):
        biofx.transform(nn.Sequential(nn.LazyLinear(3), nn.ReLU(), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="Run one forward pass"):
        biofx.transform(nn.LazyConv2d(4, 3))


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_zero_size_layer_runs_every_mechanism():
    model = nn.Sequential(nn.Linear(4, 0), nn.Linear(0, 3))
    bio = biofx.transform(copy.deepcopy(model), automatic=("fuzzy", "volume", "crystallize"))
    bio(torch.randn(2, 4)).sum().backward()
    torch.optim.SGD(bio.parameters(), lr=0.1).step()  # the automatic mechanisms' step hooks
    assert int(bio.rejuvenate_weights()) == 0 and float(bio.l1_reg().detach()) == 0.0


def test_torchscript_root_and_submodule():
    with pytest.raises(TypeError, match=r"TorchScript module \(Sequential\).*Transform the Python model"):
        biofx.transform(torch.jit.script(nn.Sequential(nn.Linear(3, 3))))

    class Partly(nn.Module):
        def __init__(self):
            super().__init__()
            self.scripted = torch.jit.script(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.scripted(x))

    model = Partly()
    x = torch.randn(2, 3)
    expected = model(x)
    bio = biofx.transform(model, automatic=(), fuzzy_lr_distribution="baseline")
    assert [layer.name for layer in bio.bio_report.converted] == ["head"]
    assert bio.bio_report.plain == (
        ("scripted.0", "inside TorchScript module 'scripted': compiled code cannot be rewritten; "
                       "transform the Python module before torch.jit.script"),
    )
    assert torch.equal(bio(x), expected)

    class Untraceable(Partly):
        def forward(self, x):
            h = self.scripted(x)
            return self.head(h * 0 if h.sum() > 1e9 else h)  # data-dependent: converted in parts

    report = biofx.transform(Untraceable(), automatic=()).bio_report
    assert [layer.name for layer in report.converted] == ["head"]
    assert report.plain[0][0] == "scripted.0" and "TorchScript" in report.plain[0][1]


def test_conv_transpose_called_with_output_size_stays_plain():
    class Upsample(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)

        def forward(self, x):
            return self.up(x, output_size=[10, 10])

    model = Upsample()
    bio = biofx.transform(copy.deepcopy(model))
    assert bio.bio_report.plain == (("up", "called with arguments other than one input tensor"),)
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(bio(x), model(x)) and bio(x).shape[-2:] == (10, 10)


def test_converted_single_layer_keeps_the_modules_attributes():
    layer = nn.Conv1d(3, 4, 3, stride=2, padding=1)
    bio = biofx.transform(layer)
    for name in ("stride", "padding", "in_channels", "out_channels", "kernel_size", "padding_mode"):
        assert getattr(bio, name) == getattr(layer, name), name
    assert biofx.transform(nn.Linear(3, 5)).out_features == 5
    assert copy.deepcopy(bio).stride == (2,)


def make_mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("options", [{}, dict(apply_dales_principle=True, fuzzy_lr_distribution="weight_adaptive",
                                               synaptic_scaling_gamma=0.1, automatic=("fuzzy", "volume"))])
def test_meta_device_model_materialized_with_reset_bio_state(options):
    torch.manual_seed(0)
    weights = make_mlp().state_dict()
    with torch.device("meta"):
        model = make_mlp()
    bio = biofx.transform(copy.deepcopy(model), seed=3, **options)
    assert all(layer.fuzzy_lr.is_meta for layer in bio.bio_layers())
    bio.to_empty(device="cpu")
    bio.load_state_dict(weights)
    bio.reset_bio_state()
    reference = make_mlp()
    reference.load_state_dict(weights)
    expected = biofx.transform(reference, seed=3, **options)
    assert list(bio.state_dict()) == list(expected.state_dict())
    for (name, value), other in zip(bio.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(value, other), name
    x = torch.randn(2, 4)
    assert torch.equal(bio(x), expected(x))


def test_weight_flow_check_catches_a_direct_read_after_the_passes():
    from biofx.passes import plan_layers, run_passes
    from biofx.passes.plan import check_weight_flow
    from biofx.tracing import trace

    model = MLP()
    gm = trace(model)
    layers, _ = plan_layers(gm, ConfigMap(default=BioConfig(seed=0)), model)
    run_passes(gm, layers)
    check_weight_flow(gm, layers)  # the passes keep every weight on its bio chain
    output = next(n for n in gm.graph.nodes if n.op == "output")
    with gm.graph.inserting_before(output):
        stray = gm.graph.get_attr("fc1.weight")  # an untagged read of a converted weight
        total = gm.graph.call_function(torch.add, (output.args[0], gm.graph.call_method("sum", (stray,))))
    output.args = (total,)
    with pytest.raises(AssertionError, match="fc1"):
        check_weight_flow(gm, layers)
