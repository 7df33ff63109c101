"""Draw the example bio graphs of the docs: ``docs/_static/graph_mlp.svg`` and ``graph_cnn.svg``.

A small MLP and a small CNN from :mod:`biofx.zoo`, transformed with Γ = 2, Dale's principle,
fuzzy and volume-dependent plasticity in the graph, crystallization and synaptic scaling
(with its activity probes) at the optimizer step and rejuvenation every 50 steps, so every
mechanism shows: as graph nodes or in the drawing's "at optimizer.step()" lane.

Usage: ``python tools/draw_examples.py [--out DIR]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "_static")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    examples = {
        "mlp": (zoo.MLP(in_features=16, hidden=(8,), out_features=4), (2, 16), False),
        "cnn": (zoo.CNN(in_channels=1, channels=(4, 8), hidden=16, classes=4, image_size=8), (2, 1, 8, 8), True),
    }
    for name, (model, shape, cluster) in examples.items():
        bio = biofx.transform(model, CONFIG)
        title = f"{type(model).__name__} transformed by biofx"
        path = draw(bio, out / f"graph_{name}.svg", torch.zeros(shape), cluster_by_module=cluster, title=title)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
