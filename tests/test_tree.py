"""The transform keeps the module tree: containers, hooks, modes, Python forwards, subclasses.

Each test is a case that went wrong when the transform returned a graph (a flat
``GraphModule``, parts, or an executed export): it checks the bio model against plain
PyTorch on a copy of the same model.
"""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import biofx

NEUTRAL = dict(fuzzy_lr_distribution="baseline", seed=0)


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(F.relu(self.norm(self.conv(x)))).mean((2, 3))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.backbone(x))

    def features(self, x):  # a method of the model's own class
        return self.backbone(x)


def pair(model, **config):
    """``(plain, bio)``: the model and a transformed copy with the same weights."""
    return model, biofx.transform(copy.deepcopy(model), **{**NEUTRAL, **config})


def test_the_same_tree_classes_and_methods():
    model, bio = pair(Net())
    assert type(bio).__name__ == "Net" and isinstance(bio, Net) and isinstance(bio, biofx.BioMethods)
    assert type(bio.backbone) is Backbone and type(bio.backbone.norm) is nn.BatchNorm2d
    assert isinstance(bio.head, nn.Linear) and type(bio.head).__name__ == "BioLinear"
    assert (bio.head.in_features, bio.head.out_features) == (8, 4)
    assert [n for n, _ in bio.named_parameters()] == [n for n, _ in model.named_parameters()]
    x = torch.randn(2, 3, 6, 6)
    model.eval(), bio.eval()
    torch.testing.assert_close(bio.features(x), model.features(x))
    torch.testing.assert_close(bio(x), model(x))


def test_transform_works_in_place_and_twice_is_an_error():
    model = Net()
    head = model.head
    bio = biofx.transform(model)
    assert bio is model and bio.head is head  # the same objects
    with pytest.raises(ValueError, match="already transformed by biofx"):
        biofx.transform(bio)
    with pytest.raises(ValueError, match="already transformed by biofx"):
        biofx.transform(nn.Sequential(bio.head))  # a bio layer inside another model


def test_sequential_indexing_length_and_iteration():
    model, bio = pair(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    assert len(bio) == 3 and isinstance(bio[0], nn.Linear) and isinstance(bio[-1], biofx.BioLayer)
    assert [type(m).__name__ for m in bio] == ["BioLinear", "ReLU", "BioLinear"]
    x = torch.randn(5, 4)
    torch.testing.assert_close(bio[2](bio[1](bio[0](x))), model(x))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_transform_keeps_the_mode_of_every_module(mode):
    model = Net()
    getattr(model, mode)()
    bio = biofx.transform(copy.deepcopy(model), synaptic_scaling_gamma=0.1, **NEUTRAL)
    assert [m.training for m in bio.modules() if not isinstance(m, biofx.BioSynapses)] == [
        m.training for m in model.modules()
    ]
    assert all(state.training == (mode == "train") for state in bio.bio_layers())
    x = torch.randn(4, 3, 6, 6)
    torch.manual_seed(0)
    expected = model(x)
    torch.manual_seed(0)
    torch.testing.assert_close(bio(x), expected)  # eval: no dropout; train: the same masks
    counted = bio.bio_layers()[0].activity_n.item()
    assert counted == (0 if mode == "eval" else x.shape[0] * 36)  # activity counts in training only


def test_a_frozen_submodule_in_eval_mode_stays_frozen():
    model, bio = pair(Net())
    for m in (model, bio):
        m.train()
        m.backbone.eval()
    stats = bio.backbone.norm.running_mean.clone()
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(bio(x), model(x))  # dropout off in the backbone
    assert torch.equal(bio.backbone.norm.running_mean, stats)  # BatchNorm statistics do not move
    assert not bio.backbone.conv.bio_state.training and bio.head.bio_state.training


def test_forward_hooks_fire_are_removable_and_survive_the_transform():
    model = Net()
    calls = []
    doubling = model.head.register_forward_hook(lambda m, args, out: out * 2)  # present at transform time
    bio = biofx.transform(model, **NEUTRAL)
    plain = copy.deepcopy(bio)
    counting = bio.head.register_forward_hook(lambda m, args, out: calls.append(out.shape))  # added after
    x = torch.randn(2, 3, 6, 6)
    bio.eval()
    doubled = bio(x)
    assert calls == [torch.Size([2, 4])]
    doubling.remove()
    torch.testing.assert_close(bio(x), doubled / 2)  # the removed hook stops acting
    counting.remove()
    bio(x)
    assert len(calls) == 2
    assert len(plain.head._forward_hooks) == 1  # a copy keeps its own hooks


def test_custom_subclass_qat_and_quantized_layers_stay_plain_with_the_reason():
    class Scaled(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 3

    class Marked(nn.Linear):  # no forward of its own, still a custom type
        pass

    model = nn.Sequential(nn.Linear(4, 4), Scaled(4, 4), Marked(4, 4), nn.Linear(4, 2))
    plain, bio = pair(model)
    reasons = dict(bio.bio_report.plain)
    assert [layer.name for layer in bio.bio_report.converted] == ["0", "3"]
    assert "Scaled overrides forward" in reasons["1"] and "register_layer_kind" in reasons["1"]
    assert "is a subclass of Linear" in reasons["2"]
    x = torch.randn(3, 4)
    torch.testing.assert_close(bio(x), plain(x))  # the subclass's forward still runs

    qat_model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).train()
    qat_model.qconfig = torch.ao.quantization.get_default_qat_qconfig("fbgemm")
    torch.ao.quantization.prepare_qat(qat_model, inplace=True)
    qat, bio_qat = pair(qat_model)
    assert bio_qat.bio_report.converted == () and "quantization-aware (QAT)" in dict(bio_qat.bio_report.plain)["0"]
    torch.testing.assert_close(bio_qat(x), qat(x))  # fake quantization kept

    dynamic = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), dtype=torch.qint8)
    with pytest.warns(UserWarning, match="converted 0 layers of Sequential: 0: a quantized layer"):
        bio_dynamic = biofx.transform(dynamic)
    assert [name for name, _ in bio_dynamic.bio_report.plain] == ["0", "1"]


def test_nothing_to_convert_warns_with_the_reason():
    with pytest.warns(UserWarning, match="converted 0 layers of Sequential: it has no Linear/Conv layer"):
        biofx.transform(nn.Sequential(nn.ReLU()))


def test_activation_checkpointing_recomputes_and_counts_activity_once():
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            return self.head(checkpoint(self.block, x, use_reentrant=False))

    bio = biofx.transform(Checkpointed(), synaptic_scaling_gamma=0.1, **NEUTRAL)
    calls = []
    bio.block[0].register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    x = torch.randn(3, 4)
    bio(x).sum().backward()
    assert len(calls) == 2  # the forward, then its recomputation in backward
    assert bio.block[0].bio_state.activity_n.item() == 3  # counted once


def test_layer_replaced_after_transform_is_reported_and_said_at_the_step():
    bio = biofx.transform(Net(), **NEUTRAL)
    bio.head = nn.Linear(8, 4)  # fine-tuning: a new head
    report = bio.bio_report
    assert [layer.name for layer in report.converted] == ["backbone.conv"]
    assert "appeared after biofx.transform" in dict(report.plain)["head"]
    optimizer = torch.optim.SGD(bio.parameters(), lr=0.1)
    bio(torch.randn(2, 3, 6, 6)).sum().backward()
    with pytest.warns(RuntimeWarning, match=r"layer 'head' \(Linear\) was put into the model after biofx.transform"):
        optimizer.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.step()  # said once
    assert bio.convert_replaced_layers() == ["head"]
    assert isinstance(bio.head, biofx.BioLayer) and bio.head.bio_plan.index == 1
    assert [layer.name for layer in bio.bio_report.converted] == ["backbone.conv", "head"]


def test_load_state_dict_with_assign_keeps_the_layers_bio():
    model, bio = pair(Net(), fuzzy_lr_distribution="uniform", fuzzy_learning_rate_factor_nu=0.5)
    bio.load_state_dict(copy.deepcopy(bio.state_dict()), assign=True)
    optimizer = torch.optim.SGD(bio.parameters(), lr=0.1)  # built after the load
    before = bio.head.weight.detach().clone()
    bio(torch.randn(2, 3, 6, 6)).sum().backward()
    grad = bio.head.weight.grad.clone()
    optimizer.step()
    f = bio.head.bio_state.fuzzy_lr
    torch.testing.assert_close(bio.head.weight.detach(), before - 0.1 * grad * f)  # the update carries f


def test_meta_device_without_reset_says_what_to_call():
    with torch.device("meta"):
        model = Net()
    bio = biofx.transform(model)
    bio.to_empty(device="cpu")
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(RuntimeError, match=r"built on the meta device .* call bio.reset_bio_state\(\)"):
        bio(x)
    for module in bio.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    bio.reset_bio_state()
    assert torch.isfinite(bio(x)).all()
    assert bio.head.bio_state.fuzzy_lr.abs().max() < 2  # drawn, not uninitialized memory


def test_a_bio_layer_shows_its_graph_and_code():
    bio = biofx.transform(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), weight_splitting_Gamma=2,
                          acts_on="gradient", seed=0)
    targets = [n.target for n in bio[0].graph.nodes if n.op != "placeholder"]
    assert targets[-2].__name__ == "weight_split" and "fuzzy_grad" in bio[0].code
    assert "weight_split" not in bio[2].code  # the output layer is not split
    assert {n.target for n in bio.bio_graph.graph.nodes if n.op == "call_module"} == {"0", "1", "2"}


def test_pickled_bio_model_keeps_its_classes(tmp_path):
    bio = biofx.transform(Net(), **NEUTRAL).eval()
    torch.save(bio, tmp_path / "bio.pt")
    other = torch.load(tmp_path / "bio.pt", weights_only=False)
    assert type(other) is type(bio) and type(other.head) is type(bio.head)
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(other(x), bio(x))
    assert other.head.bio_state.layer is other.head


def test_constructing_a_converted_class_builds_a_plain_model():
    """Only biofx.transform makes a model bio: ``type(bio)(...)`` (as Hugging Face's
    ``type(bio).from_pretrained`` does) gives the original class, not a half-made bio model."""
    bio = biofx.transform(Net())
    fresh = type(bio)()
    assert type(fresh) is Net and not isinstance(fresh, biofx.BioMethods)
    layer = type(bio.head)(8, 4)
    assert type(layer) is nn.Linear
    assert type(copy.deepcopy(bio)) is type(bio)  # copies and pickles stay bio
    biofx.transform(fresh)  # and the plain model transforms
