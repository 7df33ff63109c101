"""The reference library's API on biofx, and numerical agreement with the reference 0.0.5."""

import copy

import pytest
import torch
import torch.nn as nn

import biofx
from biofx import BioConfig, BioConverter, Distribution
from biofx.bio_module import BioModule

from conftest import MLP


class SimpleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(10, 20)
        self.fc2 = nn.Linear(20, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_converter_config_api():
    conv = BioConverter(fuzzy_learning_rate_factor_nu=0.16, dampening_factor=0.6, crystal_thresh=4.5e-05)
    assert conv.get_config().dampening_factor == 0.6
    conv.update_config(dampening_factor=0.7, crystal_thresh=5e-05)
    assert conv.get_config().dampening_factor == 0.7 and conv.get_config().crystal_thresh == 5e-05
    conv = BioConverter.from_dict({"fuzzy_learning_rate_factor_nu": 0.2, "dampening_factor": 0.7})
    assert conv.get_config().fuzzy_learning_rate_factor_nu == 0.2
    conv = BioConverter(config=BioConfig(fuzzy_lr_distribution=Distribution.NORMAL), base_lr=0.2)
    assert conv.get_config().fuzzy_lr_distribution is Distribution.NORMAL and conv.get_config().base_lr == 0.2
    with pytest.raises(ValueError, match="dampening_factor"):
        BioConverter(dampening_factor=2.0)


def test_convert_instance_call_and_methods():
    bio = BioConverter()(SimpleModel())
    assert isinstance(bio, biofx.BioMethods)
    out = bio(torch.randn(1, 10))
    assert out.shape == (1, 1)
    for name in ("fuzzy_learning_rates", "volume_dependent_lr", "crystallize", "rejuvenate_weights",
                 "update_fuzzy_learning_rates", "enforce_dales_principle", "scale_grad", "l1_reg",
                 "dalian_network_initialization"):
        assert callable(getattr(bio, name))


def test_convert_class_and_decorator():
    converter = BioConverter(weight_splitting_Gamma=2)

    @converter
    class Decorated(nn.Module):
        def __init__(self, hidden=8):
            super().__init__()
            self.fc1 = nn.Linear(4, hidden)
            self.fc2 = nn.Linear(hidden, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    model = Decorated(hidden=6)
    assert isinstance(model, biofx.BioMethods) and type(model).__name__ == "Decorated"
    assert model.fc1.out_features == 6
    model(torch.randn(2, 4)).sum().backward()
    model.crystallize()
    Converted = BioConverter().convert(SimpleModel)
    assert isinstance(Converted(), biofx.BioMethods)


def test_convert_rejects_other_types():
    with pytest.raises(TypeError, match="Unsupported type for module_class_or_instance"):
        BioConverter().convert(3)


def test_documented_errors():
    with pytest.raises(ValueError, match="weight_splitting_Gamma .* must evenly divide the number of features"):
        BioConverter(weight_splitting_Gamma=2)(nn.Linear(10, 15))
    BioConverter(weight_splitting_Gamma=3)(nn.Linear(10, 15))
    BioConverter(weight_splitting_Gamma=2)(nn.Linear(10, 16))
    bio = BioConverter()(SimpleModel())
    with pytest.raises(AttributeError, match="Can not enforce dales principle without apply_dales_principle set True"):
        bio.enforce_dales_principle()
    bio = BioConverter()(SimpleModel())
    with pytest.raises(RuntimeError, match="No gradients found for the weights"):
        bio.fuzzy_learning_rates()


def test_mark_skip_weight_splitting():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    assert BioConverter.mark_skip_weight_splitting(model[0]) is model[0]
    BioConverter(weight_splitting_Gamma=2)(model)  # 5 outputs, but skipped: no error


def test_reference_tutorial_loop_learns():
    torch.manual_seed(0)
    converter = BioConverter(fuzzy_learning_rate_factor_nu=0.16, dampening_factor=0.6, crystal_thresh=4.5e-05,
                             rejuvenation_parameter_dre=8.0, weight_splitting_Gamma=2, automatic=())
    bio = converter(SimpleModel())
    opt = torch.optim.Adam(bio.parameters(), lr=0.01)
    x, w = torch.randn(100, 10), torch.randn(10, 1)
    y = x @ w
    losses = []
    for epoch in range(60):
        opt.zero_grad()
        loss = nn.functional.mse_loss(bio(x), y)
        loss.backward()
        bio.volume_dependent_lr()
        bio.fuzzy_learning_rates()
        bio.crystallize()
        opt.step()
        if epoch % 10 == 0:
            bio.rejuvenate_weights()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_activity_tutorial_with_input_argument():
    bio = BioConverter(config=BioConfig(fuzzy_lr_distribution=Distribution.ACTIVITY, fuzzy_lr_dynamic=True),
                       automatic=())(SimpleModel())
    x = torch.randn(30, 10)
    bio(x).sum().backward()
    bio.update_fuzzy_learning_rates(x)
    bio.fuzzy_learning_rates()
    assert not torch.equal(bio.bio_layers()[0].fuzzy_lr, torch.ones(20, 10))


def test_custom_bio_module_recipe():
    class CustomBioModule(BioModule):
        def custom_bio_method(self):
            with torch.no_grad():
                self.get_parent().weight.mul_(0.5)

    CustomBioModule.exposed_functions = BioModule.exposed_functions + ("custom_bio_method",)

    class CustomBioConverter(BioConverter):
        def _bio_modulize(self, module):
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.add_module("bio_mod", CustomBioModule(lambda: module, **self.bio_module_params))

    model = SimpleModel()
    w = model.fc1.weight.detach().clone()
    bio = CustomBioConverter()(model)
    bio.custom_bio_method()
    torch.testing.assert_close(bio.fc1.weight, 0.5 * w)


def test_standalone_bio_module_like_reference_tests():
    layer = nn.Linear(10, 10)
    bio_mod = BioModule(lambda: layer)
    layer(torch.randn(2, 10)).sum().backward()
    g = layer.weight.grad.clone()
    bio_mod.fuzzy_learning_rates()
    torch.testing.assert_close(layer.weight.grad, g * bio_mod.fuzzy_lr)


# -- agreement with the installed reference where its docs and code agree ------------------

ref = pytest.importorskip("bio_transformations", reason="reference library not installed")


def reference_module(layer, **kw):
    from bio_transformations.bio_config import BioConfig as RefConfig
    from bio_transformations.bio_module import BioModule as RefModule

    return RefModule(lambda: layer, config=RefConfig(**kw))


def test_agrees_on_fuzzy_and_crystallize():
    layer = nn.Linear(12, 9)
    bio = biofx.transform(copy.deepcopy(layer), automatic=(), crystal_thresh=1e-2)
    theirs = reference_module(layer, crystal_thresh=1e-2)
    theirs.fuzzy_learning_rate_parameters.data.copy_(bio.bio_layers()[0].fuzzy_lr)
    x = torch.randn(4, 12)
    layer(x).square().sum().backward()
    bio(x).square().sum().backward()
    theirs.fuzzy_learning_rates()
    bio.fuzzy_learning_rates()
    torch.testing.assert_close(bio.weight.grad, layer.weight.grad)
    theirs.crystallize()
    bio.crystallize()
    torch.testing.assert_close(bio.bio_layers()[0].fuzzy_lr, theirs.fuzzy_learning_rate_parameters.data)


def test_agrees_on_volume_mean():
    layer = nn.Linear(50, 40)
    bio = biofx.transform(copy.deepcopy(layer), automatic=(), lr_variability=1e-7)
    theirs = reference_module(layer, lr_variability=1e-7)
    x = torch.randn(4, 50)
    layer(x).sum().backward()
    bio(x).sum().backward()
    theirs.volume_dependent_lr()
    bio.volume_dependent_lr()
    torch.testing.assert_close(bio.weight.grad, layer.weight.grad, rtol=1e-5, atol=1e-9)


def test_agrees_on_temporal_decay():
    layer = nn.Linear(6, 5)
    kw = dict(fuzzy_lr_distribution="temporal", fuzzy_lr_dynamic=True, fuzzy_lr_update_freq=2, fuzzy_lr_decay=0.8)
    bio = biofx.transform(copy.deepcopy(layer), automatic=(), **kw)
    theirs = reference_module(layer, **{**kw, "fuzzy_lr_distribution": ref.bio_module.Distribution.TEMPORAL})
    theirs.fuzzy_learning_rate_parameters.data.copy_(bio.bio_layers()[0].fuzzy_lr)
    for _ in range(9):  # noise comes only on the 20th update
        theirs.update_fuzzy_learning_rates()
        bio.update_fuzzy_learning_rates()
    torch.testing.assert_close(bio.bio_layers()[0].fuzzy_lr, theirs.fuzzy_learning_rate_parameters.data)


def test_agrees_on_conv2d_weight_splitting():
    from bio_transformations import BioConverter as RefConverter

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    ours = biofx.transform(copy.deepcopy(model), weight_splitting_Gamma=2, fuzzy_lr_distribution="baseline")
    theirs = RefConverter(weight_splitting_Gamma=2)(model)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(ours(x), theirs(x))


def test_resnet_like_pretrained_model_converts():
    """The docs convert a torchvision ResNet; a residual CNN with BatchNorm and a downsample path."""

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.downsample(x))

    class TinyResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.layer1 = Block(8, 16, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.layer1(self.stem(x))), 1))

    pretrained = TinyResNet().eval()
    reference = copy.deepcopy(pretrained)
    bio = BioConverter(fuzzy_lr_distribution="baseline").convert(pretrained)
    assert [l.layer_name for l in bio.bio_layers()] == [
        "stem", "layer1.conv1", "layer1.conv2", "layer1.downsample.0", "fc"]
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(bio(x), reference(x), rtol=0, atol=0)
