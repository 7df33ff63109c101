"""Seeing models torch.fx cannot trace: torch.export (biofx.capture), else the module tree.

The capture is for the plan, the report and drawings; the bio model runs its own Python. Each
check compares the bio model (a transformed copy, mechanisms neutral) with the plain model in
plain PyTorch: outputs in eval and train mode (same seed, so the same dropout masks),
gradients times the fuzzy multipliers, parameter names and ``state_dict``.
"""

import copy
import logging

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import biofx
from biofx import ConfigMap
from biofx.capture import CaptureError, default_inputs

NEUTRAL = dict(fuzzy_lr_distribution="baseline", seed=0)


class Untraceable(nn.Module):
    """torch.fx stops at ``x.dim()``; mode-dependent dropout; ``fc`` called twice."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1, padding_mode="reflect")
        self.fc = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        if x.dim() != 3:
            raise ValueError("expected [batch, channels, length]")
        h = self.conv(x).transpose(1, 2)
        h = F.dropout(h, 0.5 if self.training else 0.0, training=self.training)
        h = self.fc(torch.relu(self.fc(h)))
        return self.head(h).mean(1)


def outputs_match(model, bio, *args, **kwargs):
    """Outputs of ``model`` and ``bio`` in eval and in train mode, from the same seed."""
    for training in (False, True):
        model.train(training)
        bio.train(training)
        torch.manual_seed(1)
        expected = model(*args, **kwargs)
        torch.manual_seed(1)
        got = bio(*args, **kwargs)
        assert torch.equal(first(got), first(expected)), f"{'train' if training else 'eval'} mode"


def first(output):
    """A tensor output, or the first field of a tuple / Hugging Face ``ModelOutput``."""
    return output if isinstance(output, torch.Tensor) else output[0]


def bio_layers_by_name(bio):
    return {name: m for name, m in bio.named_modules() if isinstance(m, biofx.BioLayer)}


def grads_carry_fuzzy(model, bio, loss):
    """Every bio weight's gradient is the plain model's gradient times its fuzzy multiplier."""
    model.train()
    bio.train()
    torch.manual_seed(2)
    loss(model).backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    torch.manual_seed(2)
    loss(bio).backward()
    checked = 0
    for name, layer in bio_layers_by_name(bio).items():
        if f"{name}.weight" in plain:
            expected = plain[f"{name}.weight"] * layer.bio_state.fuzzy_lr
            torch.testing.assert_close(layer.weight.grad, expected)
            checked += 1
    assert checked and not all(torch.equal(l.fuzzy_lr, torch.ones_like(l.fuzzy_lr)) for l in bio.bio_layers())


def sgd_step_changes_weights(bio, loss):
    """One SGD step: the loss is finite and every bio weight moves by −lr × its bio gradient."""
    bio.zero_grad(set_to_none=True)
    before = {layer.layer_name: layer.weight.detach().clone() for layer in bio.bio_layers()}
    optimizer = torch.optim.SGD(bio.parameters(), lr=0.1)
    value = loss(bio)
    value.backward()
    grads = {layer.layer_name: layer.weight.grad.clone() for layer in bio.bio_layers() if layer.weight.grad is not None}
    optimizer.step()
    assert torch.isfinite(value) and grads
    for layer in bio.bio_layers():
        step = 0.1 * grads[layer.layer_name] if layer.layer_name in grads else 0
        torch.testing.assert_close(layer.weight.detach(), before[layer.layer_name] - step)
    assert any(not torch.equal(layer.weight, before[layer.layer_name]) for layer in bio.bio_layers())


def test_untraceable_model_is_captured_whole():
    model = Untraceable()
    x = torch.randn(2, 2, 7)
    bio = biofx.transform(copy.deepcopy(model), example_inputs=(x,), **NEUTRAL)
    report = bio.bio_report
    assert type(bio).__name__ == "Untraceable" and isinstance(bio, Untraceable)  # the tree is kept
    assert report.capture == "export (inputs: x)" and "captured by export (inputs: x)" in str(report)
    assert [layer.name for layer in report.converted] == ["conv", "fc", "head"] and report.plain == ()
    sites = [n.target for n in bio.bio_graph.graph.nodes if n.op == "call_module"]
    assert sites == ["conv", "fc", "fc", "head"]  # fc: both calls are layer sites
    assert all(isinstance(bio.bio_graph.get_submodule(t), biofx.BioLayer) for t in sites)
    assert dict(bio.named_parameters()).keys() == dict(model.named_parameters()).keys()
    outputs_match(model, bio, x)
    outputs_match(model, bio, torch.randn(5, 2, 11))  # the model's own Python: any batch and length


def test_modes_are_the_models_own():
    """No graph runs the model: its dropout and the layers' modes follow train()/eval() as ever."""
    bio = biofx.transform(Untraceable().eval(), example_inputs=(torch.randn(2, 2, 7),))
    assert not bio.training and not any(m.training for m in bio.modules())
    bio.train()
    bio.head.eval()
    assert bio.training and not bio.head.training and not bio.head.bio_state.training and bio.fc.training


def test_gradients_and_sgd_step():
    model = Untraceable()
    bio = biofx.transform(copy.deepcopy(model), example_inputs=(torch.randn(2, 2, 7),), acts_on="gradient", seed=0)
    loss = lambda m: m(torch.randn(4, 2, 9)).square().mean()  # noqa: E731
    grads_carry_fuzzy(model, bio, loss)
    sgd_step_changes_weights(bio, loss)


def test_state_dict_round_trips_with_the_original():
    model = Untraceable()
    bio = biofx.transform(copy.deepcopy(model), example_inputs=(torch.randn(2, 2, 7),), acts_on="gradient")
    plain = Untraceable()
    plain.load_state_dict(bio.plain_state_dict())  # strict: the same keys
    bio.load_state_dict(plain.state_dict())  # a plain checkpoint loads into the bio model
    assert all(".biofx_state." in k for k in bio.state_dict().keys() - model.state_dict().keys())


def test_layer_call_that_does_not_collapse_is_left_plain_with_the_reason():
    class Scaled(nn.Linear):
        def forward(self, x, scale):  # a second tensor input: not a plain layer call
            return super().forward(x) * scale

    class Model(Untraceable):
        def __init__(self):
            super().__init__()
            self.scaled = Scaled(4, 4)

        def forward(self, x):
            h = super().forward(x)
            return self.scaled(torch.cat([h, h[:, :1]], 1), h.sum())

    model = Model().eval()
    x = torch.randn(2, 2, 7)
    bio = biofx.transform(copy.deepcopy(model), example_inputs=(x,)).eval()
    assert [layer.name for layer in bio.bio_report.converted] == ["conv", "fc", "head"]
    assert "2 tensor input(s) and 1 output(s)" in dict(bio.bio_report.plain)["scaled"]
    assert type(bio.scaled) is Scaled
    assert torch.equal(bio(x), model(x))


def test_captured_model_deepcopies_and_pickles(tmp_path):
    bio = biofx.transform(Untraceable(), example_inputs=(torch.randn(2, 2, 7),)).eval()
    x = torch.randn(3, 2, 5)
    torch.save(bio, tmp_path / "bio.pt")
    for other in (copy.deepcopy(bio), torch.load(tmp_path / "bio.pt", weights_only=False)):
        assert len(other.bio_layers()) == 3 and other.bio_report.capture == "export (inputs: x)"
        assert torch.equal(other.eval()(x), bio(x))
        other.train()  # the copy's own modes
        assert other.training and other.fc.bio_state.training and not bio.training


def test_untraced_and_unexported_model_is_planned_from_the_module_tree(caplog, capfd):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.body(x)
            if h.sum() > 0:  # data-dependent: neither torch.fx nor torch.export captures it
                h = -h
            return self.head(h)

    x = torch.randn(3, 4)
    with caplog.at_level(logging.INFO, logger="biofx"):
        bio = biofx.transform(Branchy(), example_inputs=(x,), weight_splitting_Gamma=2)
    report = bio.bio_report
    assert report.capture.startswith("module tree (torch.export could not capture Branchy")
    assert bio.bio_graph is None and [l.name for l in report.converted] == ["body", "head"]
    assert [l.name for l in report.converted if "weight_split (Γ=2)" in l.mechanisms] == ["body"]  # head: output
    assert "planning from the module tree" in caplog.text
    printed = capfd.readouterr()
    assert "def forward" not in printed.err + printed.out  # the failed export's graphs are not dumped
    other = biofx.transform(Branchy())  # no inputs: no export, and the note says how to get one
    assert "pass example_inputs=" in other.bio_report.capture


def test_capture_arguments_are_checked():
    model = Untraceable()
    with pytest.raises(ValueError, match="capture must be one of 'auto', 'export', 'modules'"):
        biofx.transform(model, capture="dynamo")
    with pytest.raises(ValueError, match="needs example inputs for Untraceable: pass example_inputs="):
        biofx.transform(model, capture="export")
    with pytest.raises(TypeError, match="example_inputs must be a dict"):
        biofx.transform(model, example_inputs=3)
    with pytest.raises(CaptureError, match="do not fit Untraceable.forward"):
        biofx.transform(model, example_inputs={"y": torch.randn(2, 2, 7)}, capture="export")
    tree = biofx.transform(model, example_inputs=(torch.randn(2, 2, 7),), capture="modules")
    assert tree.bio_report.capture == "module tree (capture='modules')" and tree.bio_graph is None


def test_captured_graph_has_the_bio_layers_as_leaves():
    bio = biofx.transform(Untraceable(), example_inputs=(torch.randn(2, 2, 7),), acts_on="gradient")
    leaves = {n.target: type(bio.bio_graph.get_submodule(n.target)).__name__
              for n in bio.bio_graph.graph.nodes if n.op == "call_module"}
    assert leaves == {"conv": "BioConv1d", "fc": "BioLinear", "head": "BioLinear"}


# -- Hugging Face transformers ------------------------------------------------------------
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def tiny(name):
    t = transformers
    if name == "bert":
        return t.BertModel(t.BertConfig(vocab_size=100, max_position_embeddings=64, **SMALL))
    if name == "gpt2":
        # untied: a tied head's multiplier acts on the head's share of the gradient only
        config = t.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64, tie_word_embeddings=False)
        return t.GPT2LMHeadModel(config)
    if name == "llama":
        config = t.LlamaConfig(vocab_size=100, max_position_embeddings=64, num_key_value_heads=1, **SMALL)
        return t.LlamaForCausalLM(config)
    assert name == "vit"
    return t.ViTForImageClassification(t.ViTConfig(image_size=16, patch_size=8, num_labels=3, **SMALL))


def hf_inputs(name):
    if name == "vit":
        return {"pixel_values": torch.randn(4, 3, 16, 16)}
    ids = torch.randint(0, 100, (4, 11))
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def hf_loss(inputs):
    def loss(model):
        return model(**inputs)[0].square().mean()

    return loss


def layer_count(model):
    return sum(biofx.layers.kind_of(m) is not None for m in model.modules())


def test_default_inputs_of_hugging_face_models():
    t = transformers
    shapes = lambda model: {k: tuple(v.shape) for k, v in default_inputs(model).items()}  # noqa: E731
    assert shapes(tiny("bert")) == {"input_ids": (3, 5), "attention_mask": (3, 5)}
    assert shapes(tiny("vit")) == {"pixel_values": (2, 3, 16, 16)}
    bart = t.BartModel(t.BartConfig(vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=1,
                                    encoder_attention_heads=2, decoder_attention_heads=2))
    assert shapes(bart) == {"input_ids": (3, 5), "attention_mask": (3, 5), "decoder_input_ids": (3, 4)}
    whisper = t.WhisperModel(t.WhisperConfig(vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=1,
                                             encoder_attention_heads=2, decoder_attention_heads=2, num_mel_bins=8,
                                             max_source_positions=16, pad_token_id=0))
    assert shapes(whisper) == {"input_features": (2, 8, 32), "decoder_input_ids": (2, 4)}
    assert default_inputs(Untraceable()) is None


@pytest.fixture(scope="module")
def bert():
    """A tiny BERT and its bio copy (fuzzy rates only act on gradients: outputs stay equal)."""
    torch.manual_seed(0)
    model = tiny("bert")
    return model, biofx.transform(copy.deepcopy(model), capture="export", acts_on="gradient", seed=0)


@pytest.mark.slow  # the fixture exports BERT (5-10 s)
def test_bert_is_seen_whole_with_original_names(bert):
    model, bio = bert
    report = bio.bio_report
    assert isinstance(bio, type(model)) and type(bio).__name__ == "BertModel"
    assert report.capture == "export (inputs: input_ids, attention_mask)"
    assert len(report.converted) == layer_count(model) == 13 and report.plain == ()
    assert "encoder.layer.0.attention.self.query.weight" in dict(bio.named_parameters())
    assert isinstance(bio.encoder.layer[0].attention.self.query, nn.Linear)
    assert bio.state_dict().keys() - model.state_dict().keys() == {k for k in bio.state_dict() if "biofx_state." in k}
    model.load_state_dict(bio.plain_state_dict())


@pytest.mark.slow  # the fixture exports BERT (5-10 s)
def test_bert_matches_in_both_modes_and_other_shapes(bert):
    model, bio = bert
    outputs_match(model, bio, **hf_inputs("bert"))
    ids = torch.randint(0, 100, (1, 30))
    outputs_match(model, bio, input_ids=ids, attention_mask=torch.ones_like(ids))


@pytest.mark.slow  # the fixture exports BERT (5-10 s)
def test_bert_trains(bert):
    model, bio = bert
    loss = hf_loss(hf_inputs("bert"))
    grads_carry_fuzzy(model, bio, loss)
    sgd_step_changes_weights(bio, loss)


def compiles_without_graph_breaks(bio, inputs):
    """``torch.compile(bio, fullgraph=False)``: no graph break, eager's outputs and gradients."""
    for training in (True, False):
        torch._dynamo.reset()
        assert torch._dynamo.explain(bio.train(training))(**inputs).graph_break_count == 0
    compiled = torch.compile(bio, fullgraph=False, backend="aot_eager")  # Inductor: tests/test_compile.py
    torch.testing.assert_close(compiled(**inputs)[0], bio(**inputs)[0])  # eval mode
    bio.train().zero_grad(set_to_none=True)
    compiled(**inputs)[0].square().mean().backward()
    assert any(layer.weight.grad is not None for layer in bio.bio_layers())


@pytest.mark.slow  # the fixture and a compile
def test_bert_compiles_without_graph_breaks(bert):
    compiles_without_graph_breaks(bert[1], hf_inputs("bert"))


@pytest.mark.slow  # an export per model (3-8 s each on 2 CPU cores) and a compile
@pytest.mark.parametrize("name", ["gpt2", "llama", "vit"])
def test_transformers_are_seen_whole_train_and_compile(name):
    torch.manual_seed(0)
    model = tiny(name)
    inputs = hf_inputs(name)
    bio = biofx.transform(copy.deepcopy(model), capture="export", acts_on="gradient", seed=0)  # HF default inputs
    assert isinstance(bio, type(model)) and bio.bio_report.capture.startswith("export")
    assert len(bio.bio_report.converted) == layer_count(model) and bio.bio_report.plain == ()
    outputs_match(model, bio, **inputs)
    grads_carry_fuzzy(model, bio, hf_loss(inputs))
    sgd_step_changes_weights(bio, hf_loss(inputs))
    compiles_without_graph_breaks(bio, inputs)


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_transformers_without_inputs_convert_every_layer_from_the_module_tree(name):
    torch.manual_seed(0)
    model = tiny(name)
    bio = biofx.transform(copy.deepcopy(model), acts_on="gradient", seed=0)
    assert bio.bio_report.capture.startswith("module tree") and bio.bio_report.plain == ()
    assert len(bio.bio_report.converted) == layer_count(model)
    outputs_match(model, bio, **hf_inputs(name))
    grads_carry_fuzzy(model, bio, hf_loss(hf_inputs(name)))
