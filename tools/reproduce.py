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

A ninth run, :data:`CONTROL`, trains the plain model at twice the learning rate.

Two further comparisons:

* **parity with the authors' rule**: every rejuvenation condition also runs with the authors'
  rules written independently of biofx (``tools/authors_loop.py``: ``scale_grad``, ``purge``,
  weight splitting) drawing from torch's generator (``torch.normal``, ``torch.rand``, seeded
  with the run's seed) exactly as their code does, and with biofx whose counter-based draws
  are replaced by that generator (:func:`torch_draws`; separates the random numbers from
  the code), and once more with another stream of torch's generator (two runs of the same
  rule: how far random numbers alone move the outcome). biofx's own rows and these are
  paired with the authors' rule;
* **fuzzy learning rates under Adam** (lr ``--adam-lr``, Γ = 0): plain Adam, and fuzzy with
  ``acts_on="update"`` and ``acts_on="gradient"``, paired with plain Adam, with the relative
  distance of the final weights to plain Adam's.

For every seed all runs start from the same initial weights and see the same batches.
Reported per condition: mean and 95 % confidence interval (Student's t over seeds) of the
epochs to 90 % and 95 % validation accuracy (over the seeds that reached it), of the final and
of the best validation accuracy, the median wall time per run, and the same-seed (paired)
differences to plain training, (for Γ = 2) to the control, and to the references above.

Outputs (in ``--out``, default ``docs/_static``): ``reproduction_results.json`` (settings, every
curve, the summaries), ``reproduction_table.inc`` (RST tables for ``.. include::``),
``reproduction_table.md``, ``reproduction_curves.png``, ``reproduction_summary.png`` and
``reproduction_parity.png``.

Usage::

    python tools/reproduce.py                             # 10 seeds x 25 epochs, 24 conditions
    python tools/reproduce.py --seeds 5 --epochs 20 --out /tmp/repro
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import platform
import statistics
import sys
from pathlib import Path
from typing import Iterator, Optional

import torch

from authors_loop import AuthorsRule, TorchDraws, authors_multipliers, split_outputs
from biofx import BioConfig, __version__, kernels, rng
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

#: How a condition's mechanisms are computed: by biofx (``transform``), by the authors' rules
#: written independently in ``tools/authors_loop.py`` with torch's generator
#: (``torch.normal``, ``torch.rand``), or by biofx with torch's generator in place of its
#: counter-based one (isolates the random numbers from the code).
BIOFX, AUTHORS, TORCH_DRAWS = "biofx", "authors' rule (torch RNG)", "biofx, torch.rand draws"

#: The authors' rule once more with another stream of torch's generator (seeded with the seed
#: plus :data:`OTHER_STREAM`): paired with the first, it shows how far two runs of the *same*
#: rule differ only by their random numbers, the yardstick for biofx − authors' rule.
AUTHORS_AGAIN, OTHER_STREAM = "authors' rule, other torch stream", 1_000_003

#: Adam's learning rate for the fuzzy-under-Adam comparison.
ADAM_LR = 1e-3


@dataclasses.dataclass(frozen=True)
class Condition:
    mechanism: str
    gamma: int
    config: Optional[BioConfig]  # None: the plain model, untransformed
    lr_factor: float = 1.0  # times the optimizer's learning rate
    implementation: str = BIOFX
    optimizer: str = "sgd"
    reference: Optional[str] = None  # label of the condition paired with it in the Adam table

    @property
    def label(self) -> str:
        extras = [x for x in (self.implementation, self.optimizer) if x not in (BIOFX, "sgd")]
        return ", ".join([self.mechanism, f"Γ={self.gamma}"] + extras)


def paper_config(mechanism: str, gamma: int) -> BioConfig:
    """:data:`PAPER_CONFIG` with only ``mechanism``'s parts on (``"plain"``: none) and Γ = ``gamma``."""
    fuzzy = "fuzzy" in mechanism
    return PAPER_CONFIG.replace(
        fuzzy_lr_distribution="uniform" if fuzzy else "baseline",
        automatic=("fuzzy",) if fuzzy else (),
        rejuvenate_every=1 if "rejuvenation" in mechanism else 0,
        weight_splitting_Gamma=gamma,
    )


def conditions() -> list[Condition]:
    """The grid: every mechanism with Γ = 0 and Γ = 2."""
    return [
        Condition(m, gamma, None if m == "plain" and gamma < 2 else paper_config(m, gamma))
        for gamma in GAMMAS
        for m in MECHANISMS
    ]


#: Plain training at twice the learning rate. With an identity activation, Γ = 2 makes each
#: pair of outputs share one summed weight vector whose gradient step is twice as large, so
#: this control tells a Γ = 2 speed-up from a mere step-size change.
CONTROL = Condition("plain (2× lr, control)", 0, None, lr_factor=2.0)


def parity_conditions() -> list[Condition]:
    """Every rejuvenation condition of the grid by the authors' rule (twice: two streams of
    torch's generator) and by biofx with torch's draws (each is paired with the authors' rule
    of its mechanism and Γ, as is biofx's)."""
    return [
        Condition(c.mechanism, c.gamma, c.config, implementation=implementation)
        for c in conditions()
        if "rejuvenation" in c.mechanism
        for implementation in (AUTHORS, AUTHORS_AGAIN, TORCH_DRAWS)
    ]


def adam_conditions() -> list[Condition]:
    """Plain Adam, and fuzzy learning rates under Adam on the update and on the gradient (Γ = 0)."""
    plain = Condition("plain", 0, None, optimizer="adam")
    fuzzy = paper_config("fuzzy", 0)
    return [plain] + [
        Condition(f"fuzzy (acts_on={mode!r})", 0, fuzzy.replace(acts_on=mode), optimizer="adam", reference=plain.label)
        for mode in ("update", "gradient")
    ]


@contextlib.contextmanager
def torch_draws(seed: int) -> Iterator[None]:
    """biofx's counter-based draws (:func:`biofx.rng.uniform`, :func:`biofx.rng.normal`)
    replaced by a torch generator seeded with ``seed``, as the authors' code draws.

    biofx's fused kernels are off meanwhile (a compiled kernel would keep the counter draws).
    """
    draws = TorchDraws(torch.Generator().manual_seed(seed))
    saved = rng.uniform, rng.normal, kernels.enabled()
    rng.uniform = lambda shape, seed, offset=0: draws.uniform(0, shape).to(seed.device)
    rng.normal = lambda shape, seed, offset=0: draws.normal(0, shape).to(seed.device)
    kernels.set_enabled(False)
    try:
        yield
    finally:
        rng.uniform, rng.normal = saved[:2]
        kernels.set_enabled(saved[2])


def prepare(condition: Condition, base: torch.nn.Module, seed: int, n_outputs: int) -> tuple:
    """``(model, before_step, context)`` for one run of ``condition`` from ``base``'s weights."""
    if condition.implementation in (AUTHORS, AUTHORS_AGAIN):
        model = copy.deepcopy(base)
        cfg = condition.config
        if cfg.weight_splitting_Gamma > 1:
            split_outputs(model, cfg.weight_splitting_Gamma, n_outputs)
        stream = OTHER_STREAM if condition.implementation == AUTHORS_AGAIN else 0
        generator = torch.Generator().manual_seed(seed + stream)
        fuzzy = "fuzzy" in condition.mechanism
        rule = AuthorsRule(
            model,
            dre=cfg.rejuvenation_parameter_dre,
            multipliers=authors_multipliers(model, cfg.fuzzy_learning_rate_factor_nu, generator) if fuzzy else None,
            draws=TorchDraws(generator) if cfg.rejuvenate_every else None,
        )
        return model, rule.before_step, contextlib.nullcontext()
    model = copy.deepcopy(base) if condition.config is None else bio_copy(base, condition.config, seed)
    context = torch_draws(seed) if condition.implementation == TORCH_DRAWS else contextlib.nullcontext()
    return model, None, context


def run_grid(args: argparse.Namespace, grid: list[Condition], progress) -> tuple[dict, dict]:
    """``(label -> [RunResult per seed], label -> [final weights per seed])``; per seed, every
    condition starts from the same weights and sees the same batches."""
    data = load_digits_split()
    n_outputs = int(data.y_train.max()) + 1
    runs: dict = {c.label: [] for c in grid}
    weights: dict = {c.label: [] for c in grid}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        base = build_model(args.model)
        for condition in grid:
            if progress is not None:
                progress.set_description(f"seed {seed} {condition.label}")
            model, before_step, context = prepare(condition, base, seed, n_outputs)
            on_epoch = (lambda epoch, acc: progress.update()) if progress is not None else None
            lr = (args.adam_lr if condition.optimizer == "adam" else args.lr) * condition.lr_factor
            with context:
                run = train(
                    model,
                    data,
                    epochs=args.epochs,
                    lr=lr,
                    batch_size=args.batch_size,
                    seed=seed,
                    optimizer=condition.optimizer,
                    before_step=before_step,
                    on_epoch=on_epoch,
                )
            runs[condition.label].append(run)
            weights[condition.label].append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return runs, weights


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


def _lead(c: Optional[Condition], implementation: bool) -> list:
    """A row's leading cells (the header's for ``c = None``)."""
    cells = ["mechanism", "Γ", "implementation"] if c is None else [c.mechanism, str(c.gamma), c.implementation]
    return cells if implementation else cells[:2]


def table_rows(grid: list[Condition], summaries: dict, implementation: bool = False) -> tuple[list, list]:
    header = _lead(None, implementation)
    header += [f"epochs to {round(t * 100)} %" for t in THRESHOLDS]
    header += ["final accuracy (%)", "best accuracy (%)", "median wall time / run (s)"]
    rows = []
    for c in grid:
        s = summaries[c.label]
        row = _lead(c, implementation)
        row += [_cell(s[f"epochs_to_{round(t * 100)}"], seeds=s["seeds"]) for t in THRESHOLDS]
        row += [_cell(s["final_accuracy"], 100), _cell(s["best_accuracy"], 100), f"{s['wall_time_s']['median']:.1f}"]
        rows.append(row)
    return header, rows


def paired_rows(
    conditions: list[Condition], summaries: dict, reference: str, implementation: bool = False
) -> tuple[list, list]:
    """Paired differences to ``reference``; with ``reference="reference"`` (the Adam table) also
    the relative distance of the final weights to the reference's."""
    header = _lead(None, implementation)
    header += [f"Δ epochs to {round(t * 100)} %" for t in THRESHOLDS]
    header.append("Δ final accuracy (points)")
    distance = reference == "reference"
    if distance:
        header.append("‖w − w_ref‖ / ‖w_ref‖ at the end (%)")
    rows = []
    for c in conditions:
        d = summaries[c.label][f"minus_{reference}"]
        row = _lead(c, implementation)
        seeds = summaries[c.label]["seeds"]
        row += [_cell(d[f"epochs_to_{round(t * 100)}"], seeds=seeds, empty="—") for t in THRESHOLDS]
        row.append(_cell(d["final_accuracy"], 100))
        if distance:
            row.append(_cell(summaries[c.label]["weight_distance"], 100, digits=2))
        rows.append(row)
    return header, rows


def references_of(c: Condition, runs: dict, grid: list[Condition]) -> dict:
    """The runs ``c`` is paired with: plain (Γ = 0) and the control; the authors' rule of its
    mechanism and Γ (SGD, not the authors' rule itself); its ``reference`` (Adam)."""
    references = {"plain": runs[grid[0].label], "control": runs[CONTROL.label]}
    authors = Condition(c.mechanism, c.gamma, None, implementation=AUTHORS).label
    if c.implementation != AUTHORS and c.optimizer == "sgd" and authors in runs:
        references["authors"] = runs[authors]
    if c.reference is not None:
        references["reference"] = runs[c.reference]
    return references


def weight_distance(weights: list, reference: list) -> dict:
    """Interval over seeds of ``‖w − w_ref‖ / ‖w_ref‖`` (flat final parameter vectors)."""
    return interval([float((w - r).norm() / r.norm()) for w, r in zip(weights, reference)])


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


def plot_parity(adam: list[Condition], summaries: dict, path: Path, title: str) -> None:
    """Final accuracy per rejuvenation condition by implementation, and under Adam per fuzzy mode."""
    figure, (left, right) = new_figure(title, columns=2)
    groups = [c for c in conditions() if "rejuvenation" in c.mechanism]
    implementations = (AUTHORS, AUTHORS_AGAIN, BIOFX, TORCH_DRAWS)
    width = 0.8 / len(implementations)
    shown = []
    for i, implementation in enumerate(implementations):
        stats = [
            summaries[Condition(g.mechanism, g.gamma, None, implementation=implementation).label]["final_accuracy"]
            for g in groups
        ]
        xs = [k + (i - (len(implementations) - 1) / 2) * width for k in range(len(groups))]
        means, errors = [s["mean"] * 100 for s in stats], [s["ci95"] * 100 for s in stats]
        left.bar(xs, means, width, yerr=errors, capsize=3, label=implementation)
        shown += stats
    ticks = [g.mechanism.replace("+", "+\n") + f"\nΓ = {g.gamma}" for g in groups]
    left.set_xticks(range(len(groups)), ticks, fontsize=8)
    left.set_title("rejuvenation (SGD): final accuracy by implementation", fontsize=10)
    stats = [summaries[c.label]["final_accuracy"] for c in adam]
    means, errors = [s["mean"] * 100 for s in stats], [s["ci95"] * 100 for s in stats]
    right.bar(range(len(adam)), means, 0.6, yerr=errors, capsize=3)
    right.set_xticks(range(len(adam)), [c.mechanism.replace(" (", "\n(") for c in adam], fontsize=8)
    right.set_title("fuzzy learning rates under Adam (Γ = 0)", fontsize=10)
    low = min(s["mean"] - s["ci95"] for s in shown + stats) * 100
    for ax in (left, right):
        ax.set_ylabel("final accuracy (%)")
        ax.set_ylim(max(0.0, math.floor(low) - 1), 100)
        ax.grid(axis="y", alpha=0.3)
    left.legend(fontsize=8, loc="lower right")
    figure.savefig(path, dpi=120)


# -- command line ----------------------------------------------------------------------------
def parse_args(argv: Optional[list]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs per run (%(default)s)")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (%(default)s; at least 2 for intervals)")
    parser.add_argument("--model", choices=MODELS, default="mlp", help="model (%(default)s)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="SGD learning rate (%(default)s)")
    parser.add_argument("--adam-lr", type=float, default=ADAM_LR, help="Adam learning rate (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="batch size (%(default)s)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "_static")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (confidence intervals need two runs)")
    for name in ("lr", "adam_lr"):
        if not (getattr(args, name) > 0 and math.isfinite(getattr(args, name))):
            parser.error(f"--{name.replace('_', '-')} must be a positive number")
    return args


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    grid = conditions()
    parity = parity_conditions()
    adam = adam_conditions()
    runs_of = grid + [CONTROL] + parity + adam
    try:
        tqdm = None if args.no_progress else require("tqdm", "tqdm").tqdm
        progress = tqdm(total=args.seeds * len(runs_of) * args.epochs, file=sys.stderr, unit="epoch") if tqdm else None
        with single_thread():
            runs, weights = run_grid(args, runs_of, progress)
        if progress is not None:
            progress.close()
        summaries = {}
        for c in runs_of:
            summaries[c.label] = summarize(runs[c.label], references_of(c, runs, grid))
            if c.reference is not None:
                summaries[c.label]["weight_distance"] = weight_distance(weights[c.label], weights[c.reference])
        out = args.out
        out.mkdir(parents=True, exist_ok=True)
        what = f"{args.model.upper()} on digits, {args.seeds} seeds, {args.epochs} epochs, SGD lr={args.lr}"
        plot_grid_curves(grid, runs, out / "reproduction_curves.png", f"{what}: mean and 95 % CI")
        plot_summary(grid, summaries, out / "reproduction_summary.png", f"{what}: mean and 95 % CI")
        adam_title = f"{what}; Adam lr={args.adam_lr}: mean and 95 % CI"
        plot_parity(adam, summaries, out / "reproduction_parity.png", adam_title)
    except MissingDependency as err:
        print(f"reproduce: error: {err}", file=sys.stderr)
        return 2
    biofx_rejuvenation = [c for c in grid if "rejuvenation" in c.mechanism]
    by_mechanism = sorted(parity + biofx_rejuvenation, key=lambda c: (c.gamma, MECHANISMS.index(c.mechanism)))
    adam_what = f"Adam lr={args.adam_lr}"
    tables = [
        (f"Mean ± 95 % CI over {args.seeds} seeds", *table_rows(grid + [CONTROL], summaries)),
        (
            "Paired difference to plain (Γ = 0) on the same seed: mean ± 95 % CI",
            *paired_rows(grid[1:] + [CONTROL], summaries, "plain"),
        ),
        (
            "Γ = 2 against the plain 2× lr control, paired: mean ± 95 % CI",
            *paired_rows([c for c in grid if c.gamma == 2], summaries, "control"),
        ),
        (
            f"Rejuvenation: the authors' rule and biofx, mean ± 95 % CI over {args.seeds} seeds",
            *table_rows(by_mechanism, summaries, implementation=True),
        ),
        (
            "Paired difference to the authors' rule (same seed, weights and batches): mean ± 95 % CI",
            *paired_rows([c for c in by_mechanism if c.implementation != AUTHORS], summaries, "authors", True),
        ),
        (f"Fuzzy learning rates under {adam_what}: mean ± 95 % CI over {args.seeds} seeds",
         *table_rows(adam, summaries)),
        (f"Paired difference to plain {adam_what}: mean ± 95 % CI", *paired_rows(adam[1:], summaries, "reference")),
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
            "adam_lr": args.adam_lr,
            "biofx": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "torch_threads": 1,
        },
        "conditions": {
            c.label: {
                "implementation": c.implementation,
                "optimizer": c.optimizer,
                "lr": (args.adam_lr if c.optimizer == "adam" else args.lr) * c.lr_factor,
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
