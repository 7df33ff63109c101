"""The ``biofx`` command line (also ``python -m biofx``).

::

    biofx graph MODEL -o graph.svg [--cluster] [--depth N] [--input-shape 2,8 --input-dtype int64] [config flags]
    biofx summary MODEL [--input-shape 2,8 --input-dtype int64] [config flags]
    biofx demo [demo arguments]

``MODEL`` is a zoo name (``mlp``, ``cnn``, ``residual``; see :mod:`biofx.zoo`),
``package.module:callable`` or ``path/to/file.py:callable``: a callable returning an
``nn.Module`` (or an ``nn.Module`` instance). ``--input-shape`` and ``--input-dtype`` make
the example input: random normal values for a floating dtype, random integers in
``[0, config.vocab_size)`` (else ``[0, 2)``) for an integer one; a Hugging Face model gets it
as its main input (``input_ids=...``). With an example input, models ``torch.fx`` cannot
trace are captured with ``torch.export``, lazy layers are initialized by one forward pass
before the transform, and drawings show shapes. ``--depth N`` draws modules ``N`` levels deep
as boxes (:func:`biofx.viz.draw`). The config flags are generated from
:class:`~biofx.BioConfig`'s fields: field ``weight_splitting_Gamma`` is
``--weight-splitting-Gamma``, booleans take ``--flag`` / ``--no-flag``, ``automatic`` a
comma-separated list. ``--skip-split LAYER`` leaves a layer
unsplit and ``--plain LAYER`` leaves it plain (both repeatable; a module name or ``re:PATTERN``,
as in :class:`~biofx.ConfigMap`). User mistakes print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import importlib.util
import os
import re
import sys
import typing
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from . import zoo
from ._version import version
from .config import BioConfig, ConfigMap
from .summary import summary
from .transform import transform
from .viz import FORMATS, MAX_NODES, draw

__all__ = ["main", "build_parser", "config_from_args", "version"]

_FIELDS = dataclasses.fields(BioConfig)
EXAMPLES = """examples:
  biofx summary mlp --weight-splitting-Gamma 2 --apply-dales-principle
  biofx graph cnn -o cnn.svg --cluster --automatic fuzzy,volume
  biofx graph ./mymodels.py:bert -o bert.svg --input-shape 2,8 --input-dtype int64 --depth 3"""


class UsageError(Exception):
    """A mistake on the command line (reported without a traceback, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line with a hint, not the whole usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # everything after "demo" belongs to biofx.demo
        return _demo(argv[1:])
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the subcommand, whose --help lists its flags
            _Parser(prog=f"{parser.prog} {args.command}").error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # --help (0) or an argparse error (2, already printed)
        return int(exit_.code or 0)
    try:
        return args.run(args)
    except (UsageError, ValueError, TypeError, ImportError, OSError, RuntimeError) as err:
        print(f"biofx {args.command}: error: {_command_line_fix(str(err))}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``biofx`` (one subcommand per action)."""
    zoo_models = f"zoo models: {', '.join(f'{name} ({entry.description})' for name, entry in zoo.MODELS.items())}"
    parser = _Parser(
        prog="biofx",
        description="biofx: biological synapse mechanisms for PyTorch models, as a torch.fx pass.",
        epilog=f"{EXAMPLES}\n\n{zoo_models}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"biofx {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_parent = _Parser(add_help=False)
    model_parent.add_argument(
        "model", metavar="MODEL", help="a zoo name, package.module:callable or path/to/file.py:callable"
    )
    example = model_parent.add_argument_group("example input")
    example.add_argument(
        "--input-shape",
        type=_shape,
        help="example input shape, e.g. 1,784 or 2,8 (a zoo model has its own); drawings then show shapes, "
        "models torch.fx cannot trace are captured with torch.export, lazy layers are initialized",
    )
    example.add_argument(
        "--input-dtype",
        type=_dtype,
        help="example input dtype, a torch dtype name (float32, int64, bfloat16, ...); default: int64 for "
        "a model whose main input is input_ids, else float32. Integers are drawn in [0, config.vocab_size)",
    )
    layers = model_parent.add_argument_group("per-layer choices (a module name or re:PATTERN; repeatable)")
    layers.add_argument("--skip-split", action="append", default=[], metavar="LAYER", help="leave LAYER unsplit")
    layers.add_argument("--plain", action="append", default=[], metavar="LAYER", help="leave LAYER plain")
    _add_config_flags(model_parent)

    graph = commands.add_parser("graph", parents=[model_parent], help="draw the bio graph (svg, png or pdf)")
    graph.add_argument("-o", "--output", required=True, help=f"output file ({', '.join(FORMATS)})")
    graph.add_argument("--cluster", action="store_true", help="box the nodes of each module")
    graph.add_argument(
        "--depth",
        type=_depth,
        default="auto",
        metavar="N",
        help="draw every module N levels deep (encoder.layer.0 is 3) as one box listing its bio layers; "
        f"'all' draws every node; default 'auto': every node up to {MAX_NODES} nodes, else the repeated "
        "blocks (a transformer's layers) as boxes",
    )
    graph.add_argument("--title", help="title drawn above the graph")
    graph.set_defaults(run=_graph)

    summarize = commands.add_parser("summary", parents=[model_parent], help="print a table of the bio layers")
    summarize.set_defaults(run=_summary)

    commands.add_parser("demo", help="run the biofx demo (arguments after 'demo' go to it; try: biofx demo --help)")
    return parser


def config_from_args(args: argparse.Namespace) -> Union[BioConfig, ConfigMap]:
    """The config the flags ask for: a :class:`BioConfig` (unset flags keep the defaults), or a
    :class:`ConfigMap` of it when ``--skip-split`` or ``--plain`` name layers."""
    overrides = {f.name: getattr(args, f.name) for f in _FIELDS if getattr(args, f.name) is not None}
    config = BioConfig(**overrides)
    both = set(args.skip_split) & set(args.plain)
    if both:
        raise UsageError(f"{sorted(both)[0]} is given to both --skip-split and --plain: choose one")
    if not args.skip_split and not args.plain:
        return config
    unsplit = config.replace(weight_splitting_Gamma=0)
    return ConfigMap({**{layer: unsplit for layer in args.skip_split}, **dict.fromkeys(args.plain)}, default=config)


# -- subcommands -----------------------------------------------------------------------------
def _graph(args: argparse.Namespace) -> int:
    model, example = _prepare(args)
    bio = transform(model, config_from_args(args), example_inputs=example)
    if example is None and bio.bio_graph is None:
        raise UsageError(
            f"{type(bio).__name__} ({args.model}) cannot be traced by torch.fx: pass --input-shape to capture it "
            "with torch.export (e.g. --input-shape 2,8 --input-dtype int64 for token ids)"
        )
    path = draw(bio, args.output, example, cluster_by_module=args.cluster, title=args.title, depth=args.depth)
    print(f"wrote {path} ({len(bio.bio_report.converted)} bio layers)")
    return 0


def _summary(args: argparse.Namespace) -> int:
    model, example = _prepare(args)
    print(summary(transform(model, config_from_args(args), example_inputs=example)))
    return 0


def _prepare(args: argparse.Namespace) -> tuple[nn.Module, Any]:
    """The model and its example input (``None`` without one); lazy layers initialized."""
    model, example = _load_model(args.model)
    if args.input_shape is not None:
        example = _example_input(model, args.input_shape, args.input_dtype)
    elif args.input_dtype is not None:
        raise UsageError("--input-dtype needs --input-shape (e.g. --input-shape 2,8 --input-dtype int64)")
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        if example is None:
            raise UsageError(
                f"{args.model} has lazy layers (nn.LazyLinear, ...): pass --input-shape so that one forward pass "
                "gives them their shapes"
            )
        with torch.no_grad():
            _call(model, example)
    return model, example


def _example_input(model: nn.Module, shape: tuple[int, ...], dtype: Optional[torch.dtype]) -> Any:
    """A random example input of ``shape``: a tensor, or ``{main_input_name: tensor}`` for a
    Hugging Face model."""
    name = getattr(model, "main_input_name", None) if hasattr(model, "config") else None
    if dtype is None:
        dtype = torch.int64 if name == "input_ids" else torch.float32
    generator = torch.Generator().manual_seed(0)
    if dtype.is_floating_point or dtype.is_complex:
        x = torch.randn(shape, generator=generator, dtype=dtype)
    else:
        high = 2 if dtype is torch.bool else getattr(getattr(model, "config", None), "vocab_size", None) or 2
        x = torch.randint(0, high, shape, generator=generator).to(dtype)
    return {name: x} if isinstance(name, str) else x


def _call(model: nn.Module, example: Any) -> Any:
    return model(**example) if isinstance(example, dict) else model(example)


def _demo(argv: list[str]) -> int:
    try:
        demo = importlib.import_module("biofx.demo")
    except ModuleNotFoundError as err:
        if err.name == "biofx.demo":
            print("biofx demo: error: this biofx installation has no demo (biofx/demo.py is missing)", file=sys.stderr)
        else:
            print(f'biofx demo: error: the demo needs {err.name}: pip install -e ".[demo]" (from a clone of biofx)', file=sys.stderr)
        return 2
    return demo.main(argv)


# -- models ----------------------------------------------------------------------------------
def _load_model(spec: str) -> tuple[nn.Module, Optional[torch.Tensor]]:
    """``(model, example input or None)`` for a zoo name, ``package.module:callable`` or
    ``path/to/file.py:callable``."""
    if ":" not in spec:
        if spec not in zoo.MODELS:
            raise UsageError(
                f"unknown model {spec!r}: use a zoo name ({', '.join(zoo.MODELS)}), package.module:callable "
                "or path/to/file.py:callable"
            )
        return zoo.get(spec)
    module_name, _, attr = spec.rpartition(":")  # rpartition: a Windows path has a colon
    obj: Any = _load_file(module_name, spec) if _is_file(module_name) else _import(module_name, spec)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{module_name!r} has no attribute {attr!r} (MODEL {spec!r})")
        obj = getattr(obj, part)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise UsageError(f"MODEL {spec!r} is neither an nn.Module nor a callable returning one")
        try:
            obj = obj()
        except Exception as err:  # the user's code: report it in one line
            raise UsageError(f"calling {spec} failed: {type(err).__name__}: {err}") from err
        if not isinstance(obj, nn.Module):
            raise UsageError(f"{spec} returned {type(obj).__name__}, not an nn.Module")
    return obj, None


def _is_file(name: str) -> bool:
    return name.endswith(".py") or "/" in name or os.sep in name


def _import(module_name: str, spec: str) -> Any:
    if os.getcwd() not in sys.path:  # like `python -m`, find modules in the working directory
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise UsageError(f"cannot import {module_name!r} for MODEL {spec!r}: {err}") from err


def _load_file(name: str, spec: str) -> Any:
    """The module of a Python file, loaded by its path (its directory goes on ``sys.path`` for
    its own imports, as ``python file.py`` does)."""
    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"no such file {name!r} (MODEL {spec!r})")
    module_name = path.stem if path.stem.isidentifier() and path.stem not in sys.modules else None
    module_name = module_name or f"biofx_model_{abs(hash(str(path))):x}"
    file_spec = importlib.util.spec_from_file_location(module_name, path)
    if file_spec is None or file_spec.loader is None:
        raise UsageError(f"cannot load {name!r} as a Python module (MODEL {spec!r})")
    module = importlib.util.module_from_spec(file_spec)
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[module_name] = module  # classes defined there pickle and dataclasses work
    try:
        file_spec.loader.exec_module(module)
    except Exception as err:  # the user's code: report it in one line
        del sys.modules[module_name]
        raise UsageError(f"loading {name} failed: {type(err).__name__}: {err}") from err
    return module


# biofx.passes.plan's message when Γ does not divide a layer's outputs; its fix names Python calls
_GAMMA_ERROR = re.compile(
    r"(?P<what>weight_splitting_Gamma .* of layer '(?P<layer>[^']+)' \(.*?\)\.) Choose a Γ that divides (?P<n>\d+), .*"
)
# the same for several layers: one line per layer, "'fc1' (Linear, 512 outputs, Γ=3)"
_GAMMA_ERRORS = re.compile(
    r"weight_splitting_Gamma must evenly divide .*? layers:\n(?P<layers>(?:  '.*\n)+)Choose a Γ .*", re.S
)
_GAMMA_LAYER = re.compile(r"  '(?P<layer>[^']+)' \((?P<kind>\w+), (?P<n>\d+) outputs, Γ=(?P<gamma>\d+)\)")


def _command_line_fix(message: str) -> str:
    """``message``, with the fix of a Γ error spelled as this command's flags instead of Python
    (and on one line)."""
    match = _GAMMA_ERROR.fullmatch(message)
    if match is not None:
        return (
            f"{match['what']} Choose a --weight-splitting-Gamma that divides {match['n']}, or leave the layer "
            f"unsplit with --skip-split {match['layer']} (or plain with --plain {match['layer']})."
        )
    match = _GAMMA_ERRORS.fullmatch(message)
    if match is None:
        return message
    layers = [m.groupdict() for m in _GAMMA_LAYER.finditer(match["layers"])]
    names = ", ".join(f"{m['layer']} ({m['kind']}, {m['n']} outputs)" for m in layers)
    counts = ", ".join(dict.fromkeys(m["n"] for m in layers))
    gammas = ", ".join(dict.fromkeys(m["gamma"] for m in layers))
    skips = " ".join(f"--skip-split {m['layer']}" for m in layers)
    plains = " ".join(f"--plain {m['layer']}" for m in layers)
    return (
        f"weight_splitting_Gamma ({gammas}) must evenly divide the number of features of every split layer; it does "
        f"not for {len(layers)} layers: {names}. Choose a --weight-splitting-Gamma that divides {counts}, or leave "
        f"them unsplit with {skips} (or plain with {plains})."
    )


def _shape(text: str) -> tuple[int, ...]:
    """``"1,784"`` → ``(1, 784)``."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid shape {text!r}: use comma-separated sizes such as 1,784") from None
    if any(size <= 0 for size in shape):
        raise argparse.ArgumentTypeError(f"invalid shape {text!r}: sizes must be positive")
    return shape


def _dtype(text: str) -> torch.dtype:
    """``"int64"`` (or ``"torch.int64"``) → ``torch.int64``."""
    dtype = getattr(torch, text.strip().removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise argparse.ArgumentTypeError(
            f"invalid dtype {text!r}: use a torch dtype name such as float32, float16, bfloat16, int64 or bool"
        )
    return dtype


def _depth(text: str) -> Union[int, str, None]:
    """``"3"`` → 3, ``"all"`` → ``None`` (every node), ``"auto"`` → ``"auto"``."""
    if text in ("auto", "all"):
        return None if text == "all" else text
    try:
        depth = int(text)
    except ValueError:
        depth = 0
    if depth < 1:
        raise argparse.ArgumentTypeError(f"invalid depth {text!r}: use a positive number, 'all' or 'auto'")
    return depth


# -- config flags ----------------------------------------------------------------------------
def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per BioConfig field, typed from the field's annotation; unset flags are ``None``."""
    group = parser.add_argument_group("BioConfig fields (see biofx.BioConfig; unset flags keep the default)")
    hints = typing.get_type_hints(BioConfig)
    doc = _field_docs()
    for field in _FIELDS:
        flag = "--" + field.name.replace("_", "-")
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        kind = hints[field.name]
        help_ = f"{doc.get(field.name, '')} (default: {_show(default)})".lstrip()
        if kind is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, help=help_)
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            choices = [member.value for member in kind]
            group.add_argument(flag, dest=field.name, choices=choices, help=help_)
        elif kind is tuple:
            group.add_argument(flag, dest=field.name, type=_names, metavar="A,B", help=help_)
        elif kind in (int, float, Optional[int]):
            scalar = float if kind is float else int
            group.add_argument(flag, dest=field.name, type=scalar, metavar=scalar.__name__.upper(), help=help_)
        else:  # str, and the activation (by name, e.g. relu)
            group.add_argument(flag, dest=field.name, metavar="NAME", help=help_)


def _names(text: str) -> tuple[str, ...]:
    """``"fuzzy,volume"`` → ``("fuzzy", "volume")``; ``""`` or ``none`` → ``()``."""
    return () if text.strip().lower() in ("", "none") else tuple(p.strip() for p in text.split(",") if p.strip())


def _show(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    if isinstance(value, nn.Module):
        return type(value).__name__.lower()
    return str(value)


def _field_docs() -> dict[str, str]:
    """``field -> its description`` from BioConfig's docstring, without reST markup."""
    text = BioConfig.__doc__ or ""
    docs = {}
    for match in re.finditer(r"^\s+(\w+): (.+?)(?=\n\s+\w+: |\n\s*\n|\Z)", text, re.M | re.S):
        description = re.sub(r":\w+:`([^`]+)`", r"\1", " ".join(match.group(2).split())).replace("``", "")
        docs[match.group(1)] = description.replace("%", "%%")  # argparse formats help with %
    return docs
