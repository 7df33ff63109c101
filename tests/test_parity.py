"""Parity with the authors' training loop, step for step.

The authors' experiments (CeadeS/BioLearn, ``bionet``: ``BioModule.scale_grad``, ``purge``,
``crystallize`` and the loop in ``experiment.train``) run, after ``loss.backward()``:

    g ← g·f  →  purge (rejuvenation)  →  crystallize  →  optimizer.step()

with ``purge``: σ = max|W|/d_re, t = |N(0, σ)|, where t > |w|: w ← (U·max − max/2)·2; and
``crystallize``: where |g|/|w| < thresh or |g| > mean|w|, f ← f·dampening (g already g·f).

``tools/authors_loop.py`` implements those rules and that order independently of biofx;
here it is fed the same random numbers as biofx (``CounterDraws``: ``biofx.rng`` with each
layer's key, the rejuvenation counter and the same streams). Trained side by side
from the same initial weights and batches, biofx's automatic path must give the same
weights at every one of 120 steps: bit for bit when fuzzy acts on the gradient (the authors'
formulation) and to float32 rounding when it acts on the update (biofx's default; for SGD
the same rule).
"""

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import biofx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from authors_loop import AuthorsRule, CounterDraws  # noqa: E402

NU, DRE, LR, STEPS, BATCH = 0.09, 14.0, 0.03, 120, 32


def digits_like(steps: int, batch: int):
    """Fixed batches: 64 features in [0, 1], 10 classes, learnable (a random linear teacher)."""
    g = torch.Generator().manual_seed(11)
    x = torch.rand(steps, batch, 64, generator=g)
    teacher = torch.randn(64, 10, generator=g)
    return x, (x @ teacher).argmax(-1)


def mlp() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 10))


class AuthorsLoop:
    """The authors' loop: zero_grad, backward, their rules (``tools/authors_loop.py``), step."""

    def __init__(self, model: nn.Module, rule: AuthorsRule):
        self.model, self.rule = model, rule
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def step(self, x, y) -> None:
        self.model.zero_grad()
        F.cross_entropy(self.model(x), y).backward()
        self.rule.before_step()
        self.optimizer.step()


@pytest.mark.parametrize("acts_on", ["gradient", "update"])
def test_biofx_follows_the_authors_loop_for_120_steps(acts_on):
    plain = mlp()
    authors_model = copy.deepcopy(plain)
    bio = biofx.transform(
        plain,
        automatic=("fuzzy", "crystallize"),
        acts_on=acts_on,
        rejuvenate_every=1,
        fuzzy_learning_rate_factor_nu=NU,
        rejuvenation_parameter_dre=DRE,
        seed=4,
    )
    layers = bio.bio_layers()
    rule = AuthorsRule(
        authors_model,
        dre=DRE,
        draws=CounterDraws([layer.rng_key for layer in layers]),
        multipliers=[layer.fuzzy_lr for layer in layers],
        crystallize=(layers[0].config.crystal_thresh, layers[0].config.dampening_factor),
    )
    authors = AuthorsLoop(authors_model, rule)
    optimizer = torch.optim.SGD(bio.parameters(), lr=LR)
    xs, ys = digits_like(STEPS, BATCH)
    initial_f = [layer.fuzzy_lr.clone() for layer in layers]
    for t in range(STEPS):
        optimizer.zero_grad()
        F.cross_entropy(bio(xs[t]), ys[t]).backward()
        optimizer.step()
        authors.step(xs[t], ys[t])
        for layer, theirs_f, theirs in zip(layers, rule.f, rule.layers):
            if acts_on == "gradient":
                assert torch.equal(layer.weight, theirs.weight), (t, layer.layer_name)
                assert torch.equal(layer.fuzzy_lr, theirs_f), (t, layer.layer_name)
            else:
                torch.testing.assert_close(layer.weight, theirs.weight, rtol=1e-5, atol=1e-6, msg=f"step {t}")
                torch.testing.assert_close(layer.fuzzy_lr, theirs_f, rtol=1e-6, atol=0, msg=f"step {t}")
    # the comparison exercised both rules, not just SGD
    assert int(layers[0].rejuvenations) == STEPS and rule.replaced > 0
    assert any(not torch.equal(layer.fuzzy_lr, f0) for layer, f0 in zip(layers, initial_f))


def test_the_authors_weight_splitting_is_biofxs():
    """Γ = 2: the authors' ``accum_func`` on every layer but the classifier gives biofx's outputs."""
    from authors_loop import split_outputs

    plain = mlp()
    unsplit, authors_model = copy.deepcopy(plain), copy.deepcopy(plain)
    handles = split_outputs(authors_model, 2, n_outputs=10)
    bio = biofx.transform(plain, weight_splitting_Gamma=2, automatic=())
    x = torch.randn(7, 64)
    assert len(handles) == 2
    torch.testing.assert_close(bio(x), authors_model(x), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(unsplit(x), authors_model(x))  # splitting changed the outputs
