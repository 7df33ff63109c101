"""Training-step benchmark: plain PyTorch against biofx (and the reference library) in one process.

A *step* is what a training loop does per batch: ``zero_grad``, forward, cross-entropy loss,
backward, the bio mechanisms, ``SGD.step`` (``Adam.step`` for the ``_adam`` variants: with
plain SGD, whose step is ``−lr·g``, biofx's update mode scales the gradient before the step;
any other optimizer takes the general path, which keeps each weight and rescales its update
after the step). Every variant trains a copy of the same model
(same initial weights) on the same fixed batch:

=============================  ============================================================
``plain``                      the model as written
``biofx_explicit``             ``biofx.transform(model, automatic=())``; after backward
                               ``volume_dependent_lr(); fuzzy_learning_rates(); crystallize()``
``biofx_automatic``            ``automatic=("fuzzy", "volume", "crystallize")``; loop unchanged
``biofx_default``              ``BioConfig``'s default ``automatic`` (fuzzy rates only); loop
                               unchanged: the cost of the rewrite itself
``plain_adam``                 ``plain`` trained with Adam instead of SGD
``biofx_default_adam``         ``biofx_default`` with Adam, against ``plain_adam``
``biofx_automatic_adam``       ``biofx_automatic`` with Adam, against ``plain_adam``
``biofx_default_counter``      ``biofx_default`` with ``fuzzy_lr_storage="counter"``: f
                               recomputed at each step, 1 byte of state per weight
``biofx_automatic_counter``    ``biofx_automatic`` with ``fuzzy_lr_storage="counter"``
``plain_compiled``             ``torch.compile(plain, fullgraph=True)``
``biofx_automatic_compiled``   ``torch.compile(biofx_automatic, fullgraph=True)``
``reference``                  ``bio_transformations.BioConverter`` (0.0.5), calling the same
                               three methods as ``biofx_explicit`` (when it is importable; not
                               for ``gpt2``, whose ``Conv1D`` layers it does not convert)
=============================  ============================================================

Models (``--bench``): ``mlp`` and ``cnn`` by default, and ``gpt2``, a small GPT-2 from Hugging
Face transformers with 17 bio layers, where the per-layer costs of a step show.

Timing: each variant is warmed up (``--warmup`` steps; the first of them is timed on its own and
reported as ``first_step_s``: for the compiled variants that is the compile time, for the eager
ones the first call's cost, biofx's fused kernels included). Before the first variant, a tiny
model is compiled once (``meta.compiler_warmup_s``), so that the one-off setup of a process's
first ``torch.compile`` is not charged to whichever variant compiles first. Inductor's on-disk
cache makes a compile that an earlier run already did much cheaper; ``first_step_cache`` counts
the first step's cache hits and misses, and ``--cold-compile`` disables the caches so that
``first_step_s`` is a full compile in every run. The timed steps then run in
``--rounds`` rounds; in every round each variant takes its turn (``--steps / --rounds`` steps),
and the order of the turns rotates by one variant from round to round (:func:`round_order`), so
that no variant always runs right after the same neighbour and a change in the machine's load
hits every variant, its baseline included, within the same round. Each step is timed on its own
(``time.perf_counter``; on CUDA with CUDA events, synchronized once before and once after a
turn). Every round yields one median per variant (``round_ms``); a variant's ``ratio`` is the
median over the rounds of its round median divided by its baseline's round median in that same
round (eager variants by ``plain`` or ``plain_adam``, the compiled bio variant by
``plain_compiled``), and ``ratio_lo``/``ratio_hi`` are the smallest and largest of those
per-round ratios. ``median_ms``,
``min_ms`` and ``max_ms`` are over all timed steps.

Fused kernels: biofx compiles its per-weight mechanisms into fused kernels once they are hot
(:mod:`biofx.kernels`, after 200 calls by default). The benchmark measures the steady state of a
long run, so it compiles them from the first call (during warmup); ``--unfused`` measures the
op-by-op versions instead (as ``BIOFX_FUSED=0`` does).

Memory: ``step_peak_bytes`` is the most memory one extra step holds at once above what was
allocated before it, the gradients having been set to ``None`` first (so it counts activations,
gradients and bio temporaries). On CUDA it is ``torch.cuda.max_memory_allocated()`` minus the
memory allocated before the step; on the CPU the step runs under ``torch.profiler`` with
``profile_memory=True`` and the peak is the maximum of the running sum of the ``[memory]``
events' sizes (allocations positive, frees negative) in time order.
``bio_state_bytes`` sums ``layer.state_bytes()`` over the bio layers.

Threads: ``--threads`` defaults to 1 on a machine with at most two cores (where a second thread
mostly competes with everything else running) and to torch's default otherwise; the report's
``meta.threads`` is the number used.

Output: each bench's table is printed as soon as the bench finishes; progress (warmup, each
round's ratios) goes to stderr.

Usage::

    python tools/bench.py                       # CPU, both benches, JSON to bench-results/
    python tools/bench.py --device cuda --steps 200
    python tools/bench.py --bench mlp --no-compile --out /tmp/mlp.json
    python tools/bench.py --bench mlp --cold-compile  # compile times without Inductor's caches
    python tools/bench.py --bench gpt2 --steps 100 --rounds 10 --no-compile  # a real transformer
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

import biofx
from biofx import kernels

BENCHES = ("mlp", "cnn")
AUTOMATIC = ("fuzzy", "volume", "crystallize")
MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated() during one step minus the memory allocated before it",
    "cpu": "peak of the running sum of torch.profiler's [memory] events (profile_memory=True) during one step",
}

try:  # the reference library is optional: its variant is skipped when it is missing
    import bio_transformations
except ImportError:  # pragma: no cover - depends on the environment
    bio_transformations = None


# -- models -------------------------------------------------------------------------------
def mlp(small: bool) -> tuple[nn.Module, tuple, int, dict]:
    """MLP 784-512-512-10, batch 128 (small: 64-32-32-10, batch 8)."""
    sizes, batch = ((64, 32, 32, 10), 8) if small else ((784, 512, 512, 10), 128)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers), (batch, sizes[0]), sizes[-1], {"sizes": list(sizes), "batch": batch}


def cnn(small: bool) -> tuple[nn.Module, tuple, int, dict]:
    """conv3x3(32)-pool-conv3x3(64)-pool-fc128-fc10 on 32x32x3, batch 64 (small: 4/8/16 on 8x8, batch 4)."""
    (c1, c2, hidden, side), batch = ((4, 8, 16, 8), 4) if small else ((32, 64, 128, 32), 64)
    model = nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * (side // 4) ** 2, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )
    config = {"channels": [c1, c2], "hidden": hidden, "input": [3, side, side], "batch": batch}
    return model, (batch, 3, side, side), 10, config


class NextTokenLogits(nn.Module):
    """A Hugging Face causal LM as ``token ids -> logits``, flattened to (tokens, vocabulary)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids).logits.flatten(0, 1)


def gpt2(small: bool) -> tuple[nn.Module, tuple, int, dict]:
    """GPT-2 from Hugging Face transformers (random weights, lm_head tied to the token embedding,
    dropout on): 4 blocks of width 128, 4 heads, vocabulary 1,000, 8 sequences of 64 tokens
    (small: 1 block of width 16, 2 heads, vocabulary 50, 2 sequences of 8). Its 17 bio layers
    (4 per block and lm_head) measure the per-layer costs that three layers hide."""
    import transformers  # checked by parse_args
    (layers, width, heads, vocab, seq), batch = ((1, 16, 2, 50, 8), 2) if small else ((4, 128, 4, 1000, 64), 8)
    config = transformers.GPT2Config(
        n_layer=layers, n_embd=width, n_head=heads, vocab_size=vocab, n_positions=seq,
        bos_token_id=vocab - 1, eos_token_id=vocab - 1,
    )  # fmt: skip
    model = NextTokenLogits(transformers.GPT2LMHeadModel(config))
    described = {"blocks": layers, "width": width, "heads": heads, "vocabulary": vocab, "batch": batch, "tokens": seq}
    return model, (batch, seq), vocab, described


MODELS: dict[str, Callable[[bool], tuple]] = {"mlp": mlp, "cnn": cnn, "gpt2": gpt2}
#: models whose input is token ids (``input_shape`` = batch, tokens); their targets are the next tokens
TOKEN_MODELS = ("gpt2",)
#: models the reference library converts whole. It converts ``nn.Linear`` and ``nn.Conv2d``: of
#: GPT-2 it would convert lm_head alone (the blocks' layers are transformers' ``Conv1D``)
REFERENCE_MODELS = ("mlp", "cnn")


# -- variants -----------------------------------------------------------------------------
@dataclass
class Variant:
    """One way of training the model: its step function and what it is compared with."""

    name: str
    step: Callable[[], None]
    baseline: Optional[str]  # the variant whose median this one is divided by
    model: nn.Module
    optional: bool = False  # a failure drops the variant (reported) instead of stopping the run
    times: list = field(default_factory=list)  # seconds per timed step, all rounds
    round_ms: list = field(default_factory=list)  # the median step of each round, in ms
    first_step_s: float = 0.0  # the first warmup step: compilation for compiled variants
    first_step_cache: dict = field(default_factory=dict)  # Inductor cache hits/misses in the first step
    warmup_s: float = 0.0  # all warmup steps, the first included


OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.01),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
}


def _step_fn(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, after_backward=None, optimizer: str = "sgd"
) -> Callable[[], None]:
    """One training step: zero_grad, forward, loss, backward, ``after_backward()``, the optimizer's step."""
    optimizer = OPTIMIZERS[optimizer](model.parameters())

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()

    return step


def _explicit_mechanisms(model) -> Callable[[], None]:
    """The reference library's explicit calls after backward (biofx and the reference alike)."""

    def apply() -> None:
        model.volume_dependent_lr()
        model.fuzzy_learning_rates()
        model.crystallize()

    return apply


def build_variants(name: str, small: bool, device: torch.device, compile_: bool) -> tuple[list[Variant], dict]:
    """All variants of one bench, each on its own copy of the model with identical weights."""
    factory = MODELS[name]
    _, input_shape, classes, config = factory(small)
    generator = torch.Generator().manual_seed(0)
    if name in TOKEN_MODELS:
        x = torch.randint(0, classes, input_shape, generator=generator).to(device)
        y = x.roll(-1, dims=1).flatten()
    else:
        x = torch.randn(input_shape, generator=generator).to(device)
        y = torch.randint(0, classes, (input_shape[0],), generator=generator).to(device)

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return factory(small)[0].to(device)

    def bio(automatic: tuple, **options) -> nn.Module:
        return biofx.transform(fresh(), automatic=automatic, seed=0, **options)

    variants = []

    def add(
        vname: str, model: nn.Module, baseline: Optional[str], after_backward=None, trained=None, optimizer="sgd", **kw
    ) -> None:
        step = _step_fn(trained if trained is not None else model, x, y, after_backward, optimizer)
        variants.append(Variant(vname, step, baseline, model, **kw))

    add("plain", fresh(), None)
    explicit = bio(())
    add("biofx_explicit", explicit, "plain", _explicit_mechanisms(explicit))
    add("biofx_automatic", bio(AUTOMATIC), "plain")
    add("biofx_default", bio(biofx.BioConfig().automatic), "plain")
    add("plain_adam", fresh(), None, optimizer="adam")
    add("biofx_default_adam", bio(biofx.BioConfig().automatic), "plain_adam", optimizer="adam")
    add("biofx_automatic_adam", bio(AUTOMATIC), "plain_adam", optimizer="adam")
    add("biofx_default_counter", bio(biofx.BioConfig().automatic, fuzzy_lr_storage="counter"), "plain")
    add("biofx_automatic_counter", bio(AUTOMATIC, fuzzy_lr_storage="counter"), "plain")
    if compile_:
        plain = fresh()
        add("plain_compiled", plain, None, trained=torch.compile(plain, fullgraph=True))
        automatic = bio(AUTOMATIC)
        add("biofx_automatic_compiled", automatic, "plain_compiled", trained=torch.compile(automatic, fullgraph=True))
    if bio_transformations is not None and name in REFERENCE_MODELS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = bio_transformations.BioConverter()(fresh())
        add("reference", reference, "plain", _explicit_mechanisms(reference), optional=True)
    bio_model = variants[1].model
    weights = sum(layer.weight.numel() for layer in bio_model.bio_layers())
    state = bio_model.bio_state_bytes()
    info = {
        "model": config,
        "parameters": sum(p.numel() for p in variants[0].model.parameters()),
        "bio_weights": weights,
        "bio_state_bytes": state,
        "bio_state_bytes_per_weight": state / weights,
    }
    return variants, info


# -- timing -------------------------------------------------------------------------------
def _timed_steps(step: Callable[[], None], count: int, device: torch.device) -> list[float]:
    """Seconds per step for ``count`` steps (CUDA: events, one sync before and one after)."""
    if device.type != "cuda":
        times = []
        for _ in range(count):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return times
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(count)]
    torch.cuda.synchronize(device)
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1000.0 for start, end in events]


def round_order(names: list, round_index: int) -> list:
    """The order of the variants' turns in round ``round_index``: ``names`` rotated left by it."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_peak_bytes(variant: Variant, device: torch.device) -> int:
    """The most memory one step holds at once above what was allocated before it.

    The gradients are set to ``None`` first, so the peak counts the new gradients as well as the
    activations and temporaries. CUDA: the allocator's peak counter. CPU: ``torch.profiler``'s
    ``[memory]`` events (one per allocation, positive, and per free, negative) in time order; the
    peak is the largest running sum (0 when the step never rises above its starting point).
    """
    for param in variant.model.parameters():
        param.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        variant.step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        variant.step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def _inductor_cache_counts() -> dict:
    """Inductor's FX-graph cache lookups so far in this process (hits: loaded, misses: compiled)."""
    from torch._dynamo.utils import counters

    return {"hits": counters["inductor"]["fxgraph_cache_hit"], "misses": counters["inductor"]["fxgraph_cache_miss"]}


def _warm_up(variant: Variant, steps: int, device: torch.device) -> None:
    """``steps`` untimed steps; the first one's wall time is kept as ``first_step_s``, and the
    Inductor cache lookups it made as ``first_step_cache`` (a hit loads a kernel compiled by an
    earlier run from the on-disk cache, which makes the first step far cheaper)."""
    before = _inductor_cache_counts()
    start = time.perf_counter()
    variant.step()
    _sync(device)
    variant.first_step_s = time.perf_counter() - start
    after = _inductor_cache_counts()
    variant.first_step_cache = {key: after[key] - before[key] for key in after}
    for _ in range(steps - 1):
        variant.step()
    _sync(device)
    variant.warmup_s = time.perf_counter() - start


def warm_up_compiler(device: torch.device) -> float:
    """Compile one tiny training step, so that the first variant to compile is not charged for
    what any first ``torch.compile`` of a process pays once (imports, Dynamo and Inductor setup).
    Returns the seconds it took."""
    start = time.perf_counter()
    torch.manual_seed(0)
    tiny = nn.Linear(3, 2).to(device)
    compiled = torch.compile(tiny, fullgraph=True)
    compiled(torch.randn(4, 3, device=device)).sum().backward()
    _sync(device)
    torch._dynamo.reset()  # forget the tiny model's code: nothing of it stays cached but the setup
    return time.perf_counter() - start


def _ratios(variant: Variant, by_name: dict) -> list:
    """Per round: the variant's round median divided by its baseline's round median."""
    base = by_name[variant.baseline].round_ms
    return [mine / theirs for mine, theirs in zip(variant.round_ms, base)]


def run_bench(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Warm up every variant, time them in rotating interleaved rounds, return the bench's results."""
    variants, info = build_variants(name, args.small, device, not args.no_compile)
    skipped = {}
    for variant in list(variants):
        try:
            _warm_up(variant, args.warmup, device)
        except Exception as err:  # only the reference library's variant may fail (e.g. on CUDA)
            if not variant.optional:
                raise
            skipped[variant.name] = f"{type(err).__name__}: {err}"
            variants.remove(variant)
            _progress(f"[{name}] skipped {variant.name}: {skipped[variant.name]}")
            continue
        _progress(f"[{name}] warmed up {variant.name}: first step {variant.first_step_s:.2f} s, "
                  f"all {args.warmup} in {variant.warmup_s:.2f} s")
    _progress(f"[{name}] timing {len(variants)} variants, {args.steps} steps each in {args.rounds} rounds")
    by_name = {variant.name: variant for variant in variants}
    names = list(by_name)
    orders = []
    per_round = [args.steps // args.rounds + (r < args.steps % args.rounds) for r in range(args.rounds)]
    for r, count in enumerate(per_round):
        orders.append(round_order(names, r))
        for vname in orders[-1]:
            times = _timed_steps(by_name[vname].step, count, device)
            by_name[vname].times += times
            by_name[vname].round_ms.append(statistics.median(times) * 1000.0)
        ratios = ", ".join(f"{v.name} {_ratios(v, by_name)[-1]:.2f}x" for v in variants if v.baseline)
        _progress(f"[{name}] round {r + 1}/{args.rounds}: {ratios}")
    results = {}
    for variant in variants:
        ms = [t * 1000.0 for t in variant.times]
        ratios = _ratios(variant, by_name) if variant.baseline else None
        results[variant.name] = {
            "median_ms": statistics.median(ms),
            "min_ms": min(ms),
            "max_ms": max(ms),
            "steps": len(ms),
            "round_ms": variant.round_ms,
            "baseline": variant.baseline,
            "ratio": statistics.median(ratios) if ratios else None,
            "ratio_lo": min(ratios) if ratios else None,
            "ratio_hi": max(ratios) if ratios else None,
            "first_step_s": variant.first_step_s,
            "first_step_cache": variant.first_step_cache,
            "warmup_s": variant.warmup_s,
            "step_peak_bytes": _step_peak_bytes(variant, device),
            "state_bytes_per_weight": _state_bytes_per_weight(variant.model),
            "params_finite": all(bool(torch.isfinite(p).all()) for p in variant.model.parameters()),
        }
        if args.profile:
            results[variant.name]["profile"] = profile_ops(variant.step, device, args.profile)
    return {**info, "variants": results, "round_order": orders, "skipped": skipped}


def _state_bytes_per_weight(model: nn.Module) -> Optional[float]:
    """biofx's bio state per bio weight (``None`` for a model biofx did not transform)."""
    if not hasattr(model, "bio_state_bytes"):
        return None
    return model.bio_state_bytes() / sum(layer.weight.numel() for layer in model.bio_layers())


def profile_ops(step: Callable[[], None], device: torch.device, top: int, steps: int = 5) -> list:
    """The ``top`` ops by self time over ``steps`` profiled steps, per step (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def self_us(event) -> float:  # device time on CUDA (``self_cuda_time_total`` before torch 2.4)
        if device.type != "cuda":
            return event.self_cpu_time_total
        return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)

    events = sorted(prof.key_averages(), key=self_us, reverse=True)[:top]
    return [
        {
            "op": e.key,
            "self_ms": self_us(e) / 1000.0 / steps,
            "self_cpu_ms": e.self_cpu_time_total / 1000.0 / steps,
            "calls": e.count / steps,
        }
        for e in events
    ]


# -- report -------------------------------------------------------------------------------
def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _reference_version() -> str:
    """The reference library's version: it defines no ``__version__``, so from its package metadata."""
    try:
        return importlib.metadata.version("pytorch_bio_transformations")
    except importlib.metadata.PackageNotFoundError:  # imported from a source tree
        return getattr(bio_transformations, "__version__", "unknown")


def _meta(args: argparse.Namespace, device: torch.device) -> dict:
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = _cpu_name()
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": device_name,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),  # the number used: --threads, or the default chosen in main()
        "torch": torch.__version__,
        "biofx": biofx.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the vector ISA torch's and Inductor's CPU code uses
        "reference": _reference_version() if bio_transformations else None,
        "python": platform.python_version(),
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "small": args.small,
        "compile": not args.no_compile,
        "fused_kernels": not args.unfused,
        "cold_compile": args.cold_compile,
        "compiler_warmup_s": None,  # set by main() when a variant compiles
        "memory_method": MEMORY_METHOD[device.type],
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_HEADER = (
    f"{'bench':<5} {'variant':<26} {'median ms':>10} {'min ms':>8} {'ratio':>7} {'range':>11}  {'vs':<15} "
    f"{'1st step':>9} {'step peak':>10} {'state':>7}"
)


def format_meta(meta: dict) -> str:
    """The line that opens the table: machine, settings."""
    machine = meta["device_name"]
    if meta["device"] == "cpu" and meta.get("cpu_capability"):
        machine += f", {meta['cpu_capability']}"
    return (
        f"device: {meta['device']} ({machine}), threads {meta['threads']}, torch {meta['torch']}, "
        f"{meta['steps']} timed steps ({meta['rounds']} rounds, rotating order) after {meta['warmup']} warmup\n"
        f"ratio: median over rounds of (round median / baseline's round median); range: min-max of those; "
        f"1st step: first warmup step (compile time when compiled); step peak: {meta['memory_method']}; "
        f"state: biofx's bio state in bytes per bio weight"
    )


def _cache(variant: dict) -> str:
    counts = variant.get("first_step_cache") or {"hits": 0, "misses": 0}
    return f"{counts['hits']}/{counts['misses']}"


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def format_bench(bench: str, result: dict, cold_compile: bool = False) -> str:
    """One bench's table: header, a row per variant, then its notes."""
    lines = [_HEADER, "-" * len(_HEADER)]
    variants = result["variants"]
    for name, v in variants.items():
        ratio = f"{v['ratio']:.2f}x" if v["ratio"] is not None else "-"
        spread = f"{v['ratio_lo']:.2f}-{v['ratio_hi']:.2f}" if v["ratio"] is not None else "-"
        peak = _size(v["step_peak_bytes"])
        state = f"{v['state_bytes_per_weight']:.2f} B" if v["state_bytes_per_weight"] is not None else "-"
        lines.append(
            f"{bench:<5} {name:<26} {v['median_ms']:>10.3f} {v['min_ms']:>8.3f} {ratio:>7} {spread:>11}  "
            f"{v['baseline'] or '':<15} {v['first_step_s']:>7.2f} s {peak:>10} {state:>7}"
        )
    if "biofx_automatic_compiled" in variants and "plain_compiled" in variants:
        bio, plain = variants["biofx_automatic_compiled"], variants["plain_compiled"]
        lines.append(
            f"compile (first step): biofx_automatic_compiled {bio['first_step_s']:.1f} s vs plain_compiled "
            f"{plain['first_step_s']:.1f} s = {bio['first_step_s'] / plain['first_step_s']:.1f} x "
            + ("(caches disabled: full compiles)" if cold_compile else
               f"(Inductor cache hits/misses: {_cache(bio)} vs {_cache(plain)}; a hit reuses an earlier run's "
               f"kernel, --cold-compile for full compiles)")
        )
    lines.append(
        f"bio state: {result['bio_state_bytes']} bytes for {result['bio_weights']} weights "
        f"({result['bio_state_bytes_per_weight']:.2f} bytes/weight)"
    )
    for name, reason in result["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    broken = [name for name, v in variants.items() if not v["params_finite"]]
    if broken:
        lines.append(f"WARNING: non-finite parameters after the run: {', '.join(broken)}")
    for name, v in variants.items():
        if "profile" in v:
            lines.append(f"  top ops of {name} (ms per step, self time):")
            lines += [f"    {op['self_ms']:8.3f}  {op['calls']:6.1f}x  {op['op']}" for op in v["profile"]]
    return "\n".join(lines)


def format_table(report: dict) -> str:
    """The whole report as plain text: what ``main`` prints, bench by bench, as it goes."""
    parts = [format_meta(report["meta"])]
    cold = report["meta"].get("cold_compile", False)
    parts += [format_bench(bench, result, cold) for bench, result in report["benches"].items()]
    return "\n\n".join(parts)


def default_threads() -> Optional[int]:
    """1 on a machine with at most two cores, else ``None`` (torch's default)."""
    cores = os.cpu_count()
    return 1 if cores is not None and cores <= 2 else None


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", default=",".join(BENCHES),
                        help="comma-separated, from mlp,cnn,gpt2 (default mlp,cnn; gpt2 needs transformers)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per variant (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per variant first (default 10)")
    parser.add_argument("--rounds", type=int, default=10,
                        help="interleaved timing rounds, turn order rotating (default 10)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: 1 with at most 2 cores, else torch's)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--cold-compile", action="store_true",
                        help="disable torch.compile's caches, so that 1st step is a full compile every run")
    parser.add_argument("--unfused", action="store_true", help="biofx's eager mechanisms op by op (BIOFX_FUSED=0)")
    parser.add_argument("--small", action="store_true", help="tiny models and batches (for tests)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also list each variant's top N ops")
    parser.add_argument("--out", default="bench-results/bench.json", help="JSON output path ('' for none)")
    args = parser.parse_args(argv)
    if args.threads is None:
        args.threads = default_threads()
    args.bench = [b.strip() for b in args.bench.split(",") if b.strip()]
    unknown = [b for b in args.bench if b not in MODELS]
    if unknown or not args.bench:
        parser.error(f"--bench: unknown bench {unknown[0] if unknown else '(none)'}; choose from {', '.join(MODELS)}")
    if "gpt2" in args.bench and importlib.util.find_spec("transformers") is None:
        parser.error("--bench gpt2 needs Hugging Face transformers: pip install transformers")
    for flag in ("steps", "rounds", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    if args.profile < 0:
        parser.error("--profile must be 0 (off) or a number of operations to list")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first step builds state and compiles)")
    if args.rounds > args.steps:
        parser.error("--rounds must not exceed --steps")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to torch")
    return args


def main(argv: Optional[list] = None) -> dict:
    """Run the benches, printing each table as its bench ends, write the JSON (unless ``--out ''``)."""
    args = parse_args(argv)
    previous_threads = torch.get_num_threads()  # restored afterwards: main() is also called from tests
    previous_kernels = (kernels.enabled(), kernels.after_calls())
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    kernels.set_enabled(not args.unfused, after_calls=0)  # steady state: compiled during warmup
    device = torch.device(args.device)
    report = {"meta": _meta(args, device), "benches": {}}
    print(format_meta(report["meta"]), flush=True)
    try:
        with torch.compiler.config.patch(force_disable_caches=args.cold_compile), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")  # --cold-compile: expected
            if not args.no_compile or not args.unfused:  # some variant compiles (torch.compile or fused kernels)
                report["meta"]["compiler_warmup_s"] = warm_up_compiler(device)
                _progress(f"warmed up the compiler in {report['meta']['compiler_warmup_s']:.1f} s")
            for name in args.bench:
                report["benches"][name] = run_bench(name, args, device)
                print("\n" + format_bench(name, report["benches"][name], args.cold_compile), flush=True)
    finally:
        kernels.set_enabled(*previous_kernels)
        torch.set_num_threads(previous_threads)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
