"""The biofx command line: graph, summary and demo subcommands, config flags, error handling."""

import dataclasses
import importlib.metadata
import subprocess
import sys
import types
import xml.etree.ElementTree as ET

import pytest
import torch
import torch.nn as nn

import biofx
from biofx import cli

pytest.importorskip("graphviz")

SVG_TEXT = "{http://www.w3.org/2000/svg}text"
USER_MODULE = """
import types
import torch
import torch.nn as nn

def build():
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))

model = build()
not_a_model = 3

def broken():
    raise KeyError("boom")

def lazy():
    return nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))

class Tokens(nn.Module):
    # token ids in, like a Hugging Face model; torch.fx cannot trace int(shape)
    main_input_name = "input_ids"

    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(vocab_size=11)
        self.embed = nn.Embedding(11, 8)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, input_ids):
        n = int(input_ids.shape[1])
        return self.head(torch.softmax(self.proj(self.embed(input_ids)), -1).reshape(-1, n, 8))

def blocks():
    block = lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    return nn.Sequential(nn.Sequential(block(), block()), nn.Linear(4, 2))
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user module ``biofx_cli_user`` on sys.path (removed from sys.modules afterwards)."""
    (tmp_path / "biofx_cli_user.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "biofx_cli_user", raising=False)
    yield "biofx_cli_user"
    sys.modules.pop("biofx_cli_user", None)


def _flag(field):
    return "--" + field.name.replace("_", "-")


# -- config flags --------------------------------------------------------------------------
def test_every_config_field_has_a_flag(capsys):
    assert cli.main(["summary", "--help"]) == 0
    help_text = capsys.readouterr().out
    for field in dataclasses.fields(biofx.BioConfig):
        assert _flag(field) in help_text, field.name
    assert "--no-apply-dales-principle" in help_text


def test_flags_build_the_config():
    args = cli.build_parser().parse_args(
        [
            "summary",
            "mlp",
            "--weight-splitting-Gamma", "2",
            "--apply-dales-principle",
            "--fuzzy-lr-distribution", "normal",
            "--automatic", "fuzzy,volume",
            "--fuzzy-learning-rate-factor-nu", "0.3",
            "--weight-splitting-activation-function", "relu",
            "--rejuvenation-rule", "lognormal",
            "--seed", "3",
        ]
    )  # fmt: skip
    expected = biofx.BioConfig(
        weight_splitting_Gamma=2,
        apply_dales_principle=True,
        fuzzy_lr_distribution="normal",
        automatic=("fuzzy", "volume"),
        fuzzy_learning_rate_factor_nu=0.3,
        weight_splitting_activation_function="relu",
        rejuvenation_rule="lognormal",
        seed=3,
    )
    assert cli.config_from_args(args) == expected


def test_unset_flags_keep_the_defaults_and_negations_work():
    parse = cli.build_parser().parse_args
    assert cli.config_from_args(parse(["summary", "mlp"])) == biofx.BioConfig()
    config = cli.config_from_args(parse(["summary", "mlp", "--no-fuzzy-lr-dynamic", "--automatic", "none"]))
    assert config.fuzzy_lr_dynamic is False and config.automatic == ()


# -- summary and graph ---------------------------------------------------------------------
def test_summary_of_a_zoo_model(capsys):
    assert cli.main(["summary", "mlp", "--weight-splitting-Gamma", "2", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1] == "MLP (biofx)"
    for name in ("fc1", "fc2", "out"):
        assert any(line.startswith(f"{name} ") for line in lines)
    assert "Bio layers: 3" in lines
    assert "weight_split (Γ=2)" in out


def test_graph_of_a_zoo_model(tmp_path, capsys):
    out = tmp_path / "cnn.svg"
    argv = ["graph", "cnn", "-o", str(out), "--cluster", "--title", "CNN", "--apply-dales-principle"]
    assert cli.main(argv + ["--automatic", "fuzzy,volume", "--acts-on", "gradient", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (")
    texts = {t.text for t in ET.parse(out).iter(SVG_TEXT)}
    assert {"CNN", "conv2d", "dale_weight", "fuzzy_grad", "volume_grad", "[2, 32, 32, 32]"} <= texts


def test_graph_and_summary_of_a_user_callable(tmp_path, user_module, capsys):
    out = tmp_path / "user.png"
    assert cli.main(["graph", f"{user_module}:build", "-o", str(out), "--input-shape", "3,6"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["summary", f"{user_module}:model"]) == 0  # an nn.Module instance works too
    assert "Sequential (biofx)" in capsys.readouterr().out


def test_input_shape_sets_the_shapes(tmp_path, user_module):
    out = tmp_path / "user.svg"
    assert cli.main(["graph", f"{user_module}:build", "-o", str(out), "--input-shape", "5,6"]) == 0
    texts = {t.text for t in ET.parse(out).iter(SVG_TEXT)}
    assert {"[5, 6]", "[5, 4]", "[5, 2]"} <= texts


def test_a_traceable_user_model_is_drawn_without_an_input_shape(tmp_path, user_module):
    out = tmp_path / "user.svg"
    assert cli.main(["graph", f"{user_module}:build", "-o", str(out)]) == 0
    texts = {t.text for t in ET.parse(out).iter(SVG_TEXT)}
    assert {"linear", "0 · BioLinear", "ReLU"} <= texts and "[5, 6]" not in texts


def test_a_model_file_is_loaded_by_its_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "my_models_file.py"
    path.write_text(USER_MODULE)
    monkeypatch.delitem(sys.modules, "my_models_file", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli.main(["summary", f"{path}:build"]) == 0  # an absolute path
    assert "Bio layers: 2" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "g.svg"
    assert cli.main(["graph", "./sub/my_models_file.py:build", "-o", str(out), "--input-shape", "2,6"]) == 0
    assert "[2, 4]" in {t.text for t in ET.parse(out).iter(SVG_TEXT)}
    assert cli.main(["summary", "sub/my_models_file.py:model"]) == 0
    sys.modules.pop("my_models_file", None)


def test_input_dtype_and_hugging_face_main_input(tmp_path, user_module, capsys):
    out = tmp_path / "tokens.svg"
    argv = ["graph", f"{user_module}:Tokens", "-o", str(out), "--input-shape", "2,5", "--weight-splitting-Gamma", "2"]
    assert cli.main(argv) == 0  # main input input_ids: int64 by default
    texts = {t.text for t in ET.parse(out).iter(SVG_TEXT)}
    assert {"input input_ids", "shapes for an example input of input_ids [2, 5] int64", "softmax", "embedding"} <= texts
    assert not texts & {"default", "Tensor", "int", "Scalar"}  # ATen ops by name, never by overload
    assert cli.main(["summary", f"{user_module}:Tokens", "--input-shape", "2,5", "--input-dtype", "int32"]) == 0
    assert "Bio layers: 2" in capsys.readouterr().out
    argv = ["graph", f"{user_module}:Tokens", "-o", str(out), "--input-shape", "3,4", "--input-dtype", "int32"]
    assert cli.main(argv) == 0
    assert "shapes for an example input of input_ids [3, 4] int32" in {t.text for t in ET.parse(out).iter(SVG_TEXT)}


@pytest.mark.parametrize(
    "text, dtype",
    [("float32", torch.float32), ("torch.bfloat16", torch.bfloat16), ("int64", torch.int64), ("bool", torch.bool)],
)
def test_input_dtype_takes_torch_dtype_names(text, dtype):
    args = cli.build_parser().parse_args(["summary", "mlp", "--input-dtype", text])
    assert args.input_dtype is dtype


def test_integer_inputs_are_token_ids_below_the_vocabulary_size():
    hf = nn.Linear(2, 2)
    hf.config, hf.main_input_name = types.SimpleNamespace(vocab_size=7), "input_ids"
    x = cli._example_input(hf, (64, 64), None)
    assert list(x) == ["input_ids"] and x["input_ids"].dtype == torch.int64
    assert x["input_ids"].min() == 0 and x["input_ids"].max() == 6  # all of [0, 7), nothing above
    plain = cli._example_input(nn.Linear(2, 2), (64, 64), torch.int32)
    assert plain.dtype == torch.int32 and set(plain.unique().tolist()) == {0, 1}  # no vocabulary: [0, 2)
    assert cli._example_input(nn.Linear(2, 2), (3, 2), None).dtype == torch.float32
    assert cli._example_input(nn.Linear(2, 2), (3, 2), torch.bool).dtype == torch.bool


def test_lazy_layers_get_their_shapes_from_the_input_shape(tmp_path, user_module, capsys):
    out = tmp_path / "lazy.svg"
    assert cli.main(["graph", f"{user_module}:lazy", "-o", str(out), "--input-shape", "3,6"]) == 0
    assert {"[3, 6]", "[4, 6]", "[3, 2]"} <= {t.text for t in ET.parse(out).iter(SVG_TEXT)}  # [4, 6]: the weight
    assert cli.main(["summary", f"{user_module}:lazy", "--input-shape", "3,5"]) == 0
    assert "[4, 5]" in capsys.readouterr().out


def test_depth_folds_modules_into_boxes(tmp_path, user_module):
    out = tmp_path / "blocks.svg"
    assert cli.main(["graph", f"{user_module}:blocks", "-o", str(out), "--depth", "2"]) == 0
    texts = {t.text for t in ET.parse(out).iter(SVG_TEXT)}
    assert {"0.0", "0.1"} <= texts and any(t and t.startswith("modules 2 levels deep drawn as boxes") for t in texts)
    assert cli.main(["graph", f"{user_module}:blocks", "-o", str(out), "--depth", "all"]) == 0
    texts = {t.text for t in ET.parse(out).iter(SVG_TEXT)}
    assert "0.0" not in texts and "0.0.0 · BioLinear" in texts


def test_the_tiny_bert_of_issue_23(tmp_path, monkeypatch, capsys):
    """``biofx graph mymodels:bert -o bert.svg --input-shape 2,8 --input-dtype int64``."""
    pytest.importorskip("transformers")
    (tmp_path / "mymodels.py").write_text(
        "import transformers\n\n"
        "def bert():\n"
        "    return transformers.BertModel(transformers.BertConfig(vocab_size=100, hidden_size=32, "
        "num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    argv = ["graph", "mymodels:bert", "-o", "bert.svg", "--input-shape", "2,8", "--input-dtype", "int64"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == "wrote bert.svg (13 bio layers)\n"
    texts = {t.text for t in ET.parse(tmp_path / "bert.svg").iter(SVG_TEXT)}
    assert {"input input_ids", "scaled_dot_product_attention", "layer_norm", "embedding", "linear"} <= texts
    assert "encoder.layer.0.attention.self.query · BioLinear" in texts
    assert not texts & {"default", "Tensor", "int", "Scalar", "dtype_layout"}
    assert not [t for t in texts if t and ("biofx_" in t or "hook" in t)]  # no internal names drawn
    argv[3] = "bert3.svg"
    assert cli.main([*argv, "--depth", "3"]) == 0
    texts = {t.text for t in ET.parse(tmp_path / "bert3.svg").iter(SVG_TEXT)}
    assert {"encoder.layer.0", "encoder.layer.1", "attention.self.query", "intermediate.dense"} <= texts
    sys.modules.pop("mymodels", None)


# -- user mistakes: one line on stderr, exit status 2 ----------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["summary", "nope"],
            "unknown model 'nope': use a zoo name (mlp, cnn, residual), package.module:callable or path/to/file.py:callable",
        ),
        (["summary", "{tmp}/missing.py:build"], "no such file '{tmp}/missing.py'"),
        (["summary", "{tmp}/bad.py:build"], "loading {tmp}/bad.py failed: ZeroDivisionError: division by zero"),
        (["summary", "no_such_module_xyz:build"], "cannot import 'no_such_module_xyz'"),
        (["summary", "{user}:missing"], "has no attribute 'missing'"),
        (["summary", "{user}:not_a_model"], "neither an nn.Module nor a callable"),
        (["summary", "{user}:broken"], "calling {user}:broken failed: KeyError: 'boom'"),
        (["graph", "{user}:Tokens", "-o", "{tmp}/g.svg"], "cannot be traced by torch.fx: pass --input-shape"),
        (["graph", "{user}:lazy", "-o", "{tmp}/g.svg"], "has lazy layers (nn.LazyLinear, ...): pass --input-shape"),
        (["summary", "mlp", "--input-dtype", "int64"], "--input-dtype needs --input-shape"),
        (["graph", "mlp", "-o", "{tmp}/g.txt"], "the suffix must be one of .svg, .png, .pdf"),
        (["graph", "mlp", "-o", "{tmp}/g.svg", "--input-shape", "2,5"], "example_inputs do not fit MLP"),
        (
            ["summary", "mlp", "--weight-splitting-Gamma", "3"],
            "weight_splitting_Gamma (3) must evenly divide the number of features of every split layer; it does not "
            "for 2 layers: fc1 (Linear, 512 outputs), fc2 (Linear, 512 outputs). Choose a --weight-splitting-Gamma "
            "that divides 512, or leave them unsplit with --skip-split fc1 --skip-split fc2 (or plain with --plain fc1 "
            "--plain fc2).",
        ),
        (
            ["summary", "mlp", "--weight-splitting-Gamma", "3", "--skip-split", "fc2"],
            "weight_splitting_Gamma (3) must evenly divide the number of features (512) of layer 'fc1' "
            "(Linear, 512 outputs). Choose a --weight-splitting-Gamma that divides 512, or leave the layer "
            "unsplit with --skip-split fc1 (or plain with --plain fc1).",
        ),
        (["summary", "mlp", "--plain", "fc9"], "ConfigMap name 'fc9' matches no convertible layer; did you mean"),
        (["summary", "mlp", "--plain", "fc1", "--skip-split", "fc1"], "fc1 is given to both --skip-split and --plain"),
        (["summary", "mlp", "--base-lr", "2"], "BioConfig.base_lr must be in (0.0, 1.0), got 2.0"),
        (["summary", "mlp", "--automatic", "fuzzy,bogus"], "unknown mechanism 'bogus'"),
    ],
)
def test_user_mistakes_exit_2_with_a_message(argv, message, tmp_path, user_module, capsys):
    fill = {"user": user_module, "tmp": str(tmp_path)}
    (tmp_path / "bad.py").write_text("1 / 0\n")
    assert cli.main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"biofx {argv[0]}: error: ") and err.count("\n") == 1, err
    assert message.format(**fill) in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["summary", "mlp", "--fuzzy-lr-distribution", "cauchy"], "argument --fuzzy-lr-distribution: invalid choice: 'cauchy'"),
        (["graph", "mlp", "-o", "g.svg", "--weight-splitting-Gamma", "two"], "argument --weight-splitting-Gamma: invalid int value: 'two'"),
        (["graph", "mlp", "-o", "g.svg", "--input-shape", "a,b"], "argument --input-shape: invalid shape 'a,b'"),
        (["graph", "mlp", "-o", "g.svg", "--input-dtype", "float33"], "argument --input-dtype: invalid dtype 'float33': use a torch dtype name such as float32"),
        (["summary", "mlp", "--input-dtype", "Tensor"], "argument --input-dtype: invalid dtype 'Tensor'"),
        (["graph", "mlp", "-o", "g.svg", "--depth", "0"], "argument --depth: invalid depth '0': use a positive number, 'all' or 'auto'"),
        (["graph", "mlp"], "the following arguments are required: -o/--output"),
        (["summary", "mlp", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)  # fmt: skip
def test_argument_mistakes_are_one_line_with_a_help_hint(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    command = f"biofx {argv[0]}"
    assert err.startswith(f"{command}: error: {message}") and err.endswith(f" (see: {command} --help)\n"), err
    assert err.count("\n") == 1, err


def test_missing_command_is_one_line_with_a_help_hint(capsys):
    assert cli.main([]) == 2
    assert capsys.readouterr().err == "biofx: error: the following arguments are required: COMMAND (see: biofx --help)\n"


def test_version(capsys):
    try:
        installed = importlib.metadata.version("biofx")
    except importlib.metadata.PackageNotFoundError:  # a source tree, not installed
        installed = biofx.__version__
    assert cli.version() == installed
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"biofx {installed}\n"
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"biofx {installed}\n"


def test_help_shows_runnable_examples(tmp_path, monkeypatch, capsys):
    assert cli.main(["--help"]) == 0
    help_text = capsys.readouterr().out
    examples = [line.strip() for line in help_text.split("examples:\n")[1].split("\n\n")[0].splitlines()]
    assert len(examples) == 3 and all(e.startswith("biofx ") for e in examples)
    monkeypatch.chdir(tmp_path)
    for example in examples[:2]:  # the third needs the user's own package
        assert cli.main(example.split()[1:]) == 0, example


# -- per-layer flags -------------------------------------------------------------------------
def _rows(out):
    """``layer -> its line`` of a printed summary's table, and the summary's lines."""
    lines = out.splitlines()
    return {line.split()[0]: line for line in lines if line.startswith(("fc1 ", "fc2 ", "out "))}, lines


def test_skip_split_leaves_a_layer_unsplit(capsys):
    assert cli.main(["summary", "mlp", "--weight-splitting-Gamma", "2", "--skip-split", "fc1"]) == 0
    rows, _ = _rows(capsys.readouterr().out)
    assert "weight_split" not in rows["fc1"] and "fuzzy" in rows["fc1"]
    assert "weight_split (Γ=2)" in rows["fc2"]


def test_plain_leaves_a_layer_plain(capsys):
    assert cli.main(["summary", "mlp", "--plain", "re:o.t", "--plain", "fc1"]) == 0
    rows, lines = _rows(capsys.readouterr().out)
    assert set(rows) == {"fc2"}
    assert "  out: left plain by ConfigMap (pattern 're:o.t')" in lines
    assert "  fc1: left plain by ConfigMap (name 'fc1')" in lines


def test_skip_split_makes_an_indivisible_gamma_work(capsys):
    argv = ["summary", "mlp", "--weight-splitting-Gamma", "3", "--skip-split", "fc1", "--skip-split", "fc2"]
    assert cli.main(argv) == 0
    assert "Bio layers: 3" in capsys.readouterr().out


def test_layer_flags_make_a_config_map():
    args = cli.build_parser().parse_args(["summary", "mlp", "--plain", "out", "--seed", "2"])
    config = cli.config_from_args(args)
    assert isinstance(config, biofx.ConfigMap)
    assert config.names == {"out": None} and config.default == biofx.BioConfig(seed=2)


# -- demo ----------------------------------------------------------------------------------
def test_demo_gets_every_argument_after_demo(monkeypatch):
    seen = []
    fake = types.ModuleType("biofx.demo")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "biofx.demo", fake)
    assert cli.main(["demo", "--epochs", "1", "--help", "graph"]) == 7
    assert seen == [["--epochs", "1", "--help", "graph"]]


def test_missing_demo_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "biofx.demo", None)  # importing it fails as if the file were absent
    assert cli.main(["demo"]) == 2
    assert "biofx demo: error: this biofx installation has no demo" in capsys.readouterr().err


def test_python_dash_m_biofx(tmp_path):
    out = tmp_path / "mlp.svg"
    result = subprocess.run(
        [sys.executable, "-m", "biofx", "graph", "mlp", "-o", str(out), "--weight-splitting-Gamma", "2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}")
    assert "weight_split" in {t.text for t in ET.parse(out).iter(SVG_TEXT)}


def test_a_core_install_without_numpy_gets_no_numpy_warning():
    """torch warns at import when NumPy is missing; the command line needs no NumPy and says nothing."""
    probe = (
        "import sys; sys.modules['numpy'] = None\n"  # as on a core-only install
        "from biofx._entry import main\n"
        "raise SystemExit(main(['summary', 'mlp']))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "MLP (biofx)" in result.stdout and "Bio state" in result.stdout
    assert "NumPy" not in result.stderr
