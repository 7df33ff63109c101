"""One Parameter, one bio state: tied layers, tied embeddings, and a second transform.

* Two layers sharing a weight share one state: every mechanism acts on the weight's whole
  gradient once per step (not g·f_a·f_b, not two rejuvenations, not two Dale sign vectors).
* A weight a non-bio module also reads (a language model's tied embedding and head) gets its
  factors on the whole gradient, in gradient mode too.
* Transforming the same model again takes its weights over: the earlier bio model stops
  acting at the step, and its methods say so.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import biofx


class TiedPair(nn.Module):
    """Two Linear layers with one weight (8 → 8 twice), then a head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


class TiedLM(nn.Module):
    """An embedding whose weight is also the output head's (GPT-2, T5, BART)."""

    def __init__(self, vocab=20, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.embed(ids))))


def test_tied_layers_share_one_state():
    bio = biofx.transform(TiedPair(), automatic=(), seed=0)
    states = bio.bio_layers()
    assert len(states) == 2  # a/b (one weight) and head
    assert {layer.name for layer in bio.bio_report.converted} == {"a", "b", "head"}
    assert states[0].weight is bio.a.weight is bio.b.weight


def test_explicit_methods_act_once_on_a_tied_weight():
    model = TiedPair()
    plain = copy.deepcopy(model)
    bio = biofx.transform(copy.deepcopy(model), automatic=(), seed=0)
    x = torch.randn(5, 8)
    plain(x).square().sum().backward()
    bio(x).square().sum().backward()
    bio.fuzzy_learning_rates()
    tied = bio.bio_layers()[0]
    torch.testing.assert_close(bio.a.weight.grad, plain.a.weight.grad * tied.fuzzy_lr)  # g·f, not g·f_a·f_b
    bio.rejuvenate_weights()
    assert int(tied.rejuvenations) == 1


def test_dale_on_a_tied_weight_keeps_one_sign_per_unit():
    bio = biofx.transform(TiedPair(), automatic=(), apply_dales_principle=True, dale_mode="column", seed=0)
    before = bio.a.weight.detach().clone()
    bio.enforce_dales_principle()
    assert torch.equal(bio.a.weight, before)  # initialized with the one sign vector: nothing to zero


@pytest.mark.parametrize("acts_on", ["gradient", "update"])
def test_tied_embedding_and_head_get_the_factor_on_the_whole_gradient(acts_on):
    model = TiedLM()
    plain = copy.deepcopy(model)
    bio = biofx.transform(copy.deepcopy(model), acts_on=acts_on, fuzzy_learning_rate_factor_nu=0.5, seed=0)
    ids = torch.randint(0, 20, (4, 6))
    lr = 0.1
    for net in (plain, bio):
        optimizer = torch.optim.SGD(net.parameters(), lr=lr)
        before = net.head.weight.detach().clone()
        optimizer.zero_grad()
        F.cross_entropy(net(ids).flatten(0, 1), ids.flatten()).backward()
        optimizer.step()
        net.step_taken = net.head.weight.detach() - before
    head = next(layer for layer in bio.bio_layers() if layer.weight is bio.head.weight)
    assert head.shared_with == ("embed.weight",)
    # the embedding's share of the gradient is scaled too: Δw = f·Δw_plain on every entry
    torch.testing.assert_close(bio.step_taken, head.fuzzy_lr * plain.step_taken, rtol=1e-4, atol=1e-6)
    assert (plain.step_taken.abs() > 1e-4).float().mean() > 0.5  # a real step, not rounding noise


def test_a_second_transform_of_shared_weights_takes_them_over():
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    twin = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    twin[0].weight, twin[2].weight = model[0].weight, model[2].weight  # other modules, the same Parameters
    old = biofx.transform(model, rejuvenate_every=1, seed=0)
    new = biofx.transform(twin, rejuvenate_every=1, seed=0)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
    new(torch.randn(3, 6)).sum().backward()
    optimizer.step()
    assert [int(layer.rejuvenations) for layer in new.bio_layers()] == [1, 1]  # once, not twice
    assert all(int(layer.rejuvenations) == 0 for layer in old.bio_layers.__self__.modules()
               if isinstance(layer, biofx.BioSynapses))
    with pytest.raises(RuntimeError, match="newer biofx.transform"):
        old.rejuvenate_weights()
