"""Does a Dale network learn as well as a plain one? Plain against Dale on scikit-learn's digits.

For every case (MLP and CNN of :func:`biofx.demo.build_model`, SGD and Adam) and seed, one
model is built and trained from the same initial weights on the same batches: plain, and
once per Dale mode (``--modes``, default "dann" and "column") transformed with only Dale's
principle on (no fuzzy rates, no other mechanism). The table gives the final validation accuracy, mean ±
std over seeds, and the gap Dale − plain (mean ± std of the paired differences).

    python tools/dale_check.py                       # defaults: 3 seeds, a few minutes on 1 thread
    python tools/dale_check.py --seeds 5 --epochs 20 --cases cnn-sgd,cnn-adam --modes dann
    python tools/dale_check.py --cases cnn-sgd --lr 0.1
    python tools/dale_check.py --seeds 5 --modes dann --ablation   # DANN without its headroom / correction

``--ablation`` adds DANN variants: without the initialization's headroom (``HEADROOM = 1``, the
paper's exponential draw), without the corrected interneuron updates, and without both.

Needs scikit-learn (``pip install "biofx[demo]"``). Runs on one CPU thread.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import statistics
import sys
import time

import torch
import torch.nn as nn

import biofx
from biofx.demo import Digits, build_model, load_digits_split
from biofx.mechanisms import dale
from biofx.mechanisms.dale import MODES


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    optimizer: str
    lr: float
    epochs: int


CASES = {
    "mlp-sgd": Case("mlp", "sgd", 0.03, 10),
    "mlp-adam": Case("mlp", "adam", 1e-3, 10),
    "cnn-sgd": Case("cnn", "sgd", 0.03, 10),
    "cnn-adam": Case("cnn", "adam", 1e-3, 5),
}
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
BATCH_SIZE = 32


def train(model: nn.Module, data: Digits, case: Case, epochs: int, seed: int) -> float:
    """Train with cross-entropy; the batch order depends on ``seed`` only. Returns the final
    validation accuracy."""
    optimizer = OPTIMIZERS[case.optimizer](model.parameters(), lr=case.lr)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(data.x_train), generator=order).split(BATCH_SIZE):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(data.x_val).argmax(1) == data.y_val).float().mean().item()


#: DANN variants of --ablation: (headroom, corrected interneuron updates)
ABLATIONS = {"no headroom": (1, True), "uncorrected": (dale.HEADROOM, False), "neither": (1, False)}


@contextlib.contextmanager
def ablated(headroom: int, corrected: bool):
    """DANN with another initialization headroom and/or without the corrected interneuron updates."""
    saved = dale.HEADROOM, dale.interneuron_update_scales
    dale.HEADROOM = headroom
    if not corrected:
        dale.interneuron_update_scales = lambda num_excitatory, num_inputs: (1.0, 1.0)
    try:
        yield
    finally:
        dale.HEADROOM, dale.interneuron_update_scales = saved


def dale_model(model: nn.Module, mode: str, seed: int) -> nn.Module:
    """A deep copy of ``model`` with only Dale's principle (``dale_mode=mode``) on."""
    return biofx.transform(
        copy.deepcopy(model),
        apply_dales_principle=True,
        dale_mode=mode,
        fuzzy_lr_distribution="baseline",
        automatic=(),
        seed=seed,
    )


def run_case(case: Case, data: Digits, modes: list, ablations: list, seeds: int, epochs: int) -> dict:
    """Final accuracies per variant (``"plain"``, each mode, each DANN ablation), one per seed, paired."""
    results = {name: [] for name in ["plain", *modes, *ablations]}
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = build_model(case.model)
        results["plain"].append(train(copy.deepcopy(model), data, case, epochs, seed))
        for mode in modes:
            results[mode].append(train(dale_model(model, mode, seed), data, case, epochs, seed))
        for name in ablations:
            with ablated(*ABLATIONS[name]):
                results[name].append(train(dale_model(model, "dann", seed), data, case, epochs, seed))
    return results


def mean_std(values: list, signed: bool = False) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{'+' if signed else ''}.3f} ± {spread:.3f}"


def table(rows: list) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="paired seeds per case (default 3)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every case (default: per case)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate for every case (default: per case)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--modes", default="dann,column", help="comma-separated Dale modes (default dann,column)")
    parser.add_argument("--ablation", action="store_true", help="add DANN without headroom / correction / both")
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    modes = args.modes.split(",")
    for name in cases:
        if name not in CASES:
            parser.error(f"unknown case {name!r}; choose from {', '.join(CASES)}")
    for mode in modes:
        if mode not in MODES:
            parser.error(f"unknown Dale mode {mode!r}; choose from {', '.join(MODES)}")
    if args.seeds < 1 or (args.epochs is not None and args.epochs < 1):
        parser.error("--seeds and --epochs must be at least 1")
    if args.lr is not None and args.lr <= 0:
        parser.error("--lr must be positive")
    torch.set_num_threads(1)
    data = load_digits_split()
    ablations = list(ABLATIONS) if args.ablation else []
    variants = [f"dale {m}" for m in modes] + [f"dann {a}" for a in ablations]
    header = ["case", "lr", "epochs", "plain"] + variants + [f"gap {v}" for v in variants]
    rows = [header]
    start = time.perf_counter()
    for name in cases:
        case = CASES[name]
        if args.lr is not None:
            case = dataclasses.replace(case, lr=args.lr)
        epochs = args.epochs or case.epochs
        results = run_case(case, data, modes, ablations, args.seeds, epochs)
        names = modes + ablations
        gaps = [[d - p for d, p in zip(results[v], results["plain"])] for v in names]
        rows.append(
            [name, f"{case.lr:g}", str(epochs), mean_std(results["plain"])]
            + [mean_std(results[v]) for v in names]
            + [mean_std(gap, signed=True) for gap in gaps]
        )
        print(f"{name} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        print(table(rows[:1] + rows[-1:]), flush=True)
    print()
    print(table(rows))
    print(f"{args.seeds} seed(s), {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
