"""The ``biofx`` command line (also ``python -m biofx``).

::

    biofx graph MODEL -o graph.svg [--cluster] [--input-shape 1,784] [config flags]
    biofx summary MODEL [config flags]
    biofx demo [demo arguments]

``MODEL`` is a zoo name (``mlp``, ``cnn``, ``residual``; see :mod:`biofx.zoo`) or
``package.module:callable``, a callable returning an ``nn.Module`` (or an ``nn.Module``
instance). The config flags are generated from :class:`~biofx.BioConfig`'s fields: field
``weight_splitting_Gamma`` is ``--weight-splitting-Gamma``, booleans take ``--flag`` /
``--no-flag``, ``automatic`` a comma-separated list. ``--skip-split LAYER`` leaves a layer
unsplit and ``--plain LAYER`` leaves it plain (both repeatable; a module name or ``re:PATTERN``,
as in :class:`~biofx.ConfigMap`). User mistakes print one line to stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import importlib.metadata
import os
import re
import sys
import typing
from typing import TYPE_CHECKING, Any, Optional, Union

# torch and the rest of biofx load inside the functions that need them, not with this module:
# ``biofx --version`` answers without them (importing torch alone takes seconds).
if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from .config import BioConfig, ConfigMap

__all__ = ["main", "build_parser", "config_from_args", "version"]

EXAMPLES = """examples:
  biofx summary mlp --weight-splitting-Gamma 2 --apply-dales-principle
  biofx graph cnn -o cnn.svg --cluster --automatic fuzzy,volume
  biofx graph mypackage.models:build -o model.png --input-shape 1,784 --plain head"""


class UsageError(Exception):
    """A mistake on the command line (reported without a traceback, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line with a hint, not the whole usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:  # as argparse would answer it, without building the parser
        print(f"biofx {version()}")
        return 0
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


def version() -> str:
    """The installed biofx's version, from its package metadata (``biofx.__version__`` without it)."""
    try:
        return importlib.metadata.version("biofx")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``biofx`` (one subcommand per action)."""
    from . import zoo
    from .viz import FORMATS

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
    model_parent.add_argument("model", metavar="MODEL", help="a zoo name or package.module:callable")
    layers = model_parent.add_argument_group("per-layer choices (a module name or re:PATTERN; repeatable)")
    layers.add_argument("--skip-split", action="append", default=[], metavar="LAYER", help="leave LAYER unsplit")
    layers.add_argument("--plain", action="append", default=[], metavar="LAYER", help="leave LAYER plain")
    _add_config_flags(model_parent)

    graph = commands.add_parser("graph", parents=[model_parent], help="draw the bio graph (svg, png or pdf)")
    graph.add_argument("-o", "--output", required=True, help=f"output file ({', '.join(FORMATS)})")
    graph.add_argument("--cluster", action="store_true", help="box the nodes of each module")
    graph.add_argument("--title", help="title drawn above the graph")
    graph.add_argument(
        "--input-shape",
        type=_shape,
        help="example input shape, e.g. 1,784 (required for package.module:callable models); "
        "labels then show tensor shapes",
    )
    graph.set_defaults(run=_graph)

    summarize = commands.add_parser("summary", parents=[model_parent], help="print a table of the bio layers")
    summarize.set_defaults(run=_summary)

    commands.add_parser("demo", help="run the biofx demo (arguments after 'demo' go to it; try: biofx demo --help)")
    return parser


def config_from_args(args: argparse.Namespace) -> Union[BioConfig, ConfigMap]:
    """The config the flags ask for: a :class:`BioConfig` (unset flags keep the defaults), or a
    :class:`ConfigMap` of it when ``--skip-split`` or ``--plain`` name layers."""
    from .config import BioConfig, ConfigMap

    fields = dataclasses.fields(BioConfig)
    overrides = {f.name: getattr(args, f.name) for f in fields if getattr(args, f.name) is not None}
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
    import torch

    from .transform import transform
    from .viz import draw

    model, example = _load_model(args.model)
    if args.input_shape is not None:
        example = torch.randn(args.input_shape)
    if example is None:
        raise UsageError(f"{args.model} is not a zoo model: pass --input-shape (e.g. --input-shape 1,784)")
    bio = transform(model, config_from_args(args))
    path = draw(bio, args.output, example, cluster_by_module=args.cluster, title=args.title)
    print(f"wrote {path} ({len(bio.graph.nodes)} nodes, {len(bio.bio_layers())} bio layers)")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from .summary import summary
    from .transform import transform

    model, _ = _load_model(args.model)
    print(summary(transform(model, config_from_args(args))))
    return 0


def _demo(argv: list[str]) -> int:
    try:
        demo = importlib.import_module("biofx.demo")
    except ModuleNotFoundError as err:
        if err.name == "biofx.demo":
            print("biofx demo: error: this biofx installation has no demo (biofx/demo.py is missing)", file=sys.stderr)
        else:
            print(f'biofx demo: error: the demo needs {err.name}: pip install "biofx[demo]"', file=sys.stderr)
        return 2
    return demo.main(argv)


# -- models ----------------------------------------------------------------------------------
def _load_model(spec: str) -> tuple[nn.Module, Optional[torch.Tensor]]:
    """``(model, example input or None)`` for a zoo name or ``package.module:callable``."""
    import torch.nn as nn

    from . import zoo

    if ":" not in spec:
        if spec not in zoo.MODELS:
            raise UsageError(
                f"unknown model {spec!r}: use a zoo name ({', '.join(zoo.MODELS)}) or package.module:callable"
            )
        return zoo.get(spec)
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # like `python -m`, find modules in the working directory
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise UsageError(f"cannot import {module_name!r} for MODEL {spec!r}: {err}") from err
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


# biofx.passes.plan's message when Γ does not divide a layer's outputs; its fix names Python calls
_GAMMA_ERROR = re.compile(
    r"(?P<what>weight_splitting_Gamma .* of layer '(?P<layer>[^']+)' \(.*?\)\.) Choose a Γ that divides (?P<n>\d+), .*"
)


def _command_line_fix(message: str) -> str:
    """``message``, with the fix of a Γ error spelled as this command's flags instead of Python."""
    match = _GAMMA_ERROR.fullmatch(message)
    if match is None:
        return message
    return (
        f"{match['what']} Choose a --weight-splitting-Gamma that divides {match['n']}, or leave the layer "
        f"unsplit with --skip-split {match['layer']} (or plain with --plain {match['layer']})."
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


# -- config flags ----------------------------------------------------------------------------
def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per BioConfig field, typed from the field's annotation; unset flags are ``None``."""
    from .config import BioConfig

    group = parser.add_argument_group("BioConfig fields (see biofx.BioConfig; unset flags keep the default)")
    hints = typing.get_type_hints(BioConfig)
    doc = _field_docs()
    for field in dataclasses.fields(BioConfig):
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
    import torch.nn as nn

    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return ",".join(value) or "none"
    if isinstance(value, nn.Module):
        return type(value).__name__.lower()
    return str(value)


def _field_docs() -> dict[str, str]:
    """``field -> its description`` from BioConfig's docstring, without reST markup."""
    from .config import BioConfig

    text = BioConfig.__doc__ or ""
    docs = {}
    for match in re.finditer(r"^\s+(\w+): (.+?)(?=\n\s+\w+: |\n\s*\n|\Z)", text, re.M | re.S):
        description = re.sub(r":\w+:`([^`]+)`", r"\1", " ".join(match.group(2).split())).replace("``", "")
        docs[match.group(1)] = description.replace("%", "%%")  # argparse formats help with %
    return docs
