"""The mechanism registry is the one place a mechanism is declared; every consumer reads it."""

import ast
from pathlib import Path

import pytest
import torch.nn as nn

import biofx
from biofx import registry, viz
from biofx.compat import BioModule
from biofx.config import MECHANISMS
from biofx.model import BioMethods
from biofx.passes import tags

PACKAGE = Path(biofx.__file__).parent


def test_a_mechanism_name_is_a_literal_only_in_the_registry():
    names = set(registry.REGISTRY)
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        if where == "registry.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{where} {node.value!r}")
    # Distribution.ACTIVITY = "activity" names a fuzzy-rate distribution, and ops.__all__ the
    # function ops.weight_split: not the mechanisms
    assert found == ["config.py 'activity'", "ops.py 'weight_split'"]


@pytest.mark.parametrize("mechanism", list(registry.REGISTRY.values()), ids=list(registry.REGISTRY))
def test_every_consumer_reads_the_declaration(mechanism):
    assert viz.MECHANISM_COLOURS[mechanism.name] == mechanism.colour
    assert (mechanism.name in MECHANISMS) == mechanism.automatic
    assert set(mechanism.acts) <= {registry.WEIGHT, registry.OUTPUT, registry.BACKWARD, registry.PRE_STEP,
                                   registry.POST_STEP, registry.METHOD}
    if mechanism.method is not None:  # one name at model and layer level
        assert registry.METHOD in mechanism.acts
        assert callable(getattr(BioMethods, mechanism.method))
        assert callable(getattr(biofx.BioSynapses, mechanism.method))
        assert mechanism.method in BioModule.exposed_functions


def test_graph_tags_are_the_registry_names():
    assert {tags.DALE, tags.FUZZY, tags.VOLUME, tags.WEIGHT_SPLIT, tags.ACTIVITY} <= set(registry.REGISTRY)


def test_report_lists_the_mechanisms_on_in_registry_order():
    config = dict(automatic=("volume", "fuzzy", "scaling"), weight_splitting_Gamma=2, apply_dales_principle=True,
                  synaptic_scaling_gamma=0.1, rejuvenate_every=5)
    bio = biofx.transform(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), **config)
    first, last = bio.bio_report.converted
    assert first.mechanisms == ("fuzzy", "volume", "scaling", "weight_split (Γ=2)", "dale", "activity",
                                "rejuvenate (every 5 steps)")
    assert "weight_split (Γ=2)" not in last.mechanisms  # the model's last layer is not split
    assert registry.REJUVENATE.label(biofx.BioConfig(rejuvenate_every=1)) == "rejuvenate (every step)"
    cfg = bio.bio_layers()[0].config
    assert [m.name for m in registry.REGISTRY.values() if m.is_on(cfg)] == [
        "fuzzy", "volume", "scaling", "weight_split", "dale", "activity", "rejuvenate"]
