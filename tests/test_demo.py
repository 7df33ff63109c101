"""Tests for ``biofx.demo`` (and the grid of ``tools/reproduce.py``, which shares its loop)."""

import contextlib
import copy
import importlib.util
import io
import json
import logging
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
from biofx import demo  # noqa: E402

EPOCHS, SEEDS, BATCH = 2, 2, 64
STEPS_PER_EPOCH = math.ceil(1437 / BATCH)  # 1437 training rows in the fixed split


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Run ``main`` once with tiny settings, recording every model ``train`` receives."""
    out = tmp_path_factory.mktemp("demo")
    calls = []
    original = demo.train

    def recording_train(model, data, **kwargs):
        start = {k: v.detach().clone() for k, v in model.named_parameters()}
        calls.append({"model": model, "start": start, "seed": kwargs["seed"]})
        return original(model, data, **kwargs)

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setattr(demo, "train", recording_train)
        argv = ["--epochs", str(EPOCHS), "--seeds", str(SEEDS), "--batch-size", str(BATCH)]
        code = demo.main(argv + ["--out", str(out), "--no-progress"])
    return {"code": code, "out": out, "stdout": stdout.getvalue(), "calls": calls}


def _results(demo_run) -> dict:
    return json.loads((demo_run["out"] / "results.json").read_text())


def test_main_writes_the_files(demo_run):
    assert demo_run["code"] == 0
    out = demo_run["out"]
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = out / "bio_graph.svg"
    drawable = shutil.which("dot") is not None and importlib.util.find_spec("graphviz") is not None
    assert svg.exists() == drawable
    if drawable:
        assert "<svg" in svg.read_text()
    assert set(_results(demo_run)["files"]) == {"learning_curves", "results"} | ({"bio_graph"} if drawable else set())


def test_results_json_content(demo_run):
    results = _results(demo_run)
    assert results["model"] == "mlp" and results["epochs"] == EPOCHS and results["seeds"] == list(range(SEEDS))
    assert results["n_train"] + results["n_val"] == 1797
    assert results["optimizer"] == {"name": "SGD", "lr": demo.DEFAULT_LR, "momentum": 0.0, "batch_size": BATCH}
    assert set(results["runs"]) == set(results["summary"]) == {"plain", "bio"}
    for name, runs in results["runs"].items():
        assert [run["seed"] for run in runs] == list(range(SEEDS))
        for run in runs:
            curve = run["curve"]
            assert len(curve) == EPOCHS
            assert all(0.0 <= acc <= 1.0 for acc in curve)
            assert run["final_accuracy"] == curve[-1]
            for threshold in demo.THRESHOLDS:
                first = next((e for e, acc in enumerate(curve, 1) if acc >= threshold), None)
                assert run[f"epochs_to_{round(threshold * 100)}"] == first
            assert run["wall_time_s"] > 0
        summary = results["summary"][name]
        finals = [run["final_accuracy"] for run in runs]
        assert summary["final_accuracy"] == pytest.approx(sum(finals) / SEEDS)
        assert summary["seeds"] == SEEDS
        assert {"epochs_to_90", "epochs_to_95", "reached_90", "reached_95", "wall_time_s"} <= set(summary)


def test_bio_config_is_the_papers(demo_run):
    config = _results(demo_run)["bio_config"]
    assert config["fuzzy_learning_rate_factor_nu"] == 0.09
    assert config["fuzzy_lr_distribution"] == "uniform"
    assert config["automatic"] == ["fuzzy"]  # crystallization off
    assert config["rejuvenation_parameter_dre"] == 14.0 and config["rejuvenate_every"] == 1
    assert config["weight_splitting_Gamma"] == 2


def test_bio_model_ran_the_mechanisms(demo_run):
    bios = [c["model"] for c in demo_run["calls"] if hasattr(c["model"], "bio_layers")]
    assert len(bios) == SEEDS
    for bio in bios:
        layers = bio.bio_layers()
        assert [layer.layer_name for layer in layers] == ["0", "2", "4"]
        for layer in layers:
            # rejuvenation ran after every optimizer step
            assert int(layer.rejuvenations) == EPOCHS * STEPS_PER_EPOCH == int(layer.step)
            f = layer.fuzzy_lr
            assert f.min() >= 1 - 0.09 and f.max() <= 1 + 0.09 and f.std() > 0.01
        split = [c.name for c in bio.bio_report.converted if any("weight_split" in m for m in c.mechanisms)]
        assert split == ["0", "2"]  # the last layer is not split


def test_plain_and_bio_start_from_identical_weights(demo_run):
    calls = demo_run["calls"]
    assert [c["seed"] for c in calls] == [0, 0, 1, 1]
    for plain, bio in zip(calls[0::2], calls[1::2]):
        assert not hasattr(plain["model"], "bio_layers") and hasattr(bio["model"], "bio_layers")
        assert plain["start"].keys() == bio["start"].keys()
        for name, weight in plain["start"].items():
            torch.testing.assert_close(bio["start"][name], weight, rtol=0, atol=0)
        # deep copies: training one did not move the other
        plain_params = dict(plain["model"].named_parameters())
        bio_params = dict(bio["model"].named_parameters())
        assert all(plain_params[n].data_ptr() != bio_params[n].data_ptr() for n in plain_params)
    assert not torch.equal(calls[0]["start"]["0.weight"], calls[2]["start"]["0.weight"])  # seeds differ


def test_table_is_printed(demo_run):
    lines = demo_run["stdout"].splitlines()
    header = next(line for line in lines if "epochs to 90%" in line)
    assert "epochs to 95%" in header and "final accuracy" in header and "wall time" in header
    summary = _results(demo_run)["summary"]
    for name in ("plain", "bio"):
        row = next(line for line in lines if line.split()[0] == name)
        assert f"{summary[name]['final_accuracy']:.3f} ± {summary[name]['final_accuracy_std']:.3f}" in row
        assert row.rstrip().endswith(f"{summary[name]['wall_time_s']:.1f} s")


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--epochs", "0"], "--epochs"),
        (["--seeds", "-1"], "--seeds"),
        (["--model", "resnet"], "--model"),
        (["--lr", "abc"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--batch-size", "0"], "--batch-size"),
        (["--momentum", "1.5"], "--momentum"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_flags_exit_2(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("")
    assert demo.main(["--epochs", "1", "--seeds", "1", "--no-progress", "--out", str(target)]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["sklearn.datasets", "matplotlib", "tqdm"])
def test_missing_dependency_names_the_extra(module, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    assert demo.main(["--epochs", "1", "--seeds", "1", "--out", str(tmp_path)]) == 2
    assert 'pip install "biofx[demo]"' in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_missing_graphviz_warns_and_skips(monkeypatch, tmp_path, caplog):
    import biofx.viz

    def no_dot(*args, **kwargs):
        raise RuntimeError("the Graphviz `dot` program was not found")

    monkeypatch.setattr(biofx.viz, "draw", no_dot)
    bio = demo.bio_copy(demo.build_model("mlp"), demo.PAPER_CONFIG, seed=0)
    with caplog.at_level(logging.WARNING, logger="biofx.demo"):
        assert demo.draw_bio_graph(bio, tmp_path / "g.svg", torch.zeros(2, 64), "t") is None
    assert "skipping g.svg" in caplog.text and "dot" in caplog.text
    assert not (tmp_path / "g.svg").exists()


def test_epochs_to_and_summary():
    fast = demo.RunResult(0, [0.5, 0.91, 0.96], 1.0)
    slow = demo.RunResult(1, [0.4, 0.7, 0.92], 3.0)
    assert (fast.epochs_to(0.9), fast.epochs_to(0.95)) == (2, 3)
    assert (slow.epochs_to(0.9), slow.epochs_to(0.95)) == (3, None)
    s = demo.summarize([fast, slow])
    assert s["epochs_to_90"] == 2.5 and s["reached_90"] == 2
    assert s["epochs_to_95"] == 3 and s["reached_95"] == 1
    assert s["final_accuracy"] == pytest.approx(0.94)
    assert s["final_accuracy_std"] == pytest.approx(math.sqrt(2) * 0.02)
    assert s["wall_time_s"] == 2.0
    never = demo.summarize([slow])
    assert never["epochs_to_95"] is None
    table = demo.format_table({"a": s, "b": never})
    assert "3.0 (1/2)" in table and "not reached" in table.splitlines()[2]


def test_mean_ci95_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    table = torch.tensor([[0.90, 3.0], [0.94, 5.0], [0.93, 4.0], [0.97, 9.0]], dtype=torch.float64)
    mean, half = demo.mean_ci95(table)
    for column in range(2):
        values = table[:, column].numpy()
        low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
        assert mean[column].item() == pytest.approx((low + high) / 2)
        assert half[column].item() == pytest.approx((high - low) / 2)


def test_same_seed_same_batches_same_result():
    """A plain model trained twice from the same weights with the same seed gives the same curve."""
    full = demo.load_digits_split()
    data = demo.Digits(full.x_train[:300], full.y_train[:300], full.x_val[:100], full.y_val[:100])
    torch.manual_seed(3)
    model = demo.build_model("mlp")
    twin = copy.deepcopy(model)
    with demo.single_thread():
        a = demo.train(model, data, epochs=2, lr=0.03, batch_size=32, seed=5)
        b = demo.train(twin, data, epochs=2, lr=0.03, batch_size=32, seed=5)
    assert a.curve == b.curve
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_warm_up_leaves_the_model_and_its_bio_state_alone():
    full = demo.load_digits_split()
    bio = demo.bio_copy(demo.build_model("mlp"), demo.PAPER_CONFIG, seed=0)
    before = {k: v.clone() for k, v in bio.state_dict().items()}
    demo.warm_up(bio, full, lr=0.03, batch_size=32)
    after = bio.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)
    assert all(p.grad is None for p in bio.parameters())


def _reproduce_module(monkeypatch):
    path = Path(__file__).resolve().parents[1] / "tools" / "reproduce.py"
    spec = importlib.util.spec_from_file_location("biofx_tools_reproduce", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_reproduce_grid_is_the_papers(monkeypatch):
    reproduce = _reproduce_module(monkeypatch)
    grid = reproduce.conditions()
    assert [(c.mechanism, c.gamma) for c in grid] == [
        (m, g) for g in (0, 2) for m in ("plain", "fuzzy", "rejuvenation", "fuzzy+rejuvenation")
    ]
    assert grid[0].config is None  # the baseline is the untransformed model
    for c in grid[1:]:
        cfg = c.config
        assert cfg.weight_splitting_Gamma == c.gamma
        assert ("fuzzy" in cfg.automatic) == ("fuzzy" in c.mechanism)
        assert (cfg.fuzzy_lr_distribution.value == "uniform") == ("fuzzy" in c.mechanism)
        assert cfg.rejuvenate_every == (1 if "rejuvenation" in c.mechanism else 0)
        assert cfg.fuzzy_learning_rate_factor_nu == 0.09 and cfg.rejuvenation_parameter_dre == 14.0
        assert "crystallize" not in cfg.automatic
