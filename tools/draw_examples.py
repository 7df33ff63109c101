"""Draw the example bio graphs of the docs: ``docs/_static/graph_mlp.svg``, ``graph_cnn.svg``
and ``graph_blocks.svg``.

A small MLP and a small CNN from :mod:`biofx.zoo`, transformed with Γ = 2, Dale's principle,
fuzzy and volume-dependent plasticity in the graph, crystallization and synaptic scaling
(with its activity probes) at the optimizer step and rejuvenation every 50 steps, so every
mechanism shows: as graph nodes or in the drawing's "at optimizer.step()" lane. The same
configuration on four residual blocks (:class:`biofx.zoo.ResidualBlock`) and a head is too
large to draw node by node: ``depth="auto"`` draws each block as one box.

Usage: ``python tools/draw_examples.py [--out DIR]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn

import biofx
from biofx import zoo
from biofx.viz import draw

CONFIG = biofx.BioConfig(
    weight_splitting_Gamma=2,
    apply_dales_principle=True,
    automatic=("fuzzy", "volume", "crystallize", "scaling"),
    acts_on="gradient",  # fuzzy and volume as backward-graph nodes, so the picture shows them
    synaptic_scaling_gamma=0.01,
    rejuvenate_every=50,
    seed=0,
)


class Blocks(nn.Module):
    """``n`` pre-norm residual blocks in an ``nn.ModuleList``, then a linear head: a transformer's shape."""

    def __init__(self, n: int = 4, dim: int = 16, heads: int = 2, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(zoo.ResidualBlock(dim, heads, hidden) for _ in range(n))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "_static")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    examples = {
        "mlp": (zoo.MLP(in_features=16, hidden=(8,), out_features=4), (2, 16)),
        "cnn": (zoo.CNN(in_channels=1, channels=(4, 8), hidden=16, classes=4, image_size=8), (2, 1, 8, 8)),
        "blocks": (Blocks(), (2, 8, 16)),  # 416 nodes: drawn folded, each block one box (depth="auto")
    }
    for name, (model, shape) in examples.items():
        bio = biofx.transform(model, CONFIG)
        title = f"{type(model).__name__} transformed by biofx"
        path = draw(bio, out / f"graph_{name}.svg", torch.zeros(shape), title=title)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
