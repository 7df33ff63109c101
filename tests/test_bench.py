"""tools/bench.py: runs end to end on tiny models, writes a well-formed report; ratios come from the
per-round medians of the same run, the turn order rotates, CPU peak memory is measured."""

import copy
import importlib.metadata
import importlib.util
import json
import math
import os
import pathlib
import statistics
import sys
import types

import pytest
import torch

import biofx
from biofx import kernels

ROOT = pathlib.Path(__file__).resolve().parents[1]
EAGER = {
    "plain": None,
    "biofx_explicit": "plain",
    "biofx_automatic": "plain",
    "biofx_default": "plain",
    "plain_adam": None,
    "biofx_default_adam": "plain_adam",
    "biofx_automatic_adam": "plain_adam",
    "biofx_default_counter": "plain",
    "biofx_automatic_counter": "plain",
}
VARIANT_KEYS = {
    "median_ms", "min_ms", "max_ms", "steps", "round_ms", "baseline", "ratio", "ratio_lo", "ratio_hi",
    "first_step_s", "first_step_cache", "warmup_s", "step_peak_bytes", "state_bytes_per_weight", "params_finite",
}
META_KEYS = {
    "timestamp", "device", "device_name", "cpu_capability", "cpu_count", "threads", "torch", "biofx", "reference", "python",
    "steps", "warmup", "rounds", "small", "compile", "fused_kernels", "cold_compile",
    "compiler_warmup_s", "memory_method",
}
STEPS, ROUNDS = 6, 3


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("biofx_tools_bench", ROOT / "tools" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    """One tiny run (no torch.compile, biofx's kernels unfused: nothing compiles), read back from JSON."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    before = (kernels.enabled(), kernels.after_calls(), torch.get_num_threads())
    returned = bench.main(["--small", "--no-compile", "--unfused", "--steps", str(STEPS), "--warmup", "2",
                           "--rounds", str(ROUNDS), "--profile", "3", "--out", str(out)])
    # main() leaves biofx's kernel settings and torch's thread count as it found them
    assert (kernels.enabled(), kernels.after_calls(), torch.get_num_threads()) == before
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(returned))
    return written


def test_meta(report):
    meta = report["meta"]
    assert META_KEYS <= set(meta)
    assert meta["device"] == "cpu" and meta["compile"] is False and meta["small"] is True
    assert meta["fused_kernels"] is False and meta["cold_compile"] is False
    assert meta["compiler_warmup_s"] is None  # nothing compiles: no compiler warm-up
    assert (meta["steps"], meta["warmup"], meta["rounds"]) == (STEPS, 2, ROUNDS)
    assert meta["threads"] == (1 if os.cpu_count() <= 2 else torch.get_num_threads())  # the threads used
    assert "profiler" in meta["memory_method"]
    assert meta["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    reference = importlib.util.find_spec("bio_transformations") is not None
    assert meta["reference"] == (importlib.metadata.version("pytorch_bio_transformations") if reference else None)


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (4, None), (16, None)])
def test_threads_default_to_one_on_two_cores(bench, monkeypatch, cores, expected):
    monkeypatch.setattr(bench.os, "cpu_count", lambda: cores)
    assert bench.parse_args([]).threads == expected
    assert bench.parse_args(["--threads", "3"]).threads == 3


def test_round_order_rotates(bench):
    names = ["a", "b", "c"]
    assert [bench.round_order(names, r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert names == ["a", "b", "c"]  # not modified


def test_rounds_ran_in_rotating_order(report):
    for result in report["benches"].values():
        orders = result["round_order"]
        names = list(result["variants"])
        assert len(orders) == ROUNDS and all(sorted(order) == sorted(names) for order in orders)
        assert [order[0] for order in orders] == names[:ROUNDS]  # each round starts one variant later
        assert len({tuple(order) for order in orders}) == ROUNDS


def test_variants_and_ratios_come_from_the_same_run(report, bench):
    assert set(report["benches"]) == {"mlp", "cnn"}
    for result in report["benches"].values():
        variants = result["variants"]
        expected = dict(EAGER, **({"reference": "plain"} if bench.bio_transformations else {}))
        assert set(variants) == set(expected)  # no compiled variants with --no-compile
        assert result["skipped"] == {}
        for name, v in variants.items():
            assert VARIANT_KEYS | {"profile"} == set(v)
            assert v["steps"] == STEPS
            assert 0 < v["min_ms"] <= v["median_ms"] <= v["max_ms"]
            assert len(v["round_ms"]) == ROUNDS
            assert all(v["min_ms"] <= ms <= v["max_ms"] for ms in v["round_ms"])
            assert 0 < v["first_step_s"] <= v["warmup_s"]
            assert v["first_step_cache"] == {"hits": 0, "misses": 0}  # nothing compiled
            assert v["params_finite"] is True
            assert v["baseline"] == expected[name]
            if v["baseline"] is None:
                assert v["ratio"] is None and v["ratio_lo"] is None and v["ratio_hi"] is None
            else:
                base = variants[v["baseline"]]["round_ms"]
                ratios = [mine / theirs for mine, theirs in zip(v["round_ms"], base)]
                assert math.isclose(v["ratio"], statistics.median(ratios), rel_tol=1e-12)
                assert (v["ratio_lo"], v["ratio_hi"]) == (min(ratios), max(ratios))
            assert 1 <= len(v["profile"]) <= 3
            assert all(op["self_ms"] >= 0 and op["calls"] > 0 for op in v["profile"])


def test_cpu_step_peak_memory_is_measured_and_plausible(report, bench):
    """The plain step allocates at least its gradients (set to None before the measured step)."""
    for name, result in report["benches"].items():
        torch.manual_seed(0)
        model, input_shape, *_ = bench.MODELS[name](True)
        gradients = sum(p.numel() * p.element_size() for p in model.parameters())
        batch = math.prod(input_shape) * 4
        peak = result["variants"]["plain"]["step_peak_bytes"]
        assert gradients <= peak < 64 * (gradients + batch)
        for v in result["variants"].values():
            assert v["step_peak_bytes"] > 0


def test_cpu_step_peak_counts_what_the_step_holds(bench):
    """On a hand-made step the profiler's peak is what it allocates at most at once."""
    model = torch.nn.Linear(4, 4)
    big = 1 << 20

    def step():
        a = torch.empty(big, dtype=torch.uint8)
        b = torch.empty(big, dtype=torch.uint8)
        del a, b
        c = torch.empty(big // 2, dtype=torch.uint8)  # freed again: below the peak
        del c

    variant = bench.Variant("hand", step, None, model)
    assert bench._step_peak_bytes(variant, torch.device("cpu")) == 2 * big


def test_bio_state_bytes_match_the_transformed_model(report, bench):
    for name, result in report["benches"].items():
        torch.manual_seed(0)
        model, *_ = bench.MODELS[name](True)
        bio = biofx.transform(copy.deepcopy(model), automatic=(), seed=0)
        layers = bio.bio_layers()
        assert result["bio_state_bytes"] == sum(layer.state_bytes() for layer in layers)
        assert result["bio_weights"] == sum(layer.weight.numel() for layer in layers)
        assert result["bio_state_bytes_per_weight"] == result["bio_state_bytes"] / result["bio_weights"]
        assert result["parameters"] == sum(p.numel() for p in model.parameters())
        variants = result["variants"]
        assert variants["plain"]["state_bytes_per_weight"] is None
        assert variants["biofx_explicit"]["state_bytes_per_weight"] == result["bio_state_bytes_per_weight"]
        scalars = 32 * len(layers) / result["bio_weights"]  # the four 0-d int64 counters and key per layer
        assert variants["biofx_default"]["state_bytes_per_weight"] == pytest.approx(4 + scalars)
        assert variants["biofx_default_counter"]["state_bytes_per_weight"] == pytest.approx(1 + scalars)


def test_table_lists_every_variant(report, bench):
    table = bench.format_table(report)
    for bench_name, result in report["benches"].items():
        for name, v in result["variants"].items():
            assert any(line.startswith(f"{bench_name:<5} {name} ") for line in table.splitlines())
    assert "bytes/weight" in table
    assert "compile (first step)" not in table  # no compiled variants


def test_compile_line_compares_the_first_steps(report, bench):
    result = json.loads(json.dumps(report["benches"]["mlp"]))
    plain = dict(result["variants"]["plain"], first_step_s=2.0)
    result["variants"]["plain_compiled"] = plain
    result["variants"]["biofx_automatic_compiled"] = dict(
        plain, first_step_s=5.0, baseline="plain_compiled", first_step_cache={"hits": 1, "misses": 3})
    line = "compile (first step): biofx_automatic_compiled 5.0 s vs plain_compiled 2.0 s = 2.5 x"
    assert f"{line} (Inductor cache hits/misses: 1/3 vs 0/0;" in bench.format_bench("mlp", result)
    assert f"{line} (caches disabled: full compiles)" in bench.format_bench("mlp", result, cold_compile=True)


def test_cold_compile_disables_the_caches_for_the_run_only(bench, monkeypatch):
    seen = []
    real = bench.run_bench

    def spy(name, args, device):
        seen.append(torch.compiler.config.force_disable_caches)
        return real(name, args, device)

    monkeypatch.setattr(bench, "run_bench", spy)
    before = torch.compiler.config.force_disable_caches
    report = bench.main(["--small", "--no-compile", "--unfused", "--cold-compile", "--bench", "mlp", "--steps", "2",
                         "--warmup", "1", "--rounds", "1", "--out", ""])
    assert seen == [True] and report["meta"]["cold_compile"] is True
    assert torch.compiler.config.force_disable_caches == before


def test_each_table_is_printed_when_its_bench_ends(bench, monkeypatch, capsys):
    """The MLP table is on stdout before the CNN bench starts."""
    real = bench.run_bench
    seen = []

    def spy(name, args, device):
        seen.append((name, capsys.readouterr().out))
        return real(name, args, device)

    monkeypatch.setattr(bench, "run_bench", spy)
    bench.main(["--small", "--no-compile", "--unfused", "--steps", "2", "--warmup", "1", "--rounds", "2", "--out", ""])
    assert [name for name, _ in seen] == ["mlp", "cnn"]
    assert "mlp   plain " in seen[1][1] and "cnn   plain " not in seen[1][1]
    out, err = capsys.readouterr()
    assert "cnn   plain " in out
    assert "[cnn] round 2/2: biofx_explicit " in err  # progress: each round's ratios


def test_models_have_the_documented_shapes(bench):
    mlp, mlp_input, *_ = bench.mlp(False)
    assert [m.weight.shape[::-1] for m in mlp if hasattr(m, "weight")] == [(784, 512), (512, 512), (512, 10)]
    assert mlp_input == (128, 784)
    cnn, cnn_input, *_ = bench.cnn(False)
    assert cnn_input == (64, 3, 32, 32)
    assert cnn(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert [m.out_channels for m in cnn if isinstance(m, torch.nn.Conv2d)] == [32, 64]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bench", "rnn"], "unknown bench rnn"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--steps", "2", "--rounds", "3"], "--rounds must not exceed --steps"),
        (["--threads", "0"], "--threads must be at least 1"),
    ],
)
def test_bad_arguments(bench, capsys, argv, message):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_failing_reference_variant_is_skipped_and_reported(bench, monkeypatch):
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raise RuntimeError("reference fails here")

    monkeypatch.setattr(bench, "bio_transformations", types.SimpleNamespace(BioConverter=lambda: lambda model: Broken()))
    report = bench.main(["--small", "--no-compile", "--unfused", "--bench", "mlp", "--steps", "2", "--warmup", "1",
                         "--rounds", "1", "--out", ""])
    result = report["benches"]["mlp"]
    assert result["skipped"] == {"reference": "RuntimeError: reference fails here"}
    assert set(result["variants"]) == set(EAGER)


def test_gpt2_bench_trains_a_real_transformer(bench):
    """--bench gpt2: a Hugging Face GPT-2 on token ids, every eager variant; no reference variant
    (the reference converts nn.Linear and nn.Conv2d: of GPT-2, lm_head alone)."""
    pytest.importorskip("transformers")
    report = bench.main(["--small", "--no-compile", "--unfused", "--bench", "gpt2", "--steps", "2", "--warmup", "1",
                         "--rounds", "1", "--out", ""])
    result = report["benches"]["gpt2"]
    assert set(result["variants"]) == set(EAGER)
    assert all(v["params_finite"] for v in result["variants"].values())
    # one block's four Conv1D (16x48, 16x16, 16x64, 64x16) and lm_head (50x16, tied to the embedding)
    assert result["bio_weights"] == 768 + 256 + 1024 + 1024 + 800
    full, tokens, vocabulary, _ = bench.gpt2(False)
    assert tokens == (8, 64) and vocabulary == 1000
    assert len(biofx.transform(full, automatic=(), seed=0).bio_layers()) == 17


def test_layer_overhead_tool_runs_every_case(capsys):
    """tools/layer_overhead.py: every mechanism set with SGD and Adam, a value per round, a row each."""
    spec = importlib.util.spec_from_file_location("biofx_tools_layer_overhead", ROOT / "tools" / "layer_overhead.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    before = (kernels.enabled(), kernels.after_calls())
    results = tool.main(["--layers", "2", "--steps", "2", "--rounds", "2", "--unfused"])  # nothing compiles
    assert (kernels.enabled(), kernels.after_calls()) == before
    assert set(results) == {(label, opt) for label in tool.CASES for opt in tool.OPTIMIZERS}
    assert all(len(rounds) == 2 and all(math.isfinite(r) for r in rounds) for rounds in results.values())
    out = capsys.readouterr().out
    assert all(label in out for label in tool.CASES)
    with pytest.raises(SystemExit):
        tool.main(["--layers", "0"])
