"""Tests for ``biofx.demo`` (and the grid of ``tools/reproduce.py``, which shares its loop)."""

import argparse
import contextlib
import copy
import dataclasses
import importlib.util
import io
import json
import logging
import math
import shutil
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
from biofx import BioConfig, demo, tiered_compile  # noqa: E402

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
        (["--rejuvenate-every", "-1"], "--rejuvenate-every"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_flags_exit_2(argv, flag, capsys):
    assert demo.main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err
    assert err.startswith("biofx demo: error: ") and err.count("\n") == 1  # one line, no usage block


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--no-such-flag"], ["--momentum", "x"]])
def test_cli_demo_errors_are_one_line(argv, capsys):
    from biofx import cli

    assert cli.main(["demo"] + argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("biofx demo: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_cli_demo_missing_extra_is_one_line(monkeypatch, tmp_path, capsys):
    from biofx import cli

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert cli.main(["demo", "--epochs", "1", "--seeds", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == 'biofx demo: error: the biofx demo needs scikit-learn: pip install -e ".[demo]" (from a clone of biofx)\n'


def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("")
    assert demo.main(["--epochs", "1", "--seeds", "1", "--no-progress", "--out", str(target)]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["sklearn.datasets", "matplotlib", "tqdm"])
def test_missing_dependency_names_the_extra(module, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    assert demo.main(["--epochs", "1", "--seeds", "1", "--out", str(tmp_path)]) == 2
    assert 'pip install -e ".[demo]" (from a clone of biofx)' in capsys.readouterr().err
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
    monkeypatch.syspath_prepend(str(path.parent))  # it imports tools/authors_loop.py
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


def _runs(first_epochs, finals, threshold=0.9):
    """Runs whose curve first reaches ``threshold`` at the given epoch (None: never) and ends at ``finals``."""
    runs = []
    for seed, (epoch, final) in enumerate(zip(first_epochs, finals)):
        curve = [0.5] * 9 + [final]
        if epoch is not None:
            curve[epoch - 1 : 9] = [threshold] * (10 - epoch)
        runs.append(demo.RunResult(seed, curve, 1.0))
    return runs


def test_verdict_faster_and_lower():
    plain = _runs([6, 7, 7], [0.970, 0.969, 0.971])
    bio = _runs([3, 3, 3], [0.930, 0.940, 0.935])
    expected = (
        "bio reached 90 % in 3.0 epochs vs 6.7 (fewer epochs); final accuracy 0.935 vs 0.970 (lower); "
        "wall time 1.0 s vs 1.0 s per run (about the same)"
    )
    assert demo.verdict(plain, bio) == expected
    flipped = demo.verdict(bio, plain)
    assert flipped.startswith(
        "bio reached 90 % in 6.7 epochs vs 3.0 (more epochs); final accuracy 0.970 vs 0.935 (higher);"
    )


def test_verdict_about_the_same_within_the_interval_or_the_resolution():
    # paired epoch differences +1, -1, 0 and accuracy differences within ±0.003: the CI holds 0
    plain = _runs([5, 6, 7], [0.960, 0.965, 0.970])
    bio = _runs([6, 5, 7], [0.963, 0.962, 0.970])
    assert demo.verdict(plain, bio).count("(about the same)") == 3  # the wall times are equal too
    # one seed: no interval, so differences under the resolution are "about the same"
    one = demo.verdict(_runs([6], [0.960]), _runs([6], [0.966]))
    assert one.startswith(
        "bio reached 90 % in 6.0 epochs vs 6.0 (about the same); final accuracy 0.966 vs 0.960 (about the same);"
    )
    one = demo.verdict(_runs([6], [0.96]), _runs([5], [0.98]))
    assert "(fewer epochs); final accuracy 0.980 vs 0.960 (higher);" in one
    # a consistent but noisy difference whose 95 % CI reaches 0 is not called
    assert demo.judge([-3.0, 1.0], 1.0, "faster", "slower") == "about the same"
    assert demo.judge([-3.0, -3.0, -2.0], 1.0, "faster", "slower") == "faster"


def test_verdict_when_thresholds_are_missed():
    never = _runs([None, None], [0.8, 0.8])
    assert demo.verdict(never, never).startswith("neither reached 90 %;")
    bio_only = demo.verdict(_runs([None, None], [0.8, 0.8]), _runs([4, None], [0.91, 0.85]))
    assert bio_only.startswith("bio reached 90 % in 4.0 epochs (1/2 seeds), plain did not;")
    plain_only = demo.verdict(_runs([4, 5], [0.91, 0.92]), _runs([None, None], [0.8, 0.8]))
    assert plain_only.startswith("bio did not reach 90 %, plain did in 4.5 epochs;")
    partial = demo.verdict(_runs([5, 6, 5], [0.95] * 3), _runs([2, None, 2], [0.95, 0.85, 0.95]))
    assert partial.startswith("bio reached 90 % in 2.0 epochs (2/3 seeds) vs 5.3 (fewer epochs)")


def _timed(runs, wall, compile_s=None):
    return [dataclasses.replace(run, wall_time_s=wall, compile_s=compile_s) for run in runs]


def test_verdict_says_faster_or_slower_by_the_wall_time_column():
    """Issue 23: the verdict said "faster" (it meant fewer epochs) next to a 9x wall time."""
    plain = _timed(_runs([6, 7, 7], [0.97] * 3), 1.0)
    bio = _timed(_runs([3, 3, 3], [0.97] * 3), 9.0)
    line = demo.verdict(plain, bio)
    assert "faster" not in line and "(fewer epochs)" in line
    assert line.endswith("wall time 9.0 s vs 1.0 s per run (9.0x slower)")
    assert demo.verdict(bio, plain).endswith("wall time 1.0 s vs 9.0 s per run (9.0x faster)")
    assert demo.verdict(plain, _timed(bio, 1.05)).endswith("wall time 1.1 s vs 1.0 s per run (about the same)")


def test_table_and_verdict_say_when_the_bio_time_includes_a_compile():
    plain = _timed(_runs([6], [0.97]), 2.0)
    bio = _timed(_runs([5], [0.97]), 18.0, compile_s=16.0)
    line = demo.verdict(plain, bio)
    assert line.endswith(
        "wall time 18.0 s vs 2.0 s per run (9.0x slower; bio's includes a one-off compile of the fused kernels, "
        "about 16.0 s: 2.0 s without it)"
    )
    table = demo.format_table({"plain": demo.summarize(plain), "bio": demo.summarize(bio)})
    bio_row = next(row for row in table.splitlines() if row.startswith("bio"))
    assert bio_row.endswith("18.0 s (with compile, 16.0 s)")
    assert demo.COMPILE_NOTE in table
    assert demo.COMPILE_NOTE not in demo.format_table({"plain": demo.summarize(plain)})
    three = demo.summarize(_timed(_runs([5, 5], [0.97] * 2), 9.0) + bio)  # one of three seeds compiled
    assert demo.format_table({"bio": three}).splitlines()[1].endswith("12.0 s (1/3 with compile, 16.0 s)")


def _tiny_digits():
    full = demo.load_digits_split()
    return demo.Digits(full.x_train[:96], full.y_train[:96], full.x_val[:32], full.y_val[:32])


def test_train_records_a_compile_in_its_timed_loop(monkeypatch):
    """A first compile of the fused kernels (tiered_compile announces it) inside the timed loop is
    recorded with the seconds it added: that epoch's time less the others' median."""
    monkeypatch.setitem(tiered_compile._STATE, "announced", False)
    data, steps = _tiny_digits(), []
    torch.manual_seed(0)
    model = demo.build_model("mlp")

    def compile_at_step_4():  # the first step of epoch 2 (3 steps per epoch) stalls as a compile does
        steps.append(None)
        if len(steps) == 4:
            tiered_compile._STATE["announced"] = True
            time.sleep(0.5)

    with demo.single_thread():
        run = demo.train(model, data, epochs=3, lr=0.03, batch_size=32, seed=0, before_step=compile_at_step_4)
        assert run.compile_s == pytest.approx(0.5, abs=0.2) and run.compile_s < run.wall_time_s
        assert run.to_dict()["compile_s"] == run.compile_s
        # compiled already in this process: the next run pays nothing and records nothing
        assert demo.train(model, data, epochs=2, lr=0.03, batch_size=32, seed=0).compile_s is None


def test_train_records_the_epoch_weights_went_nan():
    data, steps = _tiny_digits(), []
    torch.manual_seed(0)
    model = demo.build_model("mlp")

    def poison_at_step_4():
        steps.append(None)
        if len(steps) == 4:
            model[0].weight.data[0, 0] = float("nan")

    with demo.single_thread():
        run = demo.train(model, data, epochs=3, lr=0.03, batch_size=32, seed=0, before_step=poison_at_step_4)
    assert run.diverged_at == 2 and run.to_dict()["diverged_at"] == 2


def test_setup_note_for_rejuvenation_every_step_under_momentum_or_adam():
    note = demo.setup_note(demo.PAPER_CONFIG, momentum=0.9)
    assert note.startswith("note: bio rejuvenates weights every step under SGD with momentum 0.9;")
    assert "--momentum 0" in note and "--rejuvenate-every 0" in note and "\n" not in note
    assert "under Adam" in demo.setup_note(demo.PAPER_CONFIG, momentum=0.0, optimizer="adam")
    assert demo.setup_note(demo.PAPER_CONFIG, momentum=0.0) is None
    assert "every 50 steps" in demo.setup_note(demo.PAPER_CONFIG.replace(rejuvenate_every=50), momentum=0.9)
    assert demo.setup_note(demo.PAPER_CONFIG.replace(rejuvenate_every=0), momentum=0.9) is None


def test_collapse_note_names_the_collapse_and_the_fix():
    plain = _runs([2, 2], [0.975, 0.975])
    nan = [dataclasses.replace(run, diverged_at=4) for run in _runs([None, None], [0.1, 0.1])]
    note = demo.collapse_note(plain, nan, demo.PAPER_CONFIG, momentum=0.9)
    assert note.startswith(
        "note: the bio run collapsed (seeds 0, 1: weights NaN or infinite from epoch 4; final accuracy 0.100 vs "
        "plain's 0.975, chance 0.100); rejuvenation under SGD with momentum 0.9"
    )
    assert "--momentum 0" in note and "\n" not in note
    chance = demo.collapse_note(plain, _runs([None, 3], [0.1, 0.95]), demo.PAPER_CONFIG, momentum=0.0)
    assert "(seed 0: it ended at chance;" in chance and chance.endswith("try a smaller --lr")
    assert demo.collapse_note(plain, _runs([3, 3], [0.95, 0.96]), demo.PAPER_CONFIG, momentum=0.9) is None


def _quick_main(argv, tmp_path, monkeypatch):
    """``main`` for one epoch of one seed, without drawing the graph; ``(code, stdout, warnings)``."""
    monkeypatch.setattr(demo, "draw_bio_graph", lambda *args, **kwargs: None)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        base = ["--epochs", "1", "--seeds", "1", "--batch-size", "64", "--no-progress", "--out", str(tmp_path)]
        code = demo.main(base + argv)
    return code, stdout.getvalue(), caught


def test_momentum_with_rejuvenation_every_step_prints_a_note(tmp_path, monkeypatch):
    """Issue 23: `biofx demo --momentum 0.9` collapsed silently; now it says so, and the fix, in one line."""
    code, out, caught = _quick_main(["--momentum", "0.9"], tmp_path, monkeypatch)
    assert code == 0
    note = demo.setup_note(demo.PAPER_CONFIG, 0.9)
    assert out.splitlines()[1] == note  # under the header, before training
    assert out.count("note: bio rejuvenates") == 1
    # said once, in the demo's terms: the library's warning of the same is not repeated
    assert not any("automatic rejuvenation" in str(w.message) for w in caught)
    assert note in json.loads((tmp_path / "results.json").read_text())["notes"]


def test_rejuvenate_every_sets_the_bio_config(tmp_path, monkeypatch):
    code, out, _ = _quick_main(["--momentum", "0.9", "--rejuvenate-every", "0"], tmp_path, monkeypatch)
    assert code == 0 and "note:" not in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["bio_config"]["rejuvenate_every"] == 0 and results["notes"] == []
    assert results["bio"] == "fuzzy ν=0.09, Γ=2"


def test_describe_names_the_mechanisms_on():
    assert demo.describe(demo.PAPER_CONFIG) == "fuzzy ν=0.09, rejuvenation d_re=14 every step, Γ=2"
    config = BioConfig(automatic=("fuzzy", "volume", "crystallize"), weight_splitting_Gamma=2)
    assert demo.describe(config) == "fuzzy ν=0.16, volume, crystallize, Γ=2"
    assert demo.describe(BioConfig(automatic=())) == "no mechanism on"


def test_learning_curves_legend_names_the_bio_config(demo_run):
    args = argparse.Namespace(model="mlp", lr=0.03, momentum=0.0, seeds=1)
    runs = {"plain": [demo.RunResult(0, [0.5, 0.9], 1.0)], "bio": [demo.RunResult(0, [0.6, 0.92], 1.0)]}
    figure = demo.learning_curves_figure(runs, demo.PAPER_CONFIG, args)
    (ax,) = figure.axes
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["plain", "bio (fuzzy ν=0.09, rejuvenation d_re=14 every step, Γ=2)"]
    # the demo's run names it too: in results.json and in the header
    assert _results(demo_run)["bio"] == demo.describe(demo.PAPER_CONFIG)
    assert demo_run["stdout"].splitlines()[0].endswith(f"bio: {demo.describe(demo.PAPER_CONFIG)}")


def test_demo_prints_the_verdict_and_explains_the_table(demo_run):
    results = _results(demo_run)
    lines = demo_run["stdout"].splitlines()
    runs = {
        name: [demo.RunResult(r["seed"], r["curve"], r["wall_time_s"]) for r in rs]
        for name, rs in results["runs"].items()
    }
    assert results["verdict"] == demo.verdict(runs["plain"], runs["bio"])
    assert f"verdict: {results['verdict']}" in lines
    assert demo.TABLE_NOTE in demo_run["stdout"]
    assert "the first epoch whose validation accuracy reached N %" in demo.TABLE_NOTE


def test_learning_curves_mark_the_thresholds():
    figure, (ax,) = demo.new_figure("t")
    demo.plot_curves({"plain": [[0.5, 0.92, 0.96]], "bio": [[0.6, 0.94, 0.97]]}, ax)
    horizontal = sorted(line.get_ydata()[0] for line in ax.lines if len(set(line.get_ydata())) == 1)
    assert horizontal == [0.90, 0.95]
    assert sorted(text.get_text() for text in ax.texts) == ["90 %", "95 %"]
    assert len(ax.lines) == 4  # two curves, two threshold lines


def test_train_runs_before_step_between_backward_and_step_and_offers_adam():
    full = demo.load_digits_split()
    data = demo.Digits(full.x_train[:96], full.y_train[:96], full.x_val[:32], full.y_val[:32])
    torch.manual_seed(0)
    model = demo.build_model("mlp")
    seen = []

    def before_step():
        seen.append((model[0].weight.grad.abs().sum().item(), model[0].weight.detach().clone()))

    start = model[0].weight.detach().clone()
    with demo.single_thread():
        demo.train(model, data, epochs=1, lr=1e-3, batch_size=32, seed=0, optimizer="adam", before_step=before_step)
    assert len(seen) == 3 and all(g > 0 for g, _ in seen)  # once per batch, with the gradient there
    torch.testing.assert_close(seen[0][1], start, rtol=0, atol=0)  # before the first update
    # Adam's first step moves every weight with a gradient by about lr
    assert (seen[1][1] - start).abs().max().item() == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(ValueError, match="optimizer"):
        demo.train(model, data, epochs=1, lr=1e-3, batch_size=32, seed=0, optimizer="rmsprop")


def test_reproduce_parity_and_adam_rows(monkeypatch):
    reproduce = _reproduce_module(monkeypatch)
    parity = reproduce.parity_conditions()
    assert [(c.mechanism, c.gamma, c.implementation) for c in parity] == [
        (m, g, i)
        for g in (0, 2)
        for m in ("rejuvenation", "fuzzy+rejuvenation")
        for i in (reproduce.AUTHORS, reproduce.AUTHORS_AGAIN, reproduce.TORCH_DRAWS)
    ]
    grid = {(c.mechanism, c.gamma): c.config for c in reproduce.conditions()}
    assert all(c.config == grid[(c.mechanism, c.gamma)] for c in parity)  # the same settings as biofx's rows
    plain, update, gradient = reproduce.adam_conditions()
    assert plain.config is None and {c.optimizer for c in (plain, update, gradient)} == {"adam"}
    assert (update.config.acts_on, gradient.config.acts_on) == ("update", "gradient")
    assert update.reference == gradient.reference == plain.label
    labels = [c.label for c in reproduce.conditions() + [reproduce.CONTROL] + parity + [plain, update, gradient]]
    assert len(set(labels)) == len(labels)


def test_reproduce_prepares_the_authors_rule_with_torch_draws(monkeypatch):
    reproduce = _reproduce_module(monkeypatch)
    torch.manual_seed(0)
    base = demo.build_model("mlp")
    condition = next(
        c
        for c in reproduce.parity_conditions()
        if c.implementation == reproduce.AUTHORS and c.mechanism == "fuzzy+rejuvenation" and c.gamma == 2
    )
    model, before_step, _ = reproduce.prepare(condition, base, seed=3, n_outputs=10)
    assert not hasattr(model, "bio_layers")  # no biofx in it
    assert [len(m._forward_hooks) for m in (model[0], model[2], model[4])] == [1, 1, 0]  # classifier not split
    rule = before_step.__self__
    generator = torch.Generator().manual_seed(3)
    layers = (model[0], model[2], model[4])
    expected = [1 + (2 * torch.rand(m.weight.shape, generator=generator) * 0.09 - 0.09) for m in layers]
    for f, e in zip(rule.f, expected):
        torch.testing.assert_close(f, e, rtol=0, atol=0)
    # the purge continues on the same generator: torch.normal, then torch.rand, layer by layer
    assert rule.draws.generator.get_state().equal(generator.get_state())


def test_reproduce_torch_draws_replace_and_restore_biofx_rng(monkeypatch):
    reproduce = _reproduce_module(monkeypatch)
    from biofx import rng

    key, counter = torch.tensor(5), torch.tensor(0)
    original = rng.uniform
    with reproduce.torch_draws(7):
        drawn = rng.uniform((3, 4), rng.stream_seed(key, counter, rng.REJUVENATE_VALUE))
        normal = rng.normal((6,), rng.stream_seed(key, counter, rng.REJUVENATE_THRESHOLD))
    generator = torch.Generator().manual_seed(7)
    torch.testing.assert_close(drawn, torch.rand((3, 4), generator=generator), rtol=0, atol=0)
    torch.testing.assert_close(normal, torch.normal(0.0, 1.0, (6,), generator=generator), rtol=0, atol=0)
    assert rng.uniform is original
