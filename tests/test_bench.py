"""tools/bench.py: runs end to end on tiny models, writes a well-formed report, ratios from the same run."""

import importlib.util
import json
import math
import pathlib
import sys
import types

import pytest
import torch

import biofx
from biofx import kernels

ROOT = pathlib.Path(__file__).resolve().parents[1]
EAGER = {"plain": None, "biofx_explicit": "plain", "biofx_automatic": "plain", "biofx_default": "plain"}
VARIANT_KEYS = {
    "median_ms", "min_ms", "max_ms", "steps", "warmup_s", "baseline", "ratio", "min_ratio",
    "step_peak_bytes", "params_finite",
}
META_KEYS = {
    "timestamp", "device", "device_name", "cpu_count", "threads", "torch", "biofx", "reference", "python",
    "steps", "warmup", "rounds", "small", "compile", "fused_kernels", "memory_note",
}


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
    before = (kernels.enabled(), kernels.after_calls())
    returned = bench.main(["--small", "--no-compile", "--unfused", "--steps", "5", "--warmup", "1", "--rounds", "2",
                           "--profile", "3", "--out", str(out)])
    assert (kernels.enabled(), kernels.after_calls()) == before  # main() leaves biofx's kernel settings alone
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(returned))
    return written


def test_meta(report):
    meta = report["meta"]
    assert META_KEYS <= set(meta)
    assert meta["device"] == "cpu" and meta["compile"] is False and meta["small"] is True
    assert meta["fused_kernels"] is False
    assert (meta["steps"], meta["warmup"], meta["rounds"]) == (5, 1, 2)
    assert meta["threads"] == torch.get_num_threads()
    assert meta["memory_note"]  # CPU peak memory is not measured, and the report says why


def test_variants_and_ratios_come_from_the_same_run(report, bench):
    assert set(report["benches"]) == {"mlp", "cnn"}
    for result in report["benches"].values():
        variants = result["variants"]
        expected = dict(EAGER, **({"reference": "plain"} if bench.bio_transformations else {}))
        assert set(variants) == set(expected)  # no compiled variants with --no-compile
        assert result["skipped"] == {}
        for name, v in variants.items():
            assert VARIANT_KEYS | {"profile"} == set(v)
            assert v["steps"] == 5
            assert 0 < v["min_ms"] <= v["median_ms"] <= v["max_ms"]
            assert v["step_peak_bytes"] is None  # CPU
            assert v["params_finite"] is True
            assert v["baseline"] == expected[name]
            if v["baseline"] is None:
                assert v["ratio"] is None and v["min_ratio"] is None
            else:
                base = variants[v["baseline"]]
                assert math.isclose(v["ratio"], v["median_ms"] / base["median_ms"], rel_tol=1e-12)
                assert math.isclose(v["min_ratio"], v["min_ms"] / base["min_ms"], rel_tol=1e-12)
            assert 1 <= len(v["profile"]) <= 3
            assert all(op["self_ms"] >= 0 and op["calls"] > 0 for op in v["profile"])


def test_bio_state_bytes_match_the_transformed_model(report, bench):
    for name, result in report["benches"].items():
        torch.manual_seed(0)
        model, *_ = bench.MODELS[name](True)
        bio = biofx.transform(model, automatic=(), seed=0)
        layers = bio.bio_layers()
        assert result["bio_state_bytes"] == sum(layer.state_bytes() for layer in layers)
        assert result["bio_weights"] == sum(layer.weight.numel() for layer in layers)
        assert result["bio_state_bytes_per_weight"] == result["bio_state_bytes"] / result["bio_weights"]
        assert result["parameters"] == sum(p.numel() for p in model.parameters())


def test_table_lists_every_variant(report, bench):
    table = bench.format_table(report)
    for bench_name, result in report["benches"].items():
        for name, v in result["variants"].items():
            assert any(line.startswith(f"{bench_name:<5} {name} ") for line in table.splitlines())
    assert "bytes/weight" in table


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
