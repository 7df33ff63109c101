"""Models that do not trace whole: the tracing fallback (biofx.fallback), BERT and GPT-2.

The toy models below have data-dependent control flow at the root, so ``torch.fx`` cannot
trace them; the Hugging Face models fail on their ``*args/**kwargs`` decorators. biofx then
converts the largest submodules that trace and keeps the rest eager.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import biofx
from biofx import BioConfig, ConfigMap
from biofx.fallback import BioRoot, FallbackReport

NEUTRAL = dict(fuzzy_lr_distribution="baseline")


class Body(nn.Module):
    """Traceable: becomes one part."""

    def __init__(self, width=8):
        super().__init__()
        self.fc1 = nn.Linear(6, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class Gate(nn.Module):
    """Not traceable (data-dependent branch); its layers are converted one by one."""

    def __init__(self, width=8):
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, width)

    def forward(self, x):
        if torch.isfinite(x).all():
            return self.a(x) + self.b(x)
        return self.b(x)


class Branchy(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.body = Body(width)
        self.norm = nn.LayerNorm(width)  # no Linear/Conv: stays as it is
        self.gate = Gate(width)
        self.head = nn.Linear(width, 4)

    def forward(self, x):
        h = self.gate(self.norm(self.body(x)))
        if h.mean() > 100:  # data-dependent: the root does not trace
            h = h * 0
        return self.head(h)


class Traceable(Branchy):
    """Same layers, registration order = execution order, but traceable."""

    def forward(self, x):
        return self.head(self.gate.b(self.gate.a(self.norm(self.body(x)))))


class Chain(Branchy):
    """Untraceable; executes the same layers in the same order as :class:`Traceable`."""

    def forward(self, x):
        if x.shape[0] > 0:
            return Traceable.forward(self, x)
        return x


def test_untraceable_root_converts_its_parts():
    model = Branchy()
    x = torch.randn(5, 6)
    expected = model(x)
    bio = biofx.transform(model, **NEUTRAL)
    report = bio.bio_report
    assert isinstance(bio, BioRoot) and isinstance(bio, Branchy) and type(bio).__name__ == "BioBranchy"
    assert isinstance(report, FallbackReport)
    assert report.parts == ("body", "gate.a", "gate.b", "head")
    assert [path for path, _ in report.eager] == ["", "gate"]
    assert "(Branchy)" in report.eager[0][1] and "isfinite(x).all()" in report.eager[0][1]  # failed inside gate
    assert "(Gate)" in report.eager[1][1] and "isfinite(x).all()" in report.eager[1][1]
    assert [layer.name for layer in report.converted] == ["body.fc1", "body.fc2", "gate.a", "gate.b", "head"]
    assert report.plain == ()
    assert [layer.layer_name for layer in bio.bio_layers()] == [layer.name for layer in report.converted]
    assert isinstance(bio.body, biofx.BioGraphModule) and isinstance(bio.gate.a, biofx.BioGraphModule)
    assert torch.equal(bio(x), expected)
    assert "traced in 4 part(s)" in str(report)


def test_original_model_stays_plain_and_shares_parameters():
    model = Branchy()
    children = dict(model.named_modules())
    bio = biofx.transform(model)
    assert type(model) is Branchy and dict(model.named_modules()).keys() == children.keys()
    assert all(model.get_submodule(n) is m for n, m in children.items())
    assert bio.gate is not model.gate  # containers above converted parts are copies
    assert bio.norm is model.norm  # everything else is shared
    bio_params = dict(bio.named_parameters())
    assert all(bio_params[n] is p for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="already transformed"):
        biofx.transform(bio)


def test_parts_match_a_whole_model_trace():
    """Same seed, same layer order: the same bio state and the same gradients."""
    x = torch.randn(5, 6)
    cfg = dict(seed=3, apply_dales_principle=True, automatic=("fuzzy", "volume"),
               fuzzy_lr_distribution="layer_adaptive")
    traced = biofx.transform(Traceable(), **cfg)
    parts = biofx.transform(Chain(), **cfg)
    # the stored parameters, DANN's interneurons included (plain_state_dict holds the weights the forward uses)
    parts.load_state_dict({k: v for k, v in traced.state_dict().items() if "biofx_state." not in k})
    assert isinstance(traced, biofx.BioGraphModule) and isinstance(parts, BioRoot)
    for a, b in zip(traced.bio_layers(), parts.bio_layers(), strict=True):
        assert a.layer_name == b.layer_name and a.index == b.index
        for name in ("fuzzy_lr", "rng_key", "dale_sign"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (a.layer_name, name)
    assert torch.equal(traced(x), parts(x))
    traced(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in traced.named_parameters()}
    parts.zero_grad()
    parts(x).square().sum().backward()
    for name, p in parts.named_parameters():
        assert torch.equal(p.grad, grads[name]), name


def test_layer_indices_and_keys_are_global():
    bio = biofx.transform(Branchy(), fuzzy_lr_distribution="layer_adaptive", fuzzy_learning_rate_factor_nu=0.4)
    layers = bio.bio_layers()
    assert [layer.index for layer in layers] == list(range(5))
    assert len({int(layer.rng_key) for layer in layers}) == 5
    for layer in layers:  # ν_l = ν·(1 − 0.5·l/L) with l, L of the whole model
        assert (layer.config.fuzzy_lr_layer_index, layer.config.fuzzy_lr_total_layers) == (layer.index, 5)
        nu = 0.4 * (1 - 0.5 * layer.index / 5)
        assert (layer.fuzzy_lr - 1).abs().max() <= nu + 1e-6
    assert not torch.equal(layers[2].fuzzy_lr, layers[3].fuzzy_lr)  # gate.a and gate.b: same shape, own draws


def test_weight_splitting_skips_the_whole_models_last_layer():
    bio = biofx.transform(Branchy(), weight_splitting_Gamma=2)
    split = {layer.name: any("weight_split" in m for m in layer.mechanisms) for layer in bio.bio_report.converted}
    assert split == {"body.fc1": True, "body.fc2": True, "gate.a": True, "gate.b": True, "head": False}
    x = torch.randn(3, 8)
    gate_a, head = bio.gate.a(x), bio.head(x)
    assert torch.equal(gate_a[:, 0::2], gate_a[:, 1::2])  # each member of a group gets the group's sum
    assert not torch.equal(head[:, 0::2], head[:, 1::2])
    message = r"features \(8\) of layer .body\.fc1.*mark_skip_weight_splitting\(model\.body\.fc1\)"
    with pytest.raises(ValueError, match=message):
        biofx.transform(Branchy(width=8), weight_splitting_Gamma=3)


def test_config_map_uses_full_paths():
    bio = biofx.transform(Branchy(), ConfigMap({"gate.a": None, "re:body\\..*": BioConfig(apply_dales_principle=True)}))
    report = bio.bio_report
    assert ("gate.a", "left plain by ConfigMap (name 'gate.a')") in report.plain
    assert "gate.a" not in [layer.name for layer in report.converted]
    dale = {layer.name for layer in report.converted if "dale" in layer.mechanisms}
    assert dale == {"body.fc1", "body.fc2"}
    with pytest.raises(ValueError, match="did you mean 'gate.b'"):
        biofx.transform(Branchy(), ConfigMap({"gate.bb": None}))


def test_leaf_modules_are_kept_eager_and_reported():
    bio = biofx.transform(Branchy(), leaf_modules=[Gate])
    assert bio.bio_report.parts == ("body", "head")
    plain = dict(bio.bio_report.plain)
    assert plain["gate.a"].startswith("inside leaf module 'gate' (Gate)") and "gate.b" in plain


def test_shared_module_is_converted_at_every_place():
    model = Branchy()
    model.alias = model.head  # the same layer registered twice
    bio = biofx.transform(model)
    assert bio.alias is bio.head and isinstance(bio.head, biofx.BioGraphModule)
    assert len(bio.bio_layers()) == 5


def test_nothing_traces_raises_with_path_operation_and_fix():
    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x)

    class Root(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Inner()

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.inner(x)
            return x

    with pytest.raises(biofx.TraceError) as info:
        biofx.transform(Root(), leaf_modules=[Inner])
    message = str(info.value)
    assert "'<root>' (Root)" in message and "x.sum() > 0" in message
    assert "leaf_modules" in message and "concrete_args" in message
    assert "all are inside leaf modules" in message


def test_fallback_model_trains_with_explicit_methods():
    bio = biofx.transform(Branchy(), automatic=(), apply_dales_principle=True)
    x, y = torch.randn(16, 6), torch.randn(16, 4)
    with pytest.raises(RuntimeError, match="No gradients found"):
        bio.fuzzy_learning_rates()
    nn.functional.mse_loss(bio(x), y).backward()
    grads = {layer.layer_name: layer.weight.grad.clone() for layer in bio.bio_layers()}
    bio.fuzzy_learning_rates()
    for layer in bio.bio_layers():
        assert torch.equal(layer.weight.grad, grads[layer.layer_name] * layer.fuzzy_lr)
    bio.enforce_dales_principle()
    assert bio.l1_reg() > 0 and int(bio.rejuvenate_weights()) >= 0


# -- Hugging Face transformers ------------------------------------------------------------
# capture="parts": these test the fallback on Hugging Face models; tests/test_capture.py
# tests their whole-graph capture with torch.export.
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
from transformers.pytorch_utils import Conv1D  # noqa: E402


def tiny_bert(intermediate=37, classes=None):
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=intermediate,
        vocab_size=100, max_position_embeddings=64, num_labels=classes or 2,
    )
    cls = transformers.BertForSequenceClassification if classes else transformers.BertModel
    return cls(config)


def tiny_gpt2(tie=True):
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=tie,
    )
    return transformers.GPT2LMHeadModel(config)


def bio_weights(bio):
    return {id(layer.weight) for layer in bio.bio_layers()}


def test_bert_converts_every_linear_in_parts():
    model = tiny_bert()
    bio = biofx.transform(model, capture="parts")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 13
    assert [layer.name for layer in bio.bio_report.converted] == linears and bio.bio_report.plain == ()
    assert bio_weights(bio) == {id(model.get_submodule(n).weight) for n in linears}
    # attention.self (q, k, v) does not trace: each projection is its own part
    assert "encoder.layer.0.attention.self.query" in bio.bio_report.parts
    assert "encoder.layer.0.intermediate" in bio.bio_report.parts
    assert ("pooler" in bio.bio_report.parts) and "encoder" in dict(bio.bio_report.eager)


def test_gpt2_converts_every_conv1d_and_linear():
    model = tiny_gpt2()
    bio = biofx.transform(model, capture="parts")
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))]
    assert len(layers) == 9
    assert sorted(layer.name for layer in bio.bio_report.converted) == sorted(layers)
    kinds = {layer.name: layer.kind for layer in bio.bio_report.converted}
    assert kinds["transformer.h.0.attn.c_attn"] == "HFConv1D" and kinds["lm_head"] == "Linear"
    assert bio_weights(bio) == {id(model.get_submodule(n).weight) for n in layers}
    assert "transformer.h.0.mlp" in bio.bio_report.parts  # GPT2MLP traces whole


@pytest.mark.parametrize("make", [tiny_bert, tiny_gpt2], ids=["bert", "gpt2"])
def test_neutral_transform_keeps_outputs_bit_identical(make):
    model = make().eval()
    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    expected = model(input_ids=ids, attention_mask=mask)[0]
    bio = biofx.transform(model, **NEUTRAL, capture="parts").eval()
    assert torch.equal(bio(input_ids=ids, attention_mask=mask)[0], expected)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "make", [tiny_bert, tiny_gpt2],
    ids=["bert", "gpt2"],
)
def test_neutral_transform_keeps_outputs_bit_identical_on_cuda(make):
    model = make().cuda().eval()
    ids = torch.randint(0, 100, (2, 9), device="cuda")
    expected = model(input_ids=ids)[0]
    bio = biofx.transform(model, **NEUTRAL, capture="parts").eval()
    assert torch.equal(bio(input_ids=ids)[0], expected)


@pytest.mark.parametrize("make", [lambda: tiny_bert(), lambda: tiny_gpt2(tie=False)], ids=["bert", "gpt2"])
def test_gradients_carry_fuzzy_multipliers(make):
    """Automatic fuzzy rates: every bio weight's gradient is the plain gradient times f."""
    model = make().eval()
    ids = torch.randint(0, 100, (2, 9))
    model(input_ids=ids)[0].square().mean().backward()
    plain = {id(p): p.grad for p in model.parameters()}
    model.zero_grad(set_to_none=True)
    bio = biofx.transform(model, seed=0, acts_on="gradient", capture="parts").eval()  # shares the parameters
    bio(input_ids=ids)[0].square().mean().backward()
    for layer in bio.bio_layers():
        expected = plain[id(layer.weight)]
        if expected is None:  # BertModel's pooler does not feed last_hidden_state
            assert layer.weight.grad is None
            continue
        torch.testing.assert_close(layer.weight.grad, expected * layer.fuzzy_lr)
        assert not torch.equal(layer.fuzzy_lr, torch.ones_like(layer.fuzzy_lr))


def test_dale_on_hf_conv1d_constrains_input_rows():
    """Conv1D stores [in, out]: all outgoing weights of input unit j (row j) share one sign."""
    bio = biofx.transform(tiny_gpt2(), apply_dales_principle=True, capture="parts")
    bio.enforce_dales_principle()
    for layer in bio.bio_layers():
        w = layer.weight.detach()
        rows = w if layer.kind.name == "HFConv1D" else w.T
        assert ((rows >= 0).all(1) | (rows <= 0).all(1)).all(), layer.layer_name


def test_weight_splitting_error_names_the_full_path():
    with pytest.raises(ValueError, match=r"\(37\) of layer .encoder\.layer\.0\.intermediate\.dense."):
        biofx.transform(tiny_bert(intermediate=37), weight_splitting_Gamma=2, capture="parts")


FULL = dict(automatic=("fuzzy", "volume", "crystallize", "scaling"), apply_dales_principle=True,
            weight_splitting_Gamma=2, synaptic_scaling_gamma=0.01, seed=0)


@pytest.mark.parametrize("optimizer, acts_on", [("adam", "update"), ("sgd", "gradient")])
def test_counter_storage_trains_gpt2_as_the_buffer_does(optimizer, acts_on):
    """fuzzy_lr_storage="counter" on a real transformer (GPT-2, its lm_head tied to the
    embedding): given the buffer's f set to the counter's f₀, the same weights and multipliers
    after 4 steps with dropout in train mode; eval-mode outputs equal too."""
    config = dict(automatic=("fuzzy", "volume", "crystallize"), acts_on=acts_on, crystal_thresh=1e-2, seed=0)
    torch.manual_seed(0)
    base = tiny_gpt2()
    counter = biofx.transform(copy.deepcopy(base), fuzzy_lr_storage="counter", capture="parts", **config)
    stored = biofx.transform(copy.deepcopy(base), capture="parts", **config)
    for c, b in zip(counter.bio_layers(), stored.bio_layers()):
        b.fuzzy_lr.copy_(c.fuzzy_multipliers())
    ids = torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(1))
    for bio in (counter, stored):
        bio.train()
        make = {"adam": lambda p: torch.optim.Adam(p, lr=3e-3), "sgd": lambda p: torch.optim.SGD(p, lr=0.1)}
        opt = make[optimizer](bio.parameters())
        for step in range(4):
            opt.zero_grad()
            torch.manual_seed(step)  # the same dropout masks in both
            bio(input_ids=ids, labels=ids).loss.backward()
            opt.step()
    assert sum(int((layer.fuzzy_dampenings > 0).sum()) for layer in counter.bio_layers()) > 0
    for c, b in zip(counter.bio_layers(), stored.bio_layers()):
        torch.testing.assert_close(c.weight, b.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c.fuzzy_multipliers(), b.fuzzy_lr, rtol=1e-5, atol=1e-7)
    counter.eval(), stored.eval()
    torch.testing.assert_close(counter(input_ids=ids).logits, stored(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert counter.bio_state_bytes() < stored.bio_state_bytes() / 3


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (4, 12))
    if name == "bert":
        bio = biofx.transform(tiny_bert(intermediate=64, classes=3), **FULL, capture="parts")
        labels = torch.tensor([0, 1, 2, 1])

        def loss():
            return bio(input_ids=ids, labels=labels).loss
    else:
        bio = biofx.transform(tiny_gpt2(), **FULL, capture="parts")

        def loss():
            return bio(input_ids=ids, labels=ids).loss

    bio.train()
    optimizer = torch.optim.Adam(bio.parameters(), lr=3e-3)
    before = [layer.fuzzy_lr.clone() for layer in bio.bio_layers()]
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < losses[0] and all(map(torch.isfinite, map(torch.tensor, losses)))
    assert all(int(layer.step) == 6 for layer in bio.bio_layers())
    assert any(not torch.equal(b, layer.fuzzy_lr) for b, layer in zip(before, bio.bio_layers()))  # crystallized
    assert all(float(layer.activity_mean.abs().sum()) > 0 for layer in bio.bio_layers())


def test_hf_model_deepcopy_and_pickle_keep_working(tmp_path):
    model = tiny_gpt2()
    bio = biofx.transform(model, seed=0, capture="parts").eval()
    ids = torch.randint(0, 100, (2, 5))
    clone = copy.deepcopy(bio)
    path = tmp_path / "gpt2.pt"
    torch.save(bio, path)
    loaded = torch.load(path, weights_only=False)
    for other in (clone, loaded):
        assert type(other) is type(bio) and len(other.bio_layers()) == 9
        assert torch.equal(other(input_ids=ids).logits, bio(input_ids=ids).logits)
        assert other.lm_head.weight is other.transformer.wte.weight  # tied weights stay tied


# -- the model matrix ----------------------------------------------------------------------
# Each entry: a small real model (random weights, no download), its inputs, and the layers the
# report must leave plain (name suffix -> reason fragment); every other Linear/Conv is converted.
V = 64


def _ids(batch=2, length=7, seed=0):
    return torch.randint(1, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def _randn(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _hf(cls, config_cls, inputs, **config):
    def make():
        cfg = config_cls(**config)
        cfg._attn_implementation = "eager"
        return cls(cfg), inputs()

    return make


_H = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=V)
_DROP = dict(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
_SEQ2SEQ = dict(vocab_size=V, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, dropout=0.1, attention_dropout=0.1)
_DECODER = dict(_H, num_key_value_heads=1, attention_dropout=0.1, max_position_embeddings=32)


def _text():
    return dict(input_ids=_ids())


def _image(size=8):
    return lambda: dict(pixel_values=_randn(2, 3, size, size))


class TransformerInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.transformer = nn.Transformer(8, 2, 1, 1, 16, dropout=0.1, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, src, tgt):
        return self.head(self.transformer(self.embed(src), self.embed(tgt)))


class AttentionModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x)[0])


class LSTMModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, num_layers=2, dropout=0.1, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.lstm(x)[0])


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, 8)
        self.hidden = nn.Linear(8, 8)
        self.head = nn.Linear(8, V, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(F.dropout(torch.tanh(self.hidden(self.embed(ids))), 0.1, self.training))


class FunctionalLinear(nn.Module):
    """A weight used through F.linear (no Linear module): nothing to convert but the Linear head."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 4))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(F.linear(x, self.weight)))


_OUT_PROJ = ("out_proj", "reads out_proj.weight directly")
MATRIX = {
    "bert": _hf(transformers.BertModel, transformers.BertConfig, _text, **_H, **_DROP, max_position_embeddings=32),
    "distilbert": _hf(transformers.DistilBertModel, transformers.DistilBertConfig, _text, vocab_size=V, dim=16,
                      n_layers=2, n_heads=2, hidden_dim=32, dropout=0.1, attention_dropout=0.1,
                      max_position_embeddings=32),
    "roberta": _hf(transformers.RobertaModel, transformers.RobertaConfig, _text, **_H, **_DROP,
                   max_position_embeddings=40, pad_token_id=0),
    "gpt2": _hf(transformers.GPT2LMHeadModel, transformers.GPT2Config, _text, n_embd=16, n_layer=2, n_head=2,
                vocab_size=V, n_positions=32, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, bos_token_id=0,
                eos_token_id=0),
    "t5": _hf(transformers.T5Model, transformers.T5Config, lambda: dict(input_ids=_ids(), decoder_input_ids=_ids(2, 5)),
              vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, dropout_rate=0.1,
              decoder_start_token_id=0),
    "bart": _hf(transformers.BartModel, transformers.BartConfig, _text, **_SEQ2SEQ, max_position_embeddings=32),
    "vit": _hf(transformers.ViTModel, transformers.ViTConfig, _image(), **_H, **_DROP, image_size=8, patch_size=4),
    "llama": _hf(transformers.LlamaModel, transformers.LlamaConfig, _text, **_DECODER),
    "mistral": _hf(transformers.MistralModel, transformers.MistralConfig, _text, **_DECODER),
    "qwen2": _hf(transformers.Qwen2Model, transformers.Qwen2Config, _text, **_DECODER),
    "whisper": _hf(transformers.WhisperModel, transformers.WhisperConfig,
                   lambda: dict(input_features=_randn(2, 8, 16), decoder_input_ids=_ids(2, 5)), **_SEQ2SEQ,
                   num_mel_bins=8, max_source_positions=8, max_target_positions=16, pad_token_id=0,
                   decoder_start_token_id=1),
    "clip": _hf(transformers.CLIPModel, transformers.CLIPConfig,
                lambda: dict(input_ids=_ids(), pixel_values=_randn(2, 3, 8, 8)), projection_dim=8,
                text_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                 vocab_size=V, max_position_embeddings=16, attention_dropout=0.1,
                                 bos_token_id=0, eos_token_id=1),
                vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                   image_size=8, patch_size=4, attention_dropout=0.1)),
    "resnet": _hf(transformers.ResNetModel, transformers.ResNetConfig, _image(16), embedding_size=8,
                  hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
    "convnext": _hf(transformers.ConvNextModel, transformers.ConvNextConfig, _image(16), num_stages=2,
                    hidden_sizes=[8, 16], depths=[1, 1], drop_path_rate=0.1),
    "wav2vec2": _hf(transformers.Wav2Vec2Model, transformers.Wav2Vec2Config, lambda: dict(input_values=_randn(2, 200)),
                    **_H, **_DROP, conv_dim=(8, 8), conv_stride=(4, 2), conv_kernel=(8, 4), num_conv_pos_embeddings=4,
                    num_conv_pos_embedding_groups=2, feat_proj_dropout=0.1, mask_time_prob=0.0),
    "mobilenetv2": _hf(transformers.MobileNetV2Model, transformers.MobileNetV2Config, _image(32), image_size=32,
                       depth_multiplier=0.25),
    "nn.Transformer": lambda: (TransformerInside(), dict(src=_randn(2, 5, 4), tgt=_randn(2, 3, 4))),
    "nn.MultiheadAttention": lambda: (AttentionModel(), dict(x=_randn(2, 5, 8))),
    "nn.LSTM": lambda: (LSTMModel(), dict(x=_randn(2, 5, 4))),
    "tied": lambda: (TiedLM(), dict(ids=_ids())),
    "F.linear": lambda: (FunctionalLinear(), dict(x=_randn(3, 4))),
}
#: layers each model leaves plain: (name suffix, reason fragment)
PLAIN = {
    "wav2vec2": [("pos_conv_embed.conv", "parametrization")],
    "nn.Transformer": [_OUT_PROJ] * 3,
    "nn.MultiheadAttention": [_OUT_PROJ],
}


def _first(output):
    if isinstance(output, torch.Tensor):
        return output
    return _first(output.to_tuple() if hasattr(output, "to_tuple") else output[0])


def _shared(model):
    """Parameters registered under more than one name (tied weights)."""
    names = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {key for key, group in names.items() if len(group) > 1}


@pytest.mark.parametrize("name", list(MATRIX))
def test_model_matrix(name):
    torch.manual_seed(0)
    model, inputs = MATRIX[name]()
    layers = [n for n, m in model.named_modules() if biofx.layers.kind_of(m) is not None]
    bio = biofx.transform(model, automatic=(), seed=0)
    report = bio.bio_report
    # coverage: every layer converted or reported plain with the expected reason
    plain = PLAIN.get(name, [])
    assert len(report.converted) == len(layers) - len(plain) and len(report.plain) == len(plain)
    for (layer, why), (suffix, fragment) in zip(sorted(report.plain), sorted(plain)):
        assert layer.endswith(suffix) and fragment in why, (layer, why)
    assert sorted(layer.name for layer in report.converted) == sorted(set(layers) - {n for n, _ in report.plain})
    # neutral: bit-identical to the original in train mode (same RNG seed) and in eval mode
    for training in (True, False):
        outputs = []
        for m in (model, bio):
            m.train(training)
            torch.manual_seed(1)
            outputs.append(_first(m(**inputs)))
        assert torch.equal(*outputs), f"{name} {'train' if training else 'eval'}"
    # no converted layer bypassed: with every fuzzy multiplier 0 no converted weight gets a gradient
    # (on a copy: a second transform of the same model would take its weights over from `bio`)
    probe = biofx.transform(copy.deepcopy(model), automatic=("fuzzy",), acts_on="gradient", seed=0).train()
    for layer in probe.bio_layers():
        layer.fuzzy_lr.zero_()
    _first(probe(**inputs)).float().square().mean().backward()
    shared = _shared(probe)
    for layer in probe.bio_layers():
        grad = layer.weight.grad
        assert id(layer.weight) in shared or grad is None or not grad.any(), f"{layer.layer_name} bypassed"
    # one train step: finite loss, converted weights change
    for layer in probe.bio_layers():
        layer.fuzzy_lr.fill_(1.0)
    probe.zero_grad(set_to_none=True)
    before = [layer.weight.detach().clone() for layer in probe.bio_layers()]
    loss = _first(probe(**inputs)).float().square().mean()
    loss.backward()
    torch.optim.SGD(probe.parameters(), lr=0.1).step()
    assert torch.isfinite(loss) and any(not torch.equal(b, l.weight) for b, l in zip(before, probe.bio_layers()))
    # checkpoints: same keys as the original (plus bio state), strict loads both ways
    plain_state = bio.plain_state_dict()
    assert set(plain_state) == set(model.state_dict())
    assert all(key.split(".")[0] == "biofx_state" or ".biofx_state." in key
               for key in set(bio.state_dict()) - set(plain_state))
    model.load_state_dict(plain_state, strict=True)
    bio.load_state_dict(model.state_dict(), strict=True)
