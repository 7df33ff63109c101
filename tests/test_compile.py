"""torch.compile: zero graph breaks, compiled equals eager (forward, backward, bio state)."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import biofx
from biofx import Distribution

EVERYTHING = dict(
    automatic=("fuzzy", "volume", "crystallize", "scaling"),
    acts_on="gradient",  # the multiplicative mechanisms as graph nodes, inside the compiled region
    weight_splitting_Gamma=2,
    apply_dales_principle=True,
    synaptic_scaling_gamma=0.01,
    seed=0,
)


class Residual(nn.Module):
    """Pre-norm residual block: self-attention (explicit q/k/v/out Linear layers) and an MLP."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.up, self.down = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (proj(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.out(attn)
        return x + self.down(F.gelu(self.up(self.norm2(x))))


def cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))


MODELS = {
    "mlp": (lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), lambda: torch.randn(4, 8)),
    "cnn": (cnn, lambda: torch.randn(2, 3, 8, 8)),
    "residual": (Residual, lambda: torch.randn(2, 5, 16)),
}


def graph_breaks(model, x):
    torch._dynamo.reset()
    return torch._dynamo.explain(model)(x).graph_break_count


@pytest.mark.parametrize("name", list(MODELS))
def test_no_graph_breaks_every_mechanism(name):
    make, make_x = MODELS[name]
    bio = biofx.transform(make(), **EVERYTHING)
    assert graph_breaks(bio, make_x()) == 0


@pytest.mark.parametrize("dist", list(Distribution))
def test_no_graph_breaks_each_distribution(dist):
    bio = biofx.transform(MODELS["mlp"][0](), fuzzy_lr_distribution=dist, fuzzy_lr_dynamic=True, **EVERYTHING)
    assert graph_breaks(bio, torch.randn(4, 8)) == 0


def train(model, steps, x, opt_model=None):
    """A few SGD steps; returns the losses. ``model`` may be compiled; the optimizer sees ``opt_model``."""
    opt = torch.optim.SGD((opt_model or model).parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def assert_same_training(eager, compiled_fn, bio_compiled, x, steps=3):
    losses_e = train(eager, steps, x)
    losses_c = train(compiled_fn, steps, x, opt_model=bio_compiled)
    torch.testing.assert_close(losses_c, losses_e, rtol=1e-4, atol=1e-6)
    for (name, a), (_, b) in zip(eager.named_parameters(), bio_compiled.named_parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    for a, b in zip(eager.bio_layers(), bio_compiled.bio_layers()):
        for (name, s), (_, t) in zip(a.named_buffers(), b.named_buffers()):
            torch.testing.assert_close(t, s, rtol=1e-4, atol=1e-6, msg=f"{a.layer_name}.{name}")


@pytest.mark.parametrize("name", ["cnn", "residual"])
def test_aot_eager_equals_eager(name):
    make, make_x = MODELS[name]
    eager = biofx.transform(make(), **EVERYTHING)
    twin = copy.deepcopy(eager)
    torch._dynamo.reset()
    assert_same_training(eager, torch.compile(twin, backend="aot_eager", fullgraph=True), twin, make_x())


def test_inductor_equals_eager():
    make, make_x = MODELS["mlp"]
    eager = biofx.transform(make(), **EVERYTHING)
    twin = copy.deepcopy(eager)
    torch._dynamo.reset()
    assert_same_training(eager, torch.compile(twin, fullgraph=True), twin, make_x())


def test_compiled_graph_nodes_keep_bio_tags():
    captured = []

    def backend(gm, example_inputs):
        captured.append(gm)
        return gm.forward

    bio = biofx.transform(MODELS["mlp"][0](), **EVERYTHING)
    torch._dynamo.reset()
    torch.compile(bio, backend=backend, fullgraph=True)(torch.randn(4, 8))
    mechanisms = {n.meta.get("custom", {}).get("biofx", {}).get("mechanism") for n in captured[0].graph.nodes}
    assert {"dale", "fuzzy", "volume", "weight_split", "activity", "layer"} <= mechanisms
