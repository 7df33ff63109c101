"""The authors' training rules, written independently of biofx: the one place they live.

Hofmann et al.'s experiments (CeadeS/BioLearn, ``bionet``: ``BioModule.scale_grad``,
``purge``, ``crystallize``, and the weight-splitting ``accum_func``) run, after
``loss.backward()`` and before ``optimizer.step()``:

    g ← g·f (scale_grad)  →  purge (rejuvenation)  →  crystallize

* ``f`` per weight: ``1 + (2·U·ν − ν)`` with U ~ U(0, 1) (``torch.rand``), drawn once;
* ``purge`` per layer: ``σ = max|W|/d_re``; ``t = |N(0, σ)|`` per weight (``torch.normal``),
  then ``r = (U·max − max/2)·2`` (``torch.rand``); where ``t > |w|``: ``w ← r``;
* ``crystallize`` per layer: where ``|g|/|w| < thresh`` or ``|g| > mean|w|`` (g already g·f):
  ``f ← f·dampening``;
* weight splitting (Γ > 1): every Conv2d and every Linear but the one with the model's
  outputs returns ``repeat_interleave(y.view(-1, C/Γ, Γ, …).sum(2), Γ, 1)`` (C its outputs).

The random numbers are injectable: :class:`TorchDraws` takes them from a ``torch.Generator``
as the authors' code does (``torch.normal`` then ``torch.rand`` per layer, layer by layer),
:class:`CounterDraws` from :mod:`biofx.rng` fed each layer's key and a purge counter (what
biofx draws), so the same rules can be compared with biofx bit for bit
(``tests/test_parity.py``) or on outcome with torch's generator (``tools/reproduce.py``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from biofx import rng


class TorchDraws:
    """Standard normal and uniform draws from one ``torch.Generator`` (the authors' RNG)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def normal(self, layer: int, shape: torch.Size) -> torch.Tensor:
        return torch.normal(0.0, 1.0, shape, generator=self.generator)

    def uniform(self, layer: int, shape: torch.Size) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def advance(self) -> None:
        """One purge of every layer is done (the generator's state already moved on)."""


class CounterDraws:
    """biofx's rejuvenation draws: :mod:`biofx.rng` with each layer's key and a purge counter."""

    def __init__(self, keys: Sequence[torch.Tensor]):
        self.keys = list(keys)
        self.counter = torch.zeros((), dtype=torch.int64)

    def normal(self, layer: int, shape: torch.Size) -> torch.Tensor:
        return rng.normal(shape, rng.stream_seed(self.keys[layer], self.counter, rng.REJUVENATE_THRESHOLD))

    def uniform(self, layer: int, shape: torch.Size) -> torch.Tensor:
        return rng.uniform(shape, rng.stream_seed(self.keys[layer], self.counter, rng.REJUVENATE_VALUE))

    def advance(self) -> None:
        self.counter = self.counter + 1


#: The layers the authors' ``BioModule`` attaches to.
LAYERS = (nn.Linear, nn.Conv2d)


def bio_layers(model: nn.Module) -> list:
    """``model``'s Linear and Conv2d layers, in module order."""
    return [m for m in model.modules() if isinstance(m, LAYERS)]


def authors_multipliers(model: nn.Module, nu: float, generator: torch.Generator) -> list:
    """The authors' fuzzy multipliers ``1 + (2·U·ν − ν)``, one tensor per layer's weight."""
    return [1.0 + (2.0 * torch.rand(m.weight.shape, generator=generator) * nu - nu) for m in bio_layers(model)]


def split_outputs(model: nn.Module, gamma: int, n_outputs: int) -> list:
    """Weight splitting on every Conv2d of ``model`` and every Linear without ``n_outputs``
    outputs (the authors skip the classifier by its size). Returns the forward-hook handles."""

    def accumulate(module, inputs, y):
        grouped = y.view(y.size(0), y.size(1) // gamma, gamma, *y.shape[2:]).sum(2)
        return torch.repeat_interleave(grouped, gamma, 1)

    return [
        m.register_forward_hook(accumulate)
        for m in bio_layers(model)
        if isinstance(m, nn.Conv2d) or m.out_features != n_outputs
    ]


class AuthorsRule:
    """The authors' step-level rules on ``model``'s layers (:func:`bio_layers`); call :meth:`before_step`
    between ``loss.backward()`` and ``optimizer.step()``.

    ``multipliers``: f per layer (None: no fuzzy learning rates). ``draws``: the purge's random
    numbers (None: no rejuvenation). ``crystallize``: ``(crystal_thresh, dampening)`` or None.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        dre: float,
        draws=None,
        multipliers: Optional[Sequence[torch.Tensor]] = None,
        crystallize: Optional[tuple] = None,
    ):
        self.layers = bio_layers(model)
        self.f = None if multipliers is None else [m.clone() for m in multipliers]
        self.dre = dre
        self.draws = draws
        self.crystal = crystallize
        self.replaced = 0

    @torch.no_grad()
    def purge(self, index: int, layer: nn.Module) -> None:
        w = layer.weight
        maxi = w.abs().max()
        threshold = (self.draws.normal(index, w.shape) * (maxi / self.dre)).abs()
        fresh = (self.draws.uniform(index, w.shape) * maxi - maxi / 2.0) * 2.0
        replace = threshold > w.abs()
        w[replace] = fresh[replace]
        self.replaced += int(replace.sum())

    @torch.no_grad()
    def crystallize(self, layer: nn.Module, f: torch.Tensor) -> None:
        weight, grad = layer.weight.abs(), layer.weight.grad.abs()
        settled = (grad / weight < self.crystal[0]) | (grad > weight.mean())
        f[settled] = f[settled] * self.crystal[1]

    @torch.no_grad()
    def before_step(self) -> None:
        if self.f is not None:
            for layer, f in zip(self.layers, self.f):
                layer.weight.grad *= f
        if self.draws is not None:
            for index, layer in enumerate(self.layers):
                self.purge(index, layer)
            self.draws.advance()
        if self.crystal is not None and self.f is not None:
            for layer, f in zip(self.layers, self.f):
                self.crystallize(layer, f)
