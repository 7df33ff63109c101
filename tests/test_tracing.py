"""biofx.tracing (the model graph, for seeing) and the model's own run time: modes, custom autograd
Functions, attributes, torch.nn transformers."""

import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import biofx
from biofx.tracing import TraceError, trace

NEUTRAL = dict(automatic=(), seed=0)


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d shape: a BatchNorm2d subclass outside torch.nn with ``self.training`` branches."""

    def __init__(self, channels):
        super().__init__(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        use_batch = self.training or not self.track_running_stats
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, use_batch, 0.1, self.eps)
        return self.act(x)


class TrainOnly(nn.Module):
    """Takes a different path in train mode: kept whole (a leaf)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        x = self.fc(x)
        if self.training:
            x = x + 0.5 * torch.randn_like(x)
        return x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = BatchNormAct(4)
        self.noise = TrainOnly()
        self.fc = nn.Linear(4, 5)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        x = self.bn(self.conv(x)).mean((2, 3))
        x = F.dropout(x, 0.3, training=self.training)
        return self.fc(self.noise(x))


def run(model, x, training, *more):
    model.train(training)
    torch.manual_seed(1)
    return model(x, *more)


@pytest.mark.parametrize("transformed_in", ["train", "eval"])
def test_train_and_eval_behave_as_the_original(transformed_in):
    model = Net().train(transformed_in == "train")
    reference = copy.deepcopy(model)
    bio = biofx.transform(copy.deepcopy(model), **NEUTRAL)
    assert set(bio.plain_state_dict()) == set(reference.state_dict())  # num_batches_tracked, scale
    x = torch.randn(6, 3, 7, 7)
    for training in (True, False, True, False):
        assert torch.equal(run(bio, x, training), run(reference, x, training))
        for key, value in reference.state_dict().items():  # running stats updated alike (or not)
            assert torch.equal(bio.state_dict()[key], value), key
    # a train-mode batch norm uses batch statistics: outputs differ between the modes
    assert not torch.equal(run(bio, x, True), run(bio, x, False))


def test_the_graph_is_for_seeing_and_the_model_runs_its_own_code():
    gm = trace(Net().train())
    dropout = next(n for n in gm.graph.nodes if n.target is F.dropout)
    assert dropout.kwargs["training"] is True  # a trace bakes the mode in: never run as the model
    assert {n.target for n in gm.graph.nodes if n.op == "call_module"} >= {"bn", "noise.fc", "fc"}


def test_mode_dependent_submodule_is_converted_too():
    report = biofx.transform(Net()).bio_report
    assert [layer.name for layer in report.converted] == ["conv", "noise.fc", "fc"] and report.plain == ()


def test_submodule_mode_literal_reads_that_submodule():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(4, 4)
            self.p = 0.25

        def forward(self, x):  # Hugging Face's eager attention: p and training both follow the mode
            return F.dropout(self.q(x), p=self.p if self.training else 0.0, training=self.training)

    model = nn.Sequential(Attention(), nn.Linear(4, 2))
    bio = biofx.transform(copy.deepcopy(model), **NEUTRAL)
    assert len(bio.bio_report.converted) == 2
    x = torch.randn(8, 4)
    for training in (True, False):
        assert torch.equal(run(bio, x, training), run(model, x, training))
    bio.train()
    bio.get_submodule("0").eval()  # only the attention's own flag: its dropout is off
    model.train()
    model[0].eval()
    assert torch.equal(bio(x), model(x))


def test_root_that_differs_between_modes_keeps_its_branch():
    class Root(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            x = self.a(x)
            if self.training:
                x = x * 2
            return self.b(x)

    model = Root()
    bio = biofx.transform(copy.deepcopy(model), **NEUTRAL)
    assert len(bio.bio_report.converted) == 2 and bio.bio_report.plain == ()
    x = torch.randn(2, 3)
    for training in (True, False):
        assert torch.equal(run(bio, x, training), run(model, x, training))


class RoundSTE(torch.autograd.Function):
    """Straight-through estimator: round forward, identity backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class Quantized(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(RoundSTE.apply(self.a(x) * 3))


def test_autograd_function_keeps_its_backward():
    model = Quantized()
    x = torch.randn(5, 4)
    model(x).square().sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    bio = biofx.transform(copy.deepcopy(model), **NEUTRAL)
    seen = [n.target for n in bio.bio_graph.graph.nodes if n.op == "call_function"]
    assert seen.count(biofx.tracing.autograd_function) == 1  # one node in the model graph
    bio(x).square().sum().backward()
    for name, p in bio.named_parameters():
        assert torch.equal(p.grad, expected[name]), name
    assert bio.a.weight.grad.abs().sum() > 0  # round's own derivative would be 0
    buffer = io.BytesIO()
    torch.save(bio, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(bio), torch.load(buffer, weights_only=False)):
        assert torch.equal(other(x), bio(x))


class EncoderModel(nn.Module):
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(x))


class FullTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = nn.Transformer(8, 2, 1, 1, 16, dropout=0.1, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, src, tgt):
        return self.head(self.transformer(src, tgt))


@pytest.mark.parametrize(
    "make, inputs, converted",
    [
        (EncoderModel, lambda: (torch.randn(2, 5, 8),), 5),
        (FullTransformer, lambda: (torch.randn(2, 5, 8), torch.randn(2, 4, 8)), 5),
    ],
    ids=["encoder", "transformer"],
)
def test_torch_nn_transformers_are_converted(make, inputs, converted):
    model = make()
    bio = biofx.transform(copy.deepcopy(model), **NEUTRAL)
    report = bio.bio_report
    assert len(report.converted) == converted
    for name, why in report.plain:
        assert name.endswith("out_proj") and "MultiheadAttention reads out_proj.weight" in why
    args = inputs()
    for training in (True, False):
        assert torch.equal(run(bio, args[0], training, *args[1:]), run(model, args[0], training, *args[1:]))
    with torch.no_grad():  # eval without grad: the fast path of the original is not taken by the bio model
        bio.eval()
        model.eval()
        torch.testing.assert_close(bio(*args), model(*args))
    bio.train()
    bio(*args).sum().backward()
    for layer in report.converted:
        assert bio.get_submodule(layer.name).weight.grad is not None, layer.name


def test_multihead_attention_out_proj_is_reported_plain(caplog):
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            y = self.attn(x, x, x)[0]
            if y.sum() > 1e9:  # not traceable: converted in parts
                y = y * 0
            return self.head(y)

    with caplog.at_level("WARNING", logger="biofx"):
        report = biofx.transform(Attention()).bio_report
    assert [layer.name for layer in report.converted] == ["head"]
    assert report.plain[0][0] == "attn.out_proj" and "reads out_proj.weight directly" in report.plain[0][1]
    assert "could not convert 1 Linear/Conv layer(s)" in caplog.text and "attn.out_proj" in caplog.text


def test_layer_whose_weight_is_also_read_directly_is_plain():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.fc(x) + x @ self.fc.weight)

    report = biofx.transform(Tied()).bio_report
    assert [layer.name for layer in report.converted] == ["out"]
    assert report.plain[0][0] == "fc" and "read directly" in report.plain[0][1]


def test_the_models_own_attributes_stay_its_own():
    model = Quantized()
    model.note = "kept"
    model.forward = lambda x: x * 0  # an instance-level forward (as accelerate's hooks set) stays the model's
    bio = biofx.transform(model, **NEUTRAL)
    assert bio is model and bio.note == "kept" and "forward" in vars(bio)
    x = torch.randn(3, 4)
    assert torch.equal(bio(x), x * 0)
    del bio.forward
    assert torch.equal(bio(x), Quantized.forward(bio, x))
