"""A torchinfo-style table of a bio model: :func:`summary`.

>>> import torch.nn as nn, biofx
>>> from biofx.summary import summary
>>> s = summary(biofx.transform(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))))
>>> s.layers, s.weights
(2, 48)
"""

from __future__ import annotations

import dataclasses

from .model import BioMethods

__all__ = ["summary", "Summary"]


@dataclasses.dataclass(frozen=True)
class Summary:
    """Rows per bio layer (:class:`~biofx.transform.LayerReport` with the live bio-state bytes),
    the layers left plain (``(name, reason)``) and totals.

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
        cells = [
            (
                row.name or "<root>",
                row.kind,
                str(list(row.weight_shape)),
                ", ".join(row.mechanisms) or "-",
                _format_bytes(row.state_bytes),
            )
            for row in self.rows
        ]
        widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

        def line(values) -> str:
            left = "  ".join(v.ljust(w) for v, w in zip(values[:-1], widths))
            return f"{left}  {values[-1].rjust(widths[-1])}"

        rule_width = sum(widths) + 2 * (len(widths) - 1)
        lines = ["=" * rule_width, f"{self.model} (biofx)", "=" * rule_width, line(header), "-" * rule_width]
        lines += [line(c) for c in cells]
        lines += [
            "=" * rule_width,
            f"Bio layers: {self.layers:,}",
            f"Bio weights: {self.weights:,}",
            f"Bio state: {_format_bytes(self.state_bytes)} ({self.bytes_per_weight:.2f} bytes per weight)",
        ]
        if self.plain:
            lines.append(f"Left plain: {len(self.plain)}")
            lines += [f"  {name}: {reason}" for name, reason in self.plain]
        lines.append("=" * rule_width)
        return "\n".join(lines)


def summary(bio: BioMethods) -> Summary:
    """Summarize a model returned by :func:`biofx.transform`.

    Rows come from ``bio.bio_report`` with each layer's current ``state_bytes()``.
    """
    if not isinstance(bio, BioMethods):
        raise TypeError(
            f"summary() needs a model transformed by biofx, got {type(bio).__name__}; "
            "call biofx.transform(model) first and pass its result"
        )
    report = bio.bio_report
    live = {layer.layer_name: layer.state_bytes() for layer in bio.bio_layers()}
    rows = tuple(dataclasses.replace(row, state_bytes=live[row.name]) for row in report.converted)
    return Summary(type(bio).__name__, rows, tuple(report.plain))


def _format_bytes(n: int) -> str:
    if n < 1024:
        return f"{n:,} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024**2:,.1f} MiB"
