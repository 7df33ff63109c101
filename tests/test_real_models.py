"""Real models: untraceable ones, Hugging Face transformers and the tools of their ecosystem.

``torch.fx`` cannot trace the toy models below (data-dependent control flow) nor Hugging Face
models (their ``*args/**kwargs`` decorators); without ``example_inputs`` the transform plans
from the module tree (``bio_report.capture`` says so) and converts every Linear/Conv in place.
The bio model keeps running the model's own Python, so the ecosystem works on it: ``generate``,
``gradient_checkpointing_enable``, ``resize_token_embeddings``, ``save_pretrained`` /
``from_pretrained``, the ``Trainer`` and PEFT's LoRA (issue 22). Each check compares the bio
model with the plain model (a copy transformed, or the same run without biofx).
"""

import copy
import json
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import biofx
from biofx import BioConfig, ConfigMap

NEUTRAL = dict(fuzzy_lr_distribution="baseline", seed=0)


class Body(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.fc1 = nn.Linear(6, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class Gate(nn.Module):
    """Not traceable (data-dependent branch)."""

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


LAYERS = ["body.fc1", "body.fc2", "gate.a", "gate.b", "head"]


def pair(model, **config):
    """``(plain, bio)``: the model and a transformed copy with the same weights."""
    return model, biofx.transform(copy.deepcopy(model), **{**NEUTRAL, **config})


def test_untraceable_model_is_planned_from_the_module_tree_and_keeps_it():
    model, bio = pair(Branchy())
    report = bio.bio_report
    assert report.capture.startswith("module tree") and "isfinite(x).all()" in report.capture
    assert [layer.name for layer in report.converted] == LAYERS and report.plain == ()
    assert [layer.layer_name for layer in bio.bio_layers()] == LAYERS
    assert type(bio).__name__ == "Branchy" and isinstance(bio, Branchy) and isinstance(bio, biofx.BioMethods)
    assert type(bio.gate) is Gate and type(bio.norm) is nn.LayerNorm
    assert type(bio.gate.a).__name__ == "BioLinear" and isinstance(bio.gate.a, nn.Linear)
    x = torch.randn(5, 6)
    assert torch.equal(bio(x), model(x))  # neutral: bit-identical


def test_untraceable_model_gradients_carry_the_fuzzy_multipliers():
    model, bio = pair(Branchy(), fuzzy_lr_distribution="uniform", acts_on="gradient")
    x = torch.randn(5, 6)
    model(x).square().sum().backward()
    bio(x).square().sum().backward()
    for layer in bio.bio_layers():
        plain = model.get_submodule(layer.layer_name).weight.grad
        torch.testing.assert_close(layer.weight.grad, plain * layer.fuzzy_lr)
        assert not torch.equal(layer.fuzzy_lr, torch.ones_like(layer.fuzzy_lr))


def test_module_tree_plan_matches_a_whole_model_trace():
    """Same seed, same layer order: the same bio state and the same gradients."""
    x = torch.randn(5, 6)
    cfg = dict(seed=3, apply_dales_principle=True, automatic=("fuzzy", "volume"), acts_on="gradient",
               fuzzy_lr_distribution="layer_adaptive")
    traced = biofx.transform(Traceable(), **cfg)
    tree = biofx.transform(Chain(), **cfg)
    assert traced.bio_report.capture == "fx" and tree.bio_report.capture.startswith("module tree")
    # the stored parameters, DANN's interneurons included
    tree.load_state_dict({k: v for k, v in traced.state_dict().items() if "biofx_state." not in k})
    for a, b in zip(traced.bio_layers(), tree.bio_layers(), strict=True):
        assert a.layer_name == b.layer_name and a.index == b.index
        for name in ("fuzzy_lr", "rng_key", "dale_sign"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (a.layer_name, name)
    assert torch.equal(traced(x), tree(x))
    traced(x).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in traced.named_parameters()}
    tree(x).square().sum().backward()
    for name, p in tree.named_parameters():
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


def test_weight_splitting_skips_the_models_last_layer():
    bio = biofx.transform(Branchy(), weight_splitting_Gamma=2)
    split = {layer.name: any("weight_split" in m for m in layer.mechanisms) for layer in bio.bio_report.converted}
    assert split == {"body.fc1": True, "body.fc2": True, "gate.a": True, "gate.b": True, "head": False}
    x = torch.randn(3, 8)
    gate_a, head = bio.gate.a(x), bio.head(x)
    assert torch.equal(gate_a[:, 0::2], gate_a[:, 1::2])  # each member of a group gets the group's sum
    assert not torch.equal(head[:, 0::2], head[:, 1::2])
    message = r"(?s)'body\.fc1' \(Linear, 8 outputs, Γ=3\).*mark_skip_weight_splitting\(model\.body\.fc1\)"
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


def test_layers_inside_leaf_modules_stay_plain_with_the_reason():
    model, bio = pair(Branchy(), leaf_modules=[Gate])
    plain = dict(bio.bio_report.plain)
    assert plain.keys() == {"gate.a", "gate.b"} and plain["gate.a"].startswith("inside leaf module 'gate' (Gate)")
    assert [layer.name for layer in bio.bio_report.converted] == ["body.fc1", "body.fc2", "head"]
    assert type(bio.gate.a) is nn.Linear
    x = torch.randn(5, 6)
    assert torch.equal(bio(x), model(x))

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

    with pytest.warns(UserWarning, match=r"converted 0 layers of Root: inner\.fc: inside leaf module 'inner'"):
        biofx.transform(Root(), leaf_modules=[Inner])


def test_shared_module_is_converted_once_and_stays_shared():
    model = Branchy()
    model.alias = model.head  # the same layer registered twice
    bio = biofx.transform(model)
    assert bio.alias is bio.head and isinstance(bio.head, biofx.BioLayer)
    assert len(bio.bio_layers()) == 5


def test_untraceable_model_trains_with_explicit_methods():
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
# Without example_inputs these are planned from the module tree; tests/test_capture.py tests
# their whole-graph capture with torch.export.
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
        pad_token_id=0, tie_word_embeddings=tie,
    )
    return transformers.GPT2LMHeadModel(config)


def tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config)


#: the tiny models of the ecosystem tests: how to make one, the Linear/Conv1D count
HF = {"bert": lambda: tiny_bert(intermediate=64, classes=2), "gpt2": tiny_gpt2, "llama": tiny_llama}
HF_LAYERS = {"bert": 14, "gpt2": 9, "llama": 15}


def ids(batch=2, length=7, vocab=100, seed=0):
    return torch.randint(2, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def batch(name, **kwargs):
    """A training batch for ``HF[name]``: token ids and labels (the classes for BERT)."""
    x = ids(**kwargs)
    return dict(input_ids=x, labels=torch.arange(len(x)) % 2 if name == "bert" else x)


def bio_weights(bio):
    return {id(layer.weight) for layer in bio.bio_layers()}


def test_bert_converts_every_linear_from_the_module_tree():
    model = tiny_bert()
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    bio = biofx.transform(model)
    assert len(linears) == 13 and bio.bio_report.capture.startswith("module tree")
    assert [layer.name for layer in bio.bio_report.converted] == linears and bio.bio_report.plain == ()
    assert bio_weights(bio) == {id(bio.get_submodule(n).weight) for n in linears}
    assert type(bio.encoder.layer[0].attention.self.query).__name__ == "BioLinear"
    assert type(bio.encoder.layer[0]) is transformers.models.bert.modeling_bert.BertLayer


def test_gpt2_converts_every_conv1d_and_linear():
    model = tiny_gpt2()
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))]
    bio = biofx.transform(model)
    assert len(layers) == 9
    assert sorted(layer.name for layer in bio.bio_report.converted) == sorted(layers)
    kinds = {layer.name: layer.kind for layer in bio.bio_report.converted}
    assert kinds["transformer.h.0.attn.c_attn"] == "HFConv1D" and kinds["lm_head"] == "Linear"
    c_attn = bio.transformer.h[0].attn.c_attn
    assert type(c_attn).__name__ == "BioConv1D" and isinstance(c_attn, Conv1D) and c_attn.nf == 96
    assert bio_weights(bio) == {id(bio.get_submodule(n).weight) for n in layers}
    assert bio.lm_head.weight is bio.transformer.wte.weight  # tied


@pytest.mark.parametrize("make", [tiny_bert, tiny_gpt2, tiny_llama], ids=["bert", "gpt2", "llama"])
def test_neutral_transform_keeps_outputs_bit_identical(make):
    model, bio = pair(make().eval())
    x = ids(length=9)
    mask = torch.ones_like(x)
    mask[1, -3:] = 0
    assert torch.equal(bio(input_ids=x, attention_mask=mask)[0], model(input_ids=x, attention_mask=mask)[0])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("make", [tiny_bert, tiny_gpt2, tiny_llama], ids=["bert", "gpt2", "llama"])
def test_neutral_transform_keeps_outputs_bit_identical_on_cuda(make):
    model, bio = pair(make().cuda().eval())
    x = ids(length=9).cuda()
    assert torch.equal(bio(input_ids=x)[0], model(input_ids=x)[0])


@pytest.mark.parametrize("make", [lambda: tiny_bert(), lambda: tiny_gpt2(tie=False)], ids=["bert", "gpt2"])
def test_gradients_carry_fuzzy_multipliers(make):
    """Automatic fuzzy rates on the gradient: every bio weight's gradient is the plain one times f."""
    model, bio = pair(make().eval(), fuzzy_lr_distribution="uniform", acts_on="gradient")
    x = ids(length=9)
    model(input_ids=x)[0].square().mean().backward()
    bio(input_ids=x)[0].square().mean().backward()
    for layer in bio.bio_layers():
        expected = model.get_submodule(layer.layer_name).weight.grad
        if expected is None:  # BertModel's pooler does not feed last_hidden_state
            assert layer.weight.grad is None
            continue
        torch.testing.assert_close(layer.weight.grad, expected * layer.fuzzy_lr)
        assert not torch.equal(layer.fuzzy_lr, torch.ones_like(layer.fuzzy_lr))


def test_dale_on_hf_conv1d_constrains_input_rows():
    """Conv1D stores [in, out]: all outgoing weights of input unit j (row j) share one sign."""
    bio = biofx.transform(tiny_gpt2(), apply_dales_principle=True, dale_mode="column")
    bio.enforce_dales_principle()
    for layer in bio.bio_layers():
        w = layer.weight.detach()
        rows = w if layer.kind.name == "HFConv1D" else w.T
        assert ((rows >= 0).all(1) | (rows <= 0).all(1)).all(), layer.layer_name


def test_weight_splitting_error_names_the_full_path():
    message = r"(?s)'encoder\.layer\.0\.intermediate\.dense' \(Linear, 37 outputs, Γ=2\).*" \
              r"mark_skip_weight_splitting\(model\.encoder\.layer\[0\]\.intermediate\.dense\)"
    with pytest.raises(ValueError, match=message):
        biofx.transform(tiny_bert(intermediate=37), weight_splitting_Gamma=2)


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
    counter = biofx.transform(copy.deepcopy(base), fuzzy_lr_storage="counter", **config)
    stored = biofx.transform(copy.deepcopy(base), **config)
    for c, b in zip(counter.bio_layers(), stored.bio_layers()):
        b.fuzzy_lr.copy_(c.fuzzy_multipliers())
    x = ids(4, 12, seed=1)
    for bio in (counter, stored):
        bio.train()
        make = {"adam": lambda p: torch.optim.Adam(p, lr=3e-3), "sgd": lambda p: torch.optim.SGD(p, lr=0.1)}
        opt = make[optimizer](bio.parameters())
        for step in range(4):
            opt.zero_grad()
            torch.manual_seed(step)  # the same dropout masks in both
            bio(input_ids=x, labels=x).loss.backward()
            opt.step()
    assert sum(int((layer.fuzzy_dampenings > 0).sum()) for layer in counter.bio_layers()) > 0
    for c, b in zip(counter.bio_layers(), stored.bio_layers()):
        torch.testing.assert_close(c.weight, b.weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c.fuzzy_multipliers(), b.fuzzy_lr, rtol=1e-5, atol=1e-7)
    counter.eval(), stored.eval()
    torch.testing.assert_close(counter(input_ids=x).logits, stored(input_ids=x).logits, rtol=1e-5, atol=1e-5)
    assert counter.bio_state_bytes() < stored.bio_state_bytes() / 3


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_training_steps_lower_the_loss(name):
    torch.manual_seed(0)
    bio = biofx.transform(HF[name](), **FULL).train()
    data = batch(name, batch=4, length=12)
    if name == "bert":
        data["labels"] = torch.tensor([0, 1, 0, 1])
    optimizer = torch.optim.Adam(bio.parameters(), lr=3e-3)
    before = [layer.fuzzy_lr.clone() for layer in bio.bio_layers()]
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = bio(**data).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and all(map(torch.isfinite, map(torch.tensor, losses)))
    assert all(int(layer.step) == 6 for layer in bio.bio_layers())
    assert any(not torch.equal(b, layer.fuzzy_lr) for b, layer in zip(before, bio.bio_layers()))  # crystallized
    assert all(float(layer.activity_mean.abs().sum()) > 0 for layer in bio.bio_layers())


def test_hf_model_deepcopy_and_pickle_keep_working(tmp_path):
    bio = biofx.transform(tiny_gpt2(), seed=0).eval()
    x = ids(length=5)
    clone = copy.deepcopy(bio)
    torch.save(bio, tmp_path / "gpt2.pt")
    loaded = torch.load(tmp_path / "gpt2.pt", weights_only=False)
    for other in (clone, loaded):
        assert type(other) is type(bio) and len(other.bio_layers()) == 9
        assert type(other.lm_head) is type(bio.lm_head) and other.lm_head.bio_state.layer is other.lm_head
        assert torch.equal(other(input_ids=x).logits, bio(input_ids=x).logits)
        assert other.lm_head.weight is other.transformer.wte.weight  # tied weights stay tied


# -- the Hugging Face ecosystem on a bio model (issue 22) ----------------------------------


def sgd_step(model, data, lr=0.1):
    """One SGD step on ``model`` (dropout masks from seed 1); returns the gradients by name, as
    backward left them (a bio step on ``torch.optim.SGD`` scales ``.grad`` by f in place)."""
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    torch.manual_seed(1)
    model(**data).loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters(remove_duplicate=False) if p.grad is not None}
    optimizer.step()
    return grads


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_generate_equals_the_plain_models_greedy_output(name):
    """The default config acts at the optimizer step, so the forward, KV cache included, is the
    model's own: greedy generation gives the same tokens."""
    model, bio = pair(HF[name]().eval(), fuzzy_lr_distribution="uniform")
    prompt = ids(length=4)
    expected = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert expected.shape == (2, 10)
    assert torch.equal(bio.generate(prompt, max_new_tokens=6, do_sample=False), expected)


#: a bio layer inside a checkpointed block, by model
CHECKPOINTED = {
    "bert": "bert.encoder.layer.0.attention.self.query",
    "gpt2": "transformer.h.0.attn.c_attn",
    "llama": "model.layers.0.self_attn.q_proj",
}


@pytest.mark.filterwarnings("ignore:`(is_)?gradient_checkpointing(_enable)?` is deprecated:FutureWarning")  # HF 5.x
@pytest.mark.parametrize("name", list(HF))
def test_gradient_checkpointing_recomputes_bio_layers_with_the_same_gradients(name):
    """HF's gradient checkpointing reruns each block's forward in backward: a bio layer inside
    one runs twice per step, its activity statistics count once, and the gradients and the
    bio update equal those of the run without checkpointing."""
    torch.manual_seed(0)
    model = HF[name]()
    data = batch(name)
    runs = []
    for checkpointing in (False, True):
        bio = biofx.transform(copy.deepcopy(model), seed=0, synaptic_scaling_gamma=0.01).train()
        if checkpointing:
            bio.gradient_checkpointing_enable()
        calls = []
        bio.get_submodule(CHECKPOINTED[name]).register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
        before = {n: p.detach().clone() for n, p in bio.named_parameters()}
        grads = sgd_step(bio, data)
        activity = [int(layer.activity_n) for layer in bio.bio_layers()]
        runs.append((bio, calls, before, grads, activity))
    (plain_run, calls, _, plain_grads, activity), (checkpointed, recomputed, before, grads, recounted) = runs
    assert checkpointed.is_gradient_checkpointing and not plain_run.is_gradient_checkpointing
    assert len(calls) == 1 and len(recomputed) == 2  # the forward, then its recomputation in backward
    assert recounted == activity  # activity counted once: the recomputation is not counted again
    path = CHECKPOINTED[name]
    assert int(checkpointed.get_submodule(path).bio_state.activity_n) == data["input_ids"].numel()
    assert grads.keys() == plain_grads.keys()
    for key, grad in grads.items():  # plain HF GPT-2 too differs in the last bits with checkpointing
        torch.testing.assert_close(grad, plain_grads[key], msg=key)
    for (key, p), q in zip(checkpointed.named_parameters(), plain_run.parameters()):
        torch.testing.assert_close(p, q, msg=key)
    layer = checkpointed.get_submodule(path)
    update = layer.weight.detach() - before[f"{path}.weight"]
    torch.testing.assert_close(update, -0.1 * grads[f"{path}.weight"] * layer.bio_state.fuzzy_lr)  # Δw = −lr·g·f
    assert all(layer.steps.value == 1 for layer in checkpointed.bio_layers())


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_resize_token_embeddings_keeps_the_head_bio(name):
    """GPT-2's head is tied: its bio layer stays and its state follows the resized weight (old
    rows keep their f). Llama's head is untied: HF puts a new plain Linear in its place, which
    the wrapped ``resize_token_embeddings`` converts again with the head's plan. Either way the
    next step applies f to the head's update."""
    torch.manual_seed(0)
    bio = biofx.transform(HF[name](), seed=0, fuzzy_learning_rate_factor_nu=0.5)
    head, index, f_before = bio.lm_head, bio.lm_head.bio_plan.index, bio.lm_head.bio_state.fuzzy_lr.clone()
    embeddings = bio.resize_token_embeddings(120)
    assert embeddings is bio.get_input_embeddings() and embeddings.weight.shape == (120, 32)
    assert isinstance(bio.lm_head, biofx.BioLayer) and bio.lm_head.weight.shape == (120, 32)
    assert bio.bio_report.plain == () and len(bio.bio_report.converted) == HF_LAYERS[name]
    tied = name == "gpt2"
    assert (bio.lm_head is head) == tied and (bio.lm_head.weight is embeddings.weight) == tied
    assert bio.lm_head.bio_plan.index == index
    bio.train()
    data = batch(name, vocab=120)
    weight = bio.lm_head.weight
    before = weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer trains plain: nothing to say at the step
        grad = sgd_step(bio, data)["lm_head.weight"]
    state = bio.lm_head.bio_state
    f = state.fuzzy_lr
    assert f.shape == (120, 32) and int(state.step) == 1
    if tied:
        assert torch.equal(f[:100], f_before)  # the state followed the weight
    assert ((f - 1).abs() <= 0.5 + 1e-6).all() and (f[100:] != 1).all()  # the new rows drawn too
    torch.testing.assert_close(weight.detach() - before, -0.1 * grad * f)  # Δw = −lr·g·f
    assert not torch.allclose(weight.detach() - before, -0.1 * grad)


#: the Auto class that loads each model back, and its output layer
AUTO = {"bert": "AutoModelForSequenceClassification", "gpt2": "AutoModelForCausalLM", "llama": "AutoModelForCausalLM"}
HEADS = {"bert": "classifier", "gpt2": "lm_head", "llama": "lm_head"}
SAVED = dict(seed=0, automatic=("fuzzy", "crystallize"), crystal_thresh=0.05, apply_dales_principle=True)


@pytest.mark.parametrize("name", list(HF))
def test_save_pretrained_writes_the_bio_state_and_transform_plus_load_restores_it(name, tmp_path):
    """``save_pretrained`` writes ``state_dict()``, bio state included, in model.safetensors under
    the model's own class; ``from_pretrained`` gives the plain model (the bio keys are reported
    unexpected and ignored); ``biofx.transform`` with the same config, then ``load_state_dict``
    of the file, restores the bio model: weights (Dale's init redone by the transform is
    overwritten), multipliers, counters, and training goes on as it would have. ``strict=False``:
    HF writes a tied weight once (GPT-2's ``lm_head.weight``), as for the plain model."""
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    bio = biofx.transform(HF[name](), **SAVED).train()
    data = batch(name)
    for _ in range(2):
        sgd_step(bio, data)
        bio.zero_grad()
    assert any((layer.fuzzy_lr < layer.fuzzy_lr.max()).any() for layer in bio.bio_layers())  # crystallized
    bio.save_pretrained(tmp_path)
    saved = safetensors.load_file(tmp_path / "model.safetensors")
    tied = ["lm_head.weight"] if name == "gpt2" else []
    assert set(saved) == set(bio.state_dict()) - set(tied)
    head = HEADS[name]
    assert {f"{head}.biofx_state.fuzzy_lr", f"{head}.biofx_state.step", f"{head}.dale_w_ei"} <= set(saved)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [type(bio).__name__]

    loaded = getattr(transformers, AUTO[name]).from_pretrained(tmp_path)
    assert type(loaded).__name__ == type(bio).__name__ and not isinstance(loaded, biofx.BioMethods)
    restored = biofx.transform(loaded, **SAVED).train()
    result = restored.load_state_dict(saved, strict=False)
    assert result.missing_keys == tied and result.unexpected_keys == []
    assert restored.state_dict().keys() == bio.state_dict().keys()
    for key, value in bio.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    assert [layer.steps.value for layer in restored.bio_layers()] == [2] * HF_LAYERS[name]
    for model in (bio, restored):
        sgd_step(model, data)
    for (key, value), other in zip(bio.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(other, value), key


def test_save_pretrained_of_the_plain_state_dict_loads_as_the_plain_model(tmp_path):
    """To hand a bio model to plain transformers: ``save_pretrained(d, state_dict=bio.plain_state_dict())``
    writes the weights the bio forward uses (Dale's constraint folded in), no bio state."""
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    bio = biofx.transform(tiny_llama(), seed=0, apply_dales_principle=True).eval()
    bio.save_pretrained(tmp_path, state_dict=bio.plain_state_dict())
    saved = safetensors.load_file(tmp_path / "model.safetensors")
    assert not any("biofx_state" in key or ".dale_w_" in key for key in saved)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(plain) is transformers.LlamaForCausalLM
    x = ids()
    assert torch.equal(plain(input_ids=x).logits, bio(input_ids=x).logits)


class WeightsAtStepEnd(transformers.TrainerCallback):
    """Records a layer's weight after every optimizer step of a ``Trainer``."""

    def __init__(self, path):
        self.path, self.weights = path, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights.append(model.get_submodule(self.path).weight.detach().clone())


def train_with_trainer(model, name, output_dir):
    """2 steps of the HF Trainer (its AdamW, linear schedule, gradient clipping) on 4 rows;
    returns the head's weights after each step."""
    rows = ids(4, 8, seed=3).tolist()
    data = [dict(input_ids=row, attention_mask=[1] * len(row), labels=i % 2 if name == "bert" else row)
            for i, row in enumerate(rows)]
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=2, report_to=[], use_cpu=True,
        save_strategy="no", logging_strategy="no", learning_rate=1e-3, seed=0,
    )
    record = WeightsAtStepEnd(HEADS[name])
    transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[record]).train()
    return record.weights


@pytest.mark.parametrize("name", list(HF))
def test_trainer_trains_the_bio_model(name, tmp_path):
    """The Trainer's AdamW (inside accelerate's wrapper) steps through the global optimizer
    hooks: every bio layer counts 2 steps, and the first update is the plain run's times f
    (same seed: same data order and dropout masks)."""
    torch.manual_seed(0)
    model, bio = pair(HF[name](), fuzzy_lr_distribution="uniform")
    start = model.get_submodule(HEADS[name]).weight.detach().clone()
    plain = train_with_trainer(model, name, tmp_path / "plain")
    weights = train_with_trainer(bio, name, tmp_path / "bio")
    assert [layer.steps.value for layer in bio.bio_layers()] == [2] * HF_LAYERS[name]
    f = bio.get_submodule(HEADS[name]).bio_state.fuzzy_lr
    torch.testing.assert_close(weights[0] - start, f * (plain[0] - start), rtol=1e-4, atol=1e-8)
    assert not torch.allclose(weights[1], plain[1])


# -- PEFT (LoRA) ----------------------------------------------------------------------------
#: LoRA's target modules by model (GPT-2's c_attn is a Conv1D, stored [in, out]: fan_in_fan_out)
LORA_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


def lora(model, name, **kwargs):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(target_modules=LORA_TARGETS[name], r=4, fan_in_fan_out=name == "gpt2", **kwargs)
    return peft.get_peft_model(model, config)


def lora_layers(peft_model, name):
    """PEFT's LoRA layers by path."""
    return {
        path: m for path, m in peft_model.named_modules() if any(path.endswith(t) for t in LORA_TARGETS[name])
    }


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")  # GPT-2's head, as plain
@pytest.mark.parametrize("name", list(HF))
def test_lora_on_a_bio_model_keeps_the_base_layers_bio(name, tmp_path):
    """``get_peft_model(bio)``: PEFT wraps the bio layers (``base_layer``) and freezes them; the
    LoRA factors are new plain Linears (listed plain, said once at the step); the frozen base
    layers take no step. A layer PEFT trains as a copy (``modules_to_save``) stays bio and its
    update carries f. The adapter saves and loads onto a bio model with PEFT's own calls."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = HF[name]()
    bio = biofx.transform(copy.deepcopy(model), seed=0)
    tuned = lora(bio, name, modules_to_save=[HEADS[name]])
    assert tuned.base_model.model is bio
    wrapped = lora_layers(tuned, name)
    assert len(wrapped) == 4 if name != "gpt2" else 2
    for module in wrapped.values():
        assert isinstance(module.base_layer, biofx.BioLayer) and not module.base_layer.weight.requires_grad
        assert type(module.lora_A["default"]) is nn.Linear and type(module.lora_B["default"]) is nn.Linear
    plain = dict(bio.bio_report.plain)
    assert len(plain) == 2 * len(wrapped) and all("appeared after biofx.transform" in why for why in plain.values())
    saved = bio.get_submodule(HEADS[name])
    head = saved.modules_to_save["default"]  # PEFT's trainable copy of the bio head
    assert isinstance(head, biofx.BioLayer) and head.bio_state is not saved.original_module.bio_state
    # LoRA is effective: B (zero at first) gets gradients, then the layer's output is not its base layer's
    path, layer = next(iter(wrapped.items()))
    h = torch.randn(3, layer.base_layer.weight.shape[0 if name == "gpt2" else 1])  # Conv1D: [in, out]
    assert torch.equal(layer(h), layer.base_layer(h))
    tuned.train()
    head_before = head.weight.detach().clone()
    frozen = {n: p.detach().clone() for n, p in bio.named_parameters() if not p.requires_grad}
    with pytest.warns(RuntimeWarning, match=r"layers '.*lora_A\.default', .* were put into the model after") as said:
        grads = sgd_step(tuned, batch(name))
    assert len(said) == 1 and "biofx.transform(get_peft_model(model))" in str(said[0].message)  # once, all factors
    assert all(grads[f"{p}.lora_B.default.weight"].abs().sum() > 0 for p in wrapped)
    assert not torch.allclose(layer(h), layer.base_layer(h))
    # the frozen base layers are skipped by biofx; the trainable head copy's update carries f
    assert all(torch.equal(p, frozen[n]) for n, p in bio.named_parameters() if not p.requires_grad)
    assert saved.original_module.bio_state.steps.value == 0 and head.bio_state.steps.value == 1
    grad = grads[f"base_model.model.{HEADS[name]}.modules_to_save.default.weight"]
    torch.testing.assert_close(head.weight.detach() - head_before, -0.1 * grad * head.bio_state.fuzzy_lr)
    # the adapter, saved by PEFT, loads onto another bio model
    tuned.save_pretrained(tmp_path)
    again = peft.PeftModel.from_pretrained(biofx.transform(copy.deepcopy(model), seed=0), tmp_path)
    loaded = again.get_submodule(path)
    assert isinstance(loaded.base_layer, biofx.BioLayer)
    assert torch.equal(loaded.lora_B["default"].weight, layer.lora_B["default"].weight)


def test_transform_of_a_peft_model_converts_the_lora_factors_too(tmp_path):
    """``biofx.transform(get_peft_model(m))``: the LoRA factors are plain Linears then, so they
    are converted with the base layers; the zero-initialized B keeps the model's outputs, and
    f scales the factors' updates. PEFT saves the factors' bio state with the adapter. A
    ConfigMap leaves the factors plain."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = tiny_llama()
    tuned = lora(copy.deepcopy(model), "llama")
    reference = copy.deepcopy(tuned).eval()
    bio = biofx.transform(tuned, fuzzy_lr_distribution="uniform", seed=0)
    converted = [layer.name for layer in bio.bio_report.converted]
    assert len(converted) == HF_LAYERS["llama"] + 8 and bio.bio_report.plain == ()
    q_proj = bio.base_model.model.model.layers[0].self_attn.q_proj
    parts = (q_proj.base_layer, q_proj.lora_A["default"], q_proj.lora_B["default"])
    assert all(isinstance(m, biofx.BioLayer) for m in parts)
    x = ids()
    bio.eval()
    assert torch.equal(bio(input_ids=x).logits, reference(input_ids=x).logits)
    assert torch.equal(bio.generate(x, max_new_tokens=3, do_sample=False),
                       reference.generate(x, max_new_tokens=3, do_sample=False))
    bio.train()
    lora_b = q_proj.lora_B["default"]
    grad = sgd_step(bio, batch("llama"))["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"]
    torch.testing.assert_close(lora_b.weight.detach(), -0.1 * grad * lora_b.bio_state.fuzzy_lr)  # B was 0
    assert q_proj.base_layer.bio_state.steps.value == 0 and lora_b.bio_state.steps.value == 1
    # PEFT's adapter file holds the factors' bio state; PEFT's own load restores it
    bio.save_pretrained(tmp_path)
    again = biofx.transform(lora(copy.deepcopy(model), "llama"), fuzzy_lr_distribution="uniform", seed=0)
    peft.set_peft_model_state_dict(again, peft.load_peft_weights(str(tmp_path)))
    loaded_b = again.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"]
    assert torch.equal(loaded_b.weight, lora_b.weight) and loaded_b.bio_state.steps.value == 1

    factors_plain = biofx.transform(lora(copy.deepcopy(model), "llama"), ConfigMap({"re:.*lora_[AB].*": None}), seed=0)
    plain = dict(factors_plain.bio_report.plain)
    assert len(plain) == 8 and all("left plain by ConfigMap" in why for why in plain.values())
    assert len(factors_plain.bio_report.converted) == HF_LAYERS["llama"]


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


#: matrix entries over ~5 s on 2 CPU cores
SLOW = {"mobilenetv2"}  # 52 convolutions


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MATRIX])
def test_model_matrix(name):
    torch.manual_seed(0)
    model, inputs = MATRIX[name]()
    layers = [n for n, m in model.named_modules() if biofx.layers.kind_of(m) is not None]
    bio = biofx.transform(copy.deepcopy(model), automatic=(), seed=0)
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
