"""The paper's comparison at small scale: its grid of mechanisms on scikit-learn's digits.

Hofmann et al. (Nature Communications 16, 2025) compare plain training with fuzzy learning
rates (synaptic diversity), rejuvenation (spine turnover) and both, each with and without
weight splitting (multi-synaptic connectivity). This script runs that grid with the
settings of :data:`biofx.demo.PAPER_CONFIG` (ν = 0.09 uniform, d_re = 14 every step) on the
demo's model and data, reusing the demo's training loop (:func:`biofx.demo.train`):

==========================  =====================================================
mechanism                   BioConfig (Γ ∈ {0, 2} on top)
==========================  =====================================================
``plain``                   none: the untransformed model (with Γ = 2: splitting only)
``fuzzy``                   ``fuzzy_lr_distribution="uniform"``, ``automatic=("fuzzy",)``
``rejuvenation``            ``rejuvenate_every=1`` (f = 1: ``"baseline"``, ``automatic=()``)
``fuzzy+rejuvenation``      both
==========================  =====================================================

A ninth run, :data:`CONTROL`, trains the plain model at twice the learning rate. For every
seed all runs start from the same initial weights and see the same batches. Reported per
condition: mean and 95 % confidence interval (Student's t over seeds) of the epochs to 90 %
and 95 % validation accuracy (over the seeds that reached it), of the final and of the best
validation accuracy, the median wall time per run, and the same-seed (paired) differences to
plain training and (for Γ = 2) to the control.

Outputs (in ``--out``, default ``docs/_static``): ``reproduction_results.json`` (settings, every
curve, the summaries), ``reproduction_table.inc`` (RST tables for ``.. include::``),
``reproduction_table.md``, ``reproduction_curves.png`` and ``reproduction_summary.png``.

Usage::

    python tools/reproduce.py                             # 10 seeds x 25 epochs, ~10 min on 1 core
    python tools/reproduce.py --seeds 5 --epochs 20 --out /tmp/repro
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import platform
import statistics
import sys
from pathlib import Path
from typing import Optional

import torch

from biofx import BioConfig, __version__
from biofx.demo import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    MODELS,
    PAPER_CONFIG,
    THRESHOLDS,
    MissingDependency,
    RunResult,
    require,
    bio_copy,
    build_model,
    load_digits_split,
    mean_ci95,
    new_figure,
    plot_curves,
    single_thread,
    train,
)

MECHANISMS = ("plain", "fuzzy", "rejuvenation", "fuzzy+rejuvenation")
GAMMAS = (0, 2)


@dataclasses.dataclass(frozen=True)
class Condition:
    mechanism: str
    gamma: int
    config: Optional[BioConfig]  # None: the plain model, untransformed
    lr_factor: float = 1.0  # times --lr

    @property
    def label(self) -> str:
        return f"{self.mechanism}, Γ={self.gamma}"


def conditions() -> list[Condition]:
    """The grid: every mechanism with Γ = 0 and Γ = 2."""
    grid = []
    for gamma in GAMMAS:
        for mechanism in MECHANISMS:
            fuzzy = "fuzzy" in mechanism
            rejuvenation = "rejuvenation" in mechanism
            config = None
            if fuzzy or rejuvenation or gamma > 1:
                config = PAPER_CONFIG.replace(
                    fuzzy_lr_distribution="uniform" if fuzzy else "baseline",
                    automatic=("fuzzy",) if fuzzy else (),
                    rejuvenate_every=1 if rejuvenation else 0,
                    weight_splitting_Gamma=gamma,
                )
            grid.append(Condition(mechanism, gamma, config))
    return grid


#: Plain training at twice the learning rate. With an identity activation, Γ = 2 makes each
#: pair of outputs share one summed weight vector whose gradient step is twice as large, so
#: this control tells a Γ = 2 speed-up from a mere step-size change.
CONTROL = Condition("plain (2× lr, control)", 0, None, lr_factor=2.0)


def run_grid(args: argparse.Namespace, grid: list[Condition], progress) -> dict:
    """``label -> [RunResult per seed]``; per seed, every condition starts from the same weights."""
    data = load_digits_split()
    runs: dict = {c.label: [] for c in grid}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        base = build_model(args.model)
        for condition in grid:
            if progress is not None:
                progress.set_description(f"seed {seed} {condition.label}")
            model = copy.deepcopy(base) if condition.config is None else bio_copy(base, condition.config, seed)
            on_epoch = (lambda epoch, acc: progress.update()) if progress is not None else None
            runs[condition.label].append(
                train(
                    model,
                    data,
                    epochs=args.epochs,
                    lr=args.lr * condition.lr_factor,
                    batch_size=args.batch_size,
                    seed=seed,
                    on_epoch=on_epoch,
                )
            )
    return runs


# -- statistics ------------------------------------------------------------------------------
def interval(values: list) -> dict:
    """Mean, 95 % CI half width and count of the values that are not None."""
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "ci95": None, "n": 0}
    mean, half = mean_ci95(torch.tensor(present, dtype=torch.float64).view(-1, 1))
    return {"mean": float(mean), "ci95": float(half), "n": len(present)}


def summarize(runs: list[RunResult], references: dict) -> dict:
    """Intervals of every reported measure, and paired differences (same seeds) to each reference.

    ``references`` maps a name to the reference's runs; ``summary[f"minus_{name}"]`` holds
    the intervals of ``this − reference`` per seed (for epochs: seeds where both reached).
    """
    summary = {f"epochs_to_{round(t * 100)}": interval([r.epochs_to(t) for r in runs]) for t in THRESHOLDS}
    summary["final_accuracy"] = interval([r.curve[-1] for r in runs])
    summary["best_accuracy"] = interval([max(r.curve) for r in runs])
    summary["wall_time_s"] = {"median": statistics.median(r.wall_time_s for r in runs)}
    summary["seeds"] = len(runs)
    for name, reference in references.items():
        diffs = {"final_accuracy": interval([r.curve[-1] - p.curve[-1] for r, p in zip(runs, reference)])}
        for t in THRESHOLDS:
            pairs = [(r.epochs_to(t), p.epochs_to(t)) for r, p in zip(runs, reference)]
            both = [a - b for a, b in pairs if a is not None and b is not None]
            diffs[f"epochs_to_{round(t * 100)}"] = interval(both)
        summary[f"minus_{name}"] = diffs
    return summary


# -- tables and figures ----------------------------------------------------------------------
def _cell(stat: dict, scale: float = 1.0, digits: int = 1, seeds: Optional[int] = None, empty="not reached") -> str:
    if stat["mean"] is None:
        return empty
    text = f"{stat['mean'] * scale:.{digits}f} ± {stat['ci95'] * scale:.{digits}f}"
    return text + (f" ({stat['n']}/{seeds})" if seeds is not None and stat["n"] < seeds else "")


def table_rows(grid: list[Condition], summaries: dict) -> tuple[list, list]:
    header = ["mechanism", "Γ"] + [f"epochs to {round(t * 100)} %" for t in THRESHOLDS]
    header += ["final accuracy (%)", "best accuracy (%)", "median wall time / run (s)"]
    rows = []
    for c in grid:
        s = summaries[c.label]
        row = [c.mechanism, str(c.gamma)]
        row += [_cell(s[f"epochs_to_{round(t * 100)}"], seeds=s["seeds"]) for t in THRESHOLDS]
        row += [_cell(s["final_accuracy"], 100), _cell(s["best_accuracy"], 100), f"{s['wall_time_s']['median']:.1f}"]
        rows.append(row)
    return header, rows


def paired_rows(conditions: list[Condition], summaries: dict, reference: str) -> tuple[list, list]:
    header = ["mechanism", "Γ"] + [f"Δ epochs to {round(t * 100)} %" for t in THRESHOLDS]
    header.append("Δ final accuracy (points)")
    rows = []
    for c in conditions:
        d = summaries[c.label][f"minus_{reference}"]
        row = [c.mechanism, str(c.gamma)]
        seeds = summaries[c.label]["seeds"]
        row += [_cell(d[f"epochs_to_{round(t * 100)}"], seeds=seeds, empty="—") for t in THRESHOLDS]
        rows.append(row + [_cell(d["final_accuracy"], 100)])
    return header, rows


def rst_table(title: str, header: list, rows: list) -> str:
    lines = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    for row in [header] + rows:
        lines.append(f"   * - {row[0]}")
        lines += [f"     - {cell}" for cell in row[1:]]
    return "\n".join(lines) + "\n"


def markdown_table(title: str, header: list, rows: list) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_grid_curves(grid: list[Condition], runs: dict, path: Path, title: str) -> None:
    figure, axes = new_figure(title, columns=len(GAMMAS))
    for ax, gamma in zip(axes, GAMMAS):
        curves = {c.mechanism: [r.curve for r in runs[c.label]] for c in grid if c.gamma == gamma}
        plot_curves(curves, ax, band="ci95")
        if gamma != GAMMAS[0]:
            for reference, style in ((grid[0], "k--"), (CONTROL, "k:")):
                mean = torch.tensor([r.curve for r in runs[reference.label]]).mean(0)
                ax.plot(range(1, len(mean) + 1), mean.tolist(), style, lw=1, label=f"{reference.label} (mean)")
            ax.legend()
        ax.set_title(f"Γ = {gamma}")
        ax.set_ylim(0.5, 1.0)
    figure.savefig(path, dpi=120)


def plot_summary(grid: list[Condition], summaries: dict, path: Path, title: str) -> None:
    measures = [(f"epochs_to_{round(t * 100)}", f"epochs to {round(t * 100)} %", 1) for t in THRESHOLDS]
    measures.append(("final_accuracy", "final accuracy (%)", 100))
    figure, axes = new_figure(title, columns=len(measures))
    width = 0.8 / len(GAMMAS)
    for ax, (key, name, scale) in zip(axes, measures):
        for g, gamma in enumerate(GAMMAS):
            stats = [summaries[c.label][key] for c in grid if c.gamma == gamma]
            xs = [m + (g - (len(GAMMAS) - 1) / 2) * width for m in range(len(MECHANISMS))]
            means = [s["mean"] * scale if s["mean"] is not None else math.nan for s in stats]
            errors = [s["ci95"] * scale if s["mean"] is not None else 0.0 for s in stats]
            ax.bar(xs, means, width, yerr=errors, capsize=3, label=f"Γ = {gamma}")
        ax.set_xticks(range(len(MECHANISMS)), [m.replace("+", "+\n") for m in MECHANISMS], fontsize=8)
        ax.set_ylabel(name)
        ax.grid(axis="y", alpha=0.3)
        if key == "final_accuracy":
            low = min(s["mean"] - s["ci95"] for s in (summaries[c.label][key] for c in grid)) * scale
            ax.set_ylim(max(0.0, math.floor(low) - 1), 100)
        ax.legend(fontsize=8)
    figure.savefig(path, dpi=120)


# -- command line ----------------------------------------------------------------------------
def parse_args(argv: Optional[list]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs per run (%(default)s)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (%(default)s; at least 2 for intervals)")
    parser.add_argument("--model", choices=MODELS, default="mlp", help="model (%(default)s)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="SGD learning rate (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="batch size (%(default)s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "_static")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (confidence intervals need two runs)")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error("--lr must be a positive number")
    return args


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    grid = conditions()
    runs_of = grid + [CONTROL]
    try:
        tqdm = None if args.no_progress else require("tqdm", "tqdm").tqdm
        progress = tqdm(total=args.seeds * len(runs_of) * args.epochs, file=sys.stderr, unit="epoch") if tqdm else None
        with single_thread():
            runs = run_grid(args, runs_of, progress)
        if progress is not None:
            progress.close()
        references = {"plain": runs[grid[0].label], "control": runs[CONTROL.label]}
        summaries = {c.label: summarize(runs[c.label], references) for c in runs_of}
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        what = f"{args.model.upper()} on digits, {args.seeds} seeds, {args.epochs} epochs, SGD lr={args.lr}"
        plot_grid_curves(grid, runs, out / "reproduction_curves.png", f"{what}: mean and 95 % CI")
        plot_summary(grid, summaries, out / "reproduction_summary.png", f"{what}: mean and 95 % CI")
    except MissingDependency as err:
        print(f"reproduce: error: {err}", file=sys.stderr)
        return 2
    tables = [
        (f"Mean ± 95 % CI over {args.seeds} seeds", *table_rows(runs_of, summaries)),
        (
            "Paired difference to plain (Γ = 0) on the same seed: mean ± 95 % CI",
            *paired_rows(runs_of[1:], summaries, "plain"),
        ),
        (
            "Γ = 2 against the plain 2× lr control, paired: mean ± 95 % CI",
            *paired_rows([c for c in grid if c.gamma == 2], summaries, "control"),
        ),
    ]
    (out / "reproduction_table.inc").write_text("\n".join(rst_table(*t) for t in tables))
    markdown = "\n".join(markdown_table(*t) for t in tables)
    (out / "reproduction_table.md").write_text(markdown)
    results = {
        "settings": {
            "task": "sklearn digits (1437 train / 360 validation, stratified, split seed 0)",
            "model": args.model,
            "epochs": args.epochs,
            "seeds": list(range(args.seeds)),
            "optimizer": {"name": "SGD", "lr": args.lr, "momentum": 0.0, "batch_size": args.batch_size},
            "biofx": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "torch_threads": 1,
        },
        "conditions": {
            c.label: {
                "lr": args.lr * c.lr_factor,
                "bio_config": None if c.config is None else json.loads(c.config.to_json()),
            }
            for c in runs_of
        },
        "runs": {label: [r.to_dict() for r in rs] for label, rs in runs.items()},
        "summary": summaries,
    }
    (out / "reproduction_results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(what)
    print(markdown)
    print(f"wrote reproduction_* into {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
