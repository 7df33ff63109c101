"""The fixed cost per bio layer of biofx's optimizer-step hooks.

``optimizer.step()`` on a stack of ``--layers`` tiny ``nn.Linear(10, 10)`` (whose arithmetic
is negligible), biofx-transformed against plain, for each mechanism set and optimizer; the
difference divided by the number of layers is what every bio layer adds to a step whatever
its size. On a model with many layers (a transformer has four or more per block) this is what
the step's overhead is made of once the per-weight work is small beside the model's.

Every case runs in this process: its bio and plain steps alternate in ``--rounds`` rounds of
``--steps`` steps each, after a warmup that compiles biofx's fused kernels. Reported: the
median over the rounds of (bio round median − plain round median) / layers, with the range.

On CUDA (``--device cuda``) each step is followed by a synchronization, the same for bio and
plain, so the difference is what a bio layer adds to a step there: the host's work and the
kernel launches, which bound a small model's step on a GPU.

Usage::

    OMP_NUM_THREADS=1 python tools/layer_overhead.py
    python tools/layer_overhead.py --layers 40 --rounds 9
    python tools/layer_overhead.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn

import biofx
from biofx import kernels

CASES = {
    "nothing automatic": (),
    "fuzzy (the default)": ("fuzzy",),
    "fuzzy + volume + crystallize": ("fuzzy", "volume", "crystallize"),
}
WARMUP = 20  # untimed steps per case: state built, fused kernels compiled (or loaded from Inductor's cache)
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
}


def _stack(layers: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(10, 10) for _ in range(layers)]).to(device)


def _stepper(model: nn.Module, optimizer: str, device: torch.device) -> Callable[[], None]:
    """The optimizer's step alone, on gradients computed once (the step keeps ``model`` alive:
    biofx's hooks find the layers of live models only); on CUDA, synchronized after."""
    opt = OPTIMIZERS[optimizer](model.parameters())
    model(torch.randn(4, 10, device=device)).square().sum().backward()

    def step() -> None:
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step.model = model
    return step


def _round_median_us(step: Callable[[], None], steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def per_layer_us(
    automatic: tuple, optimizer: str, layers: int, steps: int, rounds: int, device: torch.device = torch.device("cpu")
) -> list:
    """(bio − plain) / layers, in µs, for each round."""
    bio = _stepper(biofx.transform(_stack(layers, device), automatic=automatic, seed=0), optimizer, device)
    plain = _stepper(_stack(layers, device), optimizer, device)
    for _ in range(WARMUP):
        bio()
        plain()
    rounds_us = [(_round_median_us(bio, steps) - _round_median_us(plain, steps)) / layers for _ in range(rounds)]
    taken = {layer.steps.value for layer in bio.model.bio_layers()}
    if taken != {WARMUP + steps * rounds}:  # every bio step went through biofx's hooks
        raise RuntimeError(f"biofx's step hooks did not act on every step: step counters {sorted(taken)}")
    return rounds_us


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=20, help="tiny Linear layers in the stack (default 20)")
    parser.add_argument("--steps", type=int, default=100, help="steps per round and variant (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--unfused", action="store_true", help="biofx's mechanisms op by op (as BIOFX_FUSED=0)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args(argv)
    for flag in ("layers", "steps", "rounds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to torch")
    device = torch.device(args.device)
    previous = (kernels.enabled(), kernels.after_calls())
    kernels.set_enabled(not args.unfused, after_calls=0)  # steady state: the kernels compile during warmup
    results = {}
    try:
        print(f"{'automatic':32s} {'optimizer':9s} {'µs per layer':>12s}  range")
        for label, automatic in CASES.items():
            for optimizer in OPTIMIZERS:
                rounds = per_layer_us(automatic, optimizer, args.layers, args.steps, args.rounds, device)
                results[(label, optimizer)] = rounds
                print(f"{label:32s} {optimizer:9s} {statistics.median(rounds):12.0f}  "
                      f"{min(rounds):.0f}-{max(rounds):.0f}", flush=True)
    finally:
        kernels.set_enabled(*previous)
    return results


if __name__ == "__main__":
    main()
