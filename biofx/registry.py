"""The mechanism registry: one declaration per mechanism.

Each :class:`Mechanism` states its name (the literal appears here only), when it is on for a
layer's config, where it acts, its explicit model-level method and its colour in drawings.
Every consumer reads from here: the graph tags (:mod:`biofx.passes.tags`),
``BioConfig.automatic`` (:data:`biofx.config.MECHANISMS`), the report's mechanism list
(:mod:`biofx.report`), the optimizer-step hooks (:mod:`biofx.runtime`), the model-level
methods (:mod:`biofx.model`) and the drawing palette (:data:`biofx.viz.MECHANISM_COLOURS`).

Where a mechanism acts (``Mechanism.acts``):

==============  =====================================================================
``WEIGHT``      a node on the forward weight chain (``w → dale → fuzzy → volume → layer``)
``OUTPUT``      a node on the forward output chain (``layer → split → probe``)
``BACKWARD``    a gradient node: identity forward, scales ``g`` in backward (``acts_on="gradient"``)
``PRE_STEP``    the optimizer pre-step hook (on ``.grad``, before the update)
``POST_STEP``   the optimizer post-step hook (on the update just taken, ``acts_on="update"``)
``METHOD``      the explicit model-level method (the reference's way)
==============  =====================================================================

The layer-level method of a :class:`~biofx.BioSynapses` has the same name as the model-level
one, so an operation has two names: the method and the math under it
(``fuzzy_learning_rates`` → :func:`biofx.mechanisms.fuzzy.apply`).

The registry imports nothing from biofx: ``config`` is any :class:`~biofx.BioConfig`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

__all__ = [
    "Mechanism",
    "REGISTRY",
    "WEIGHT",
    "OUTPUT",
    "BACKWARD",
    "PRE_STEP",
    "POST_STEP",
    "METHOD",
    "FUZZY",
    "VOLUME",
    "CRYSTALLIZE",
    "SCALING",
    "WEIGHT_SPLIT",
    "DALE",
    "ACTIVITY",
    "REJUVENATE",
    "automatic_names",
]

WEIGHT, OUTPUT, BACKWARD = "forward weight chain", "forward output chain", "backward"
PRE_STEP, POST_STEP, METHOD = "pre-step hook", "post-step hook", "explicit method"


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """One mechanism.

    Attributes:
        name: the name in tags, reports, ``BioConfig.automatic`` and drawings.
        is_on: ``config -> bool``: whether the mechanism is on for a layer with this config
            (for an ``automatic`` one: whether biofx applies it by itself).
        acts: where it acts (see the module docstring).
        method: its explicit method, the same name on the model and on each layer
            (``None``: it has none).
        colour: its fill colour in drawings.
        automatic: whether ``BioConfig.automatic`` may name it (then ``is_on`` is
            "named there").
        detail: ``config -> str``, shown after the name in reports (``None``: nothing).
    """

    name: str
    is_on: Callable[[Any], bool]
    acts: tuple
    method: Optional[str]
    colour: str
    automatic: bool = False
    detail: Optional[Callable[[Any], str]] = None

    def label(self, config: Any) -> str:
        """The report's entry: the name, with the detail in parentheses when there is one."""
        return f"{self.name} ({self.detail(config)})" if self.detail is not None else self.name


#: Every mechanism by name, in report order.
REGISTRY: dict[str, Mechanism] = {}


def _register(mechanism: Mechanism) -> Mechanism:
    REGISTRY[mechanism.name] = mechanism
    return mechanism


def _automatic(name: str, **fields: Any) -> Mechanism:
    """A mechanism ``BioConfig.automatic`` may name: on when named there."""
    return _register(Mechanism(name, lambda config: name in config.automatic, automatic=True, **fields))


FUZZY = _automatic("fuzzy", acts=(BACKWARD, POST_STEP, METHOD), method="fuzzy_learning_rates", colour="#fdbf6f")
VOLUME = _automatic("volume", acts=(BACKWARD, POST_STEP, METHOD), method="volume_dependent_lr", colour="#b2df8a")
CRYSTALLIZE = _automatic("crystallize", acts=(PRE_STEP, POST_STEP, METHOD), method="crystallize", colour="#80cdc1")
SCALING = _automatic("scaling", acts=(PRE_STEP, METHOD), method="scale_grad", colour="#f1b6da")
WEIGHT_SPLIT = _register(
    Mechanism(
        "weight_split",
        lambda config: config.splits,
        acts=(OUTPUT,),
        method=None,
        colour="#cab2d6",
        detail=lambda config: f"Γ={config.weight_splitting_Gamma}",
    )
)
DALE = _register(
    Mechanism(
        "dale",
        lambda config: config.apply_dales_principle,
        acts=(WEIGHT, PRE_STEP, POST_STEP, METHOD),  # the steps: DANN's corrected interneuron updates
        method="enforce_dales_principle",
        colour="#fb9a99",
    )
)
ACTIVITY = _register(
    Mechanism("activity", lambda config: config.tracks_activity, acts=(OUTPUT,), method=None, colour="#ffff99")
)
REJUVENATE = _register(
    Mechanism(
        "rejuvenate",
        lambda config: config.rejuvenate_every > 0,
        acts=(PRE_STEP, METHOD),
        method="rejuvenate_weights",
        colour="#e6c07b",
        detail=lambda config: "every step" if config.rejuvenate_every == 1 else f"every {config.rejuvenate_every} steps",
    )
)

#: The automatic mechanisms that multiply: a gradient node with ``acts_on="gradient"``, the
#: optimizer's update at the post-step hook with ``acts_on="update"``.
MULTIPLICATIVE = (FUZZY, VOLUME)


def automatic_names() -> tuple:
    """The names ``BioConfig.automatic`` may hold, in canonical order."""
    return tuple(m.name for m in REGISTRY.values() if m.automatic)
