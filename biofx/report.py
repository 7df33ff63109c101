"""What a transform did, and its views: :class:`TransformReport` and :func:`summary`.

Every bio model has ``bio_report``: the converted layers (:class:`LayerReport`, with the
mechanisms on for each, read from :mod:`biofx.registry`), the layers left plain with the
reason, the pass counts and how the model graph was captured. It is derived from the model's
tree when asked (:attr:`biofx.model.BioMethods.bio_report`). :func:`summary` is its table view.

>>> import torch.nn as nn, biofx
>>> from biofx.report import summary
>>> s = summary(biofx.transform(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))))
>>> s.layers, s.weights
(2, 48)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import textwrap

from . import registry
from .bio_layer import BioLayer

log = logging.getLogger("biofx")

__all__ = ["LayerReport", "TransformReport", "Summary", "summary", "layer_report", "report_of", "log_plain"]


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """One converted layer; ``mechanisms`` are the automatic and forward-pass ones."""

    name: str
    kind: str
    weight_shape: tuple
    config_rule: str
    mechanisms: tuple
    state_bytes: int

    @property
    def weights(self) -> int:
        return math.prod(self.weight_shape)


@dataclasses.dataclass(frozen=True)
class TransformReport:
    """What :func:`~biofx.transform` did: converted layers, layers left plain (with the reason), passes."""

    converted: tuple
    plain: tuple  # (name, reason)
    passes: tuple  # (pass name, nodes inserted)
    capture: str = "fx"  # how the model graph was captured: "fx", "export (inputs: ...)", "module tree (...)"

    def __str__(self) -> str:
        lines = [f"biofx converted {len(self.converted)} layer(s), captured by {self.capture}:"]
        for layer in self.converted:
            mech = ", ".join(layer.mechanisms) or "-"
            lines.append(f"  {layer.name or '<root>'} ({layer.kind} {list(layer.weight_shape)}): {mech}")
        if self.plain:
            lines.append(f"left plain {len(self.plain)} layer(s):")
            lines += [f"  {name}: {reason}" for name, reason in self.plain]
        return "\n".join(lines)


def layer_report(path: str, layer) -> LayerReport:
    """The report of a bio layer at ``path``: the mechanisms on for its config, in registry
    order (weight splitting only where the plan split it: the output layer is not)."""
    plan = layer.bio_plan
    mechanisms = tuple(
        mechanism.label(plan.config)
        for mechanism in registry.REGISTRY.values()
        if mechanism.is_on(plan.config) and (mechanism is not registry.WEIGHT_SPLIT or plan.split)
    )
    kind = layer.bio_state.kind.name
    return LayerReport(path, kind, tuple(layer.weight.shape), plan.rule, mechanisms, layer.bio_state.state_bytes())


def report_of(model) -> TransformReport:
    """The report of a transformed model, from its tree as it is (``bio.bio_report``)."""
    converted = [
        layer_report(path, module)
        for path, module in model.named_modules(remove_duplicate=False)
        if isinstance(module, BioLayer)
    ]
    plain = list(model.__dict__.get("_biofx_plain", ()))
    for path in model.unconverted_new_layers():
        plain.append((path, "appeared after biofx.transform (a replaced or added layer): it trains plain"))
    passes = model.__dict__.get("_biofx_passes", ())
    return TransformReport(tuple(converted), tuple(plain), passes, model.__dict__.get("_biofx_capture", "fx"))


def log_plain(plain: list) -> None:
    """Log the layers left plain: a warning for those the user's ConfigMap did not choose."""
    unchosen = [(name, reason) for name, reason in plain if not reason.startswith("left plain by ConfigMap")]
    for name, reason in plain:
        log.info("biofx left %s plain: %s", name, reason)
    if unchosen:
        log.warning(
            "biofx could not convert %d Linear/Conv layer(s); they train as plain layers (bio_report.plain): %s",
            len(unchosen),
            "; ".join(f"{name}: {reason}" for name, reason in unchosen),
        )


# -- the summary view ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Summary:
    """Rows per bio layer (:class:`LayerReport` with the live bio-state bytes), the layers
    left plain (``(name, reason)``) and totals.

    ``str(summary)`` is a table; ``bytes_per_weight`` = bio-state bytes / bio weights.
    """

    model: str
    rows: tuple
    plain: tuple

    @property
    def layers(self) -> int:
        return len(self.rows)

    @property
    def weights(self) -> int:
        return sum(row.weights for row in self.rows)

    @property
    def state_bytes(self) -> int:
        return sum(row.state_bytes for row in self.rows)

    @property
    def bytes_per_weight(self) -> float:
        return self.state_bytes / self.weights if self.weights else 0.0

    def __str__(self) -> str:
        header = ("Bio layer", "Kind", "Weight shape", "Mechanisms", "Bio state")
        rows = [
            (row.name or "<root>", row.kind, str(list(row.weight_shape)), row.mechanisms or ("-",),
             _format_bytes(row.state_bytes))
            for row in self.rows
        ]
        widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in (0, 1, 2, 4)]
        # the mechanisms take what is left of TABLE_WIDTH, wrapped at their commas
        room = TABLE_WIDTH - sum(widths) - 2 * len(widths)
        longest = max((len(name) for row in rows for name in row[3]), default=0)
        mechanisms = max(len(header[3]), longest, min(room, max((len(", ".join(row[3])) for row in rows), default=0)))
        widths.insert(3, mechanisms)

        def line(values) -> str:
            left = "  ".join(v.ljust(w) for v, w in zip(values[:-1], widths))
            return f"{left}  {values[-1].rjust(widths[-1])}".rstrip()

        rule_width = sum(widths) + 2 * (len(widths) - 1)
        lines = ["=" * rule_width, f"{self.model} (biofx)", "=" * rule_width, line(header), "-" * rule_width]
        for name, kind, shape, names, size in rows:
            wrapped = _pack(names, mechanisms)
            lines.append(line((name, kind, shape, wrapped[0], size)))
            lines += [line(("", "", "", more, "")) for more in wrapped[1:]]
        lines += [
            "=" * rule_width,
            f"Bio layers: {self.layers:,}",
            f"Bio weights: {self.weights:,}",
            f"Bio state: {_format_bytes(self.state_bytes)} ({self.bytes_per_weight:.2f} bytes per weight)",
        ]
        if self.plain:
            lines.append(f"Left plain: {len(self.plain)}")
            width = max(rule_width, TABLE_WIDTH)
            lines += [textwrap.fill(f"{n}: {why}", width, initial_indent="  ", subsequent_indent="    ")
                      for n, why in self.plain]
        lines.append("=" * rule_width)
        return "\n".join(lines)


#: The width :class:`Summary` keeps its table to (the mechanisms wrap at their commas).
TABLE_WIDTH = 100


def _pack(names: tuple, width: int) -> list[str]:
    """``names`` joined by ", " into lines of at most ``width`` characters (a longer name alone)."""
    lines = [names[0]]
    for name in names[1:]:
        if len(lines[-1]) + 2 + len(name) <= width:
            lines[-1] += f", {name}"
        else:
            lines[-1] += ","
            lines.append(name)
    return lines


def summary(bio) -> Summary:
    """Summarize a model returned by :func:`biofx.transform` (its ``bio_report`` as a table)."""
    report = getattr(bio, "bio_report", None)
    if not isinstance(report, TransformReport):
        raise TypeError(
            f"summary() needs a model transformed by biofx, got {type(bio).__name__}; "
            "call biofx.transform(model) first and pass its result"
        )
    return Summary(type(bio).__name__, report.converted, tuple(report.plain))


def _format_bytes(n: int) -> str:
    if n < 1024:
        return f"{n:,} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:,.1f} MiB"
