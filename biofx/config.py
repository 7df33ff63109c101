"""Configuration: :class:`BioConfig`, :class:`Distribution` and per-layer selection.

``BioConfig`` carries every field of the reference library's ``BioConfig`` (same names,
same defaults) plus biofx's own fields. It is an immutable dataclass validated when built:
a bad value raises ``ValueError``/``TypeError`` naming the field, the value and what is
allowed. ``replace`` (alias ``_replace``) copies with changes; ``to_dict``/``from_dict`` and
``to_json``/``from_json`` round-trip every field.
"""

from __future__ import annotations

import dataclasses
import functools
import enum
import importlib
import json
import math
import re
from typing import Any, Callable, Mapping, Optional, Union

import torch.nn as nn

from . import registry
from .mechanisms.dale import MODES as DALE_MODES

__all__ = ["BioConfig", "Distribution", "ConfigMap", "MECHANISMS", "DEFAULT_BIO_CONFIG"]


class Distribution(str, enum.Enum):
    """How the fuzzy learning-rate multipliers are drawn (values are lower-case names)."""

    BASELINE = "baseline"
    UNIFORM = "uniform"
    NORMAL = "normal"
    LOGNORMAL = "lognormal"
    GAMMA = "gamma"
    BETA = "beta"
    LAYER_ADAPTIVE = "layer_adaptive"
    WEIGHT_ADAPTIVE = "weight_adaptive"
    TEMPORAL = "temporal"
    ACTIVITY = "activity"


#: Gradient mechanisms that ``BioConfig.automatic`` may name (from :mod:`biofx.registry`).
MECHANISMS = registry.automatic_names()
#: Where the automatic multiplicative mechanisms act (``BioConfig.acts_on``).
ACTS_ON = ("update", "gradient")
#: How the multipliers are kept (``BioConfig.fuzzy_lr_storage``).
FUZZY_LR_STORAGE = ("buffer", "counter")
#: The distributions whose f is a pure function of the layer and the weight's index, so that
#: ``fuzzy_lr_storage="counter"`` can recompute it.
COUNTER_DISTRIBUTIONS = (
    Distribution.BASELINE, Distribution.UNIFORM, Distribution.NORMAL, Distribution.LOGNORMAL,
    Distribution.LAYER_ADAPTIVE,
)  # fmt: skip

# Short names accepted for ``weight_splitting_activation_function`` (config files, CLI).
_ACTIVATIONS = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


def _activation_key(fn: Callable) -> Any:
    """Equality key for an activation: modules compare by class and repr, functions by identity."""
    if isinstance(fn, nn.Module):
        return (type(fn), repr(fn))
    return fn


@dataclasses.dataclass(frozen=True, eq=False)
class BioConfig:
    """Parameters of every bio mechanism (ν = ``fuzzy_learning_rate_factor_nu``).

    Reference fields (names and defaults of ``pytorch_bio_transformations`` 0.0.5):

    Args:
        weight_splitting_activation_function: activation applied to a split layer's output
            before the group sum (a module, a function, or a name such as ``"relu"``).
        fuzzy_learning_rate_factor_nu: ν, the spread of the fuzzy learning rates.
        dampening_factor: factor in (0, 1) applied to a crystallized weight's multiplier.
        crystal_thresh: crystallize where ``|g|/|w| < crystal_thresh``.
        rejuvenation_parameter_dre: d_re; larger means fewer weights are rejuvenated.
        weight_splitting_Gamma: Γ, synapses per connection (0 or 1 = off).
        apply_dales_principle: Dale's principle: by default (``dale_mode="dann"``) excitatory
            inputs and inhibitory interneurons that subtract (DANN: ``W = |W_EE| − |W_EI|·|W_IE|``,
            adding the parameters ``dale_w_ei`` and ``dale_w_ie``); ``dale_mode="column"``: one
            sign per presynaptic unit.
        base_lr: volume-dependent plasticity's base rate, in (0, 1).
        stability_factor: how fast plasticity falls with weight volume.
        lr_variability: relative spread of the volume-dependent factor.
        fuzzy_lr_distribution: a :class:`Distribution` member or its string value.
        fuzzy_lr_min: lower clamp of the multipliers.
        fuzzy_lr_max: upper clamp of the multipliers.
        fuzzy_lr_dynamic: whether TEMPORAL/ACTIVITY multipliers are updated during training.
        fuzzy_lr_decay: TEMPORAL decay towards 1 per due update.
        fuzzy_lr_update_freq: TEMPORAL/ACTIVITY act on every ``fuzzy_lr_update_freq``-th update.
        fuzzy_lr_layer_index: LAYER_ADAPTIVE layer position (``-1``: set by the transform).
        fuzzy_lr_total_layers: LAYER_ADAPTIVE layer count (``-1``: set by the transform).

    biofx fields:

    Args:
        automatic: mechanisms biofx applies by itself, a subset of
            ``("fuzzy", "volume", "crystallize", "scaling")``. Default ``("fuzzy",)``: the
            user's training loop is unchanged; calling the method of an automatic mechanism
            is then a no-op, so nothing is applied twice.
        acts_on: where automatic ``fuzzy`` and ``volume`` multiply: ``"update"`` (default)
            scales each weight's optimizer update at the step, ``Δw ← f·Δw``, a per-weight
            learning rate under any optimizer; ``"gradient"`` scales the gradient in
            ``loss.backward()``, ``g ← g·f`` (the paper's formulation; the same as
            ``"update"`` for plain SGD, but cancelled by Adam's per-weight normalization).
        dale_excitatory_fraction: fraction of presynaptic units that are excitatory.
        dale_mode: ``"dann"`` (default: inhibitory interneurons subtract, ``W = |W_EE| −
            |W_EI|·|W_IE|``) or ``"column"`` (one sign per presynaptic unit, ``W = s·|w|``).
        synaptic_scaling_gamma: γ of synaptic scaling ``g ← g − γ·(a_target − ā_i)·w``
            (0 disables it).
        synaptic_scaling_target: a_target, the target mean activity of a unit.
        activity_momentum: momentum of the running mean activity ā per optimizer step.
        rejuvenate_every: rejuvenate automatically after every N-th optimizer step (0 = never).
        rejuvenation_rule: ``"paper"`` (default) or ``"lognormal"`` (the reference's later rule).
        fuzzy_lr_storage: how the multipliers f are kept. ``"buffer"`` (default): the float32
            buffer ``fuzzy_lr``, 4 bytes per weight. ``"counter"``: f is recomputed at each use
            from biofx's counter-based generator, ``f = f₀·dampening_factor^c``, with only the
            per-weight count c of crystallizations stored (``fuzzy_dampenings``, 1 byte per
            weight for ``dampening_factor`` ≤ 0.66, else 2 or 4). For the static
            distributions (BASELINE, UNIFORM, NORMAL, LOGNORMAL, LAYER_ADAPTIVE); f₀ is then
            drawn by biofx's generator rather than ``torch.rand``.
        seed: seed of every draw biofx makes; ``None`` takes one from ``torch``'s global RNG.
    """

    weight_splitting_activation_function: Callable[[Any], Any] = dataclasses.field(default_factory=nn.Identity)
    fuzzy_learning_rate_factor_nu: float = 0.16
    dampening_factor: float = 0.6
    crystal_thresh: float = 4.5e-05
    rejuvenation_parameter_dre: float = 8.0
    weight_splitting_Gamma: int = 0
    apply_dales_principle: bool = False
    base_lr: float = 0.1
    stability_factor: float = 2.0
    lr_variability: float = 0.2
    fuzzy_lr_distribution: Distribution = Distribution.UNIFORM
    fuzzy_lr_min: float = 0.5
    fuzzy_lr_max: float = 2.0
    fuzzy_lr_dynamic: bool = False
    fuzzy_lr_decay: float = 0.9995
    fuzzy_lr_update_freq: int = 100
    fuzzy_lr_layer_index: int = -1
    fuzzy_lr_total_layers: int = -1
    # biofx's own fields
    automatic: tuple = (registry.FUZZY.name,)
    acts_on: str = "update"
    dale_excitatory_fraction: float = 0.8
    dale_mode: str = "dann"
    synaptic_scaling_gamma: float = 0.0
    synaptic_scaling_target: float = 0.1
    activity_momentum: float = 0.9
    rejuvenate_every: int = 0
    rejuvenation_rule: str = "paper"
    fuzzy_lr_storage: str = "buffer"
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("weight_splitting_activation_function", _check_activation(self.weight_splitting_activation_function))
        set_("fuzzy_lr_distribution", _check_enum("fuzzy_lr_distribution", self.fuzzy_lr_distribution, Distribution))
        set_("automatic", _check_automatic(self.automatic))
        for name, low, high, open_low, open_high in _FLOAT_RANGES:
            set_(name, _check_float(name, getattr(self, name), low, high, open_low, open_high))
        for name, low in _INT_MINIMA:
            _check_int(name, getattr(self, name), low)
        for name in ("apply_dales_principle", "fuzzy_lr_dynamic"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"BioConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.fuzzy_lr_min > self.fuzzy_lr_max:
            raise ValueError(
                f"BioConfig.fuzzy_lr_min ({self.fuzzy_lr_min}) must not exceed fuzzy_lr_max ({self.fuzzy_lr_max})"
            )
        if self.acts_on not in ACTS_ON:
            raise ValueError(f"BioConfig.acts_on must be 'update' or 'gradient', got {self.acts_on!r}")
        if self.rejuvenation_rule not in ("paper", "lognormal"):
            raise ValueError(
                f"BioConfig.rejuvenation_rule must be 'paper' or 'lognormal', got {self.rejuvenation_rule!r}"
            )
        if self.fuzzy_lr_storage not in FUZZY_LR_STORAGE:
            raise ValueError(
                f"BioConfig.fuzzy_lr_storage must be 'buffer' or 'counter', got {self.fuzzy_lr_storage!r}"
            )
        if self.fuzzy_lr_storage == "counter" and self.fuzzy_lr_distribution not in COUNTER_DISTRIBUTIONS:
            names = ", ".join(d.name for d in COUNTER_DISTRIBUTIONS)
            raise ValueError(
                f"BioConfig.fuzzy_lr_storage='counter' recomputes f from the counter-based generator, which "
                f"{self.fuzzy_lr_distribution.name} cannot use (it is not a pure function of the layer and the "
                f"weight's index); use one of {names}, or fuzzy_lr_storage='buffer'"
            )
        if self.dale_mode not in DALE_MODES:
            raise ValueError(f"BioConfig.dale_mode must be 'dann' or 'column', got {self.dale_mode!r}")
        if self.apply_dales_principle and self.dale_mode == "dann" and self.dale_excitatory_fraction == 0:
            raise ValueError(
                "BioConfig.dale_excitatory_fraction=0 leaves dale_mode='dann' no excitatory units; "
                "use a fraction in (0, 1] or dale_mode='column'"
            )
        if self.seed is not None:
            _check_int("seed", self.seed, 0)

    # -- copying -------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "BioConfig":
        """A copy with ``changes`` applied (validated like a new config)."""
        unknown = sorted(set(changes) - _FIELD_NAMES)
        if unknown:
            raise TypeError(f"BioConfig has no field {unknown[0]!r}{_did_you_mean(unknown[0])}")
        return dataclasses.replace(self, **changes)

    _replace = replace  # the reference's NamedTuple spelling

    # -- equality ------------------------------------------------------------------------
    def _key(self) -> tuple:
        return tuple(
            _activation_key(v) if f == "weight_splitting_activation_function" else v
            for f, v in ((f.name, getattr(self, f.name)) for f in dataclasses.fields(self))
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BioConfig) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    # -- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict:
        """All fields as a dict (values as stored: the activation stays an object)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BioConfig":
        """Build from a dict such as :meth:`to_dict` returns; unknown keys are an error."""
        unknown = sorted(set(data) - _FIELD_NAMES)
        if unknown:
            raise TypeError(f"BioConfig has no field {unknown[0]!r}{_did_you_mean(unknown[0])}")
        return cls(**data)

    def to_json(self) -> str:
        """JSON text; the activation is written as its import path (e.g. ``torch.nn.ReLU``)."""
        data = self.to_dict()
        data["weight_splitting_activation_function"] = _activation_path(self.weight_splitting_activation_function)
        data["fuzzy_lr_distribution"] = self.fuzzy_lr_distribution.value
        data["automatic"] = list(self.automatic)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "BioConfig":
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        path = data.get("weight_splitting_activation_function")
        if isinstance(path, str) and path.lower() not in _ACTIVATIONS:
            data["weight_splitting_activation_function"] = _import_activation(path)
        return cls.from_dict(data)

    # -- derived -------------------------------------------------------------------------
    @property
    def splits(self) -> bool:
        """Whether weight splitting is on (Γ > 1)."""
        return self.weight_splitting_Gamma > 1

    @property
    def scales_update(self) -> bool:
        """Whether automatic fuzzy or volume factors scale the optimizer's update at the step."""
        return self.acts_on == "update" and any(m.is_on(self) for m in registry.MULTIPLICATIVE)

    @property
    def tracks_activity(self) -> bool:
        """Whether layers need an activity probe in the forward pass."""
        activity_lr = self.fuzzy_lr_distribution is Distribution.ACTIVITY and self.fuzzy_lr_dynamic
        return activity_lr or self.synaptic_scaling_gamma > 0


# name, low, high, open_low, open_high  (None = unbounded)
_FLOAT_RANGES = (
    ("fuzzy_learning_rate_factor_nu", 0.0, None, True, False),
    ("dampening_factor", 0.0, 1.0, True, True),
    ("crystal_thresh", 0.0, None, True, False),
    ("rejuvenation_parameter_dre", 0.0, None, True, False),
    ("base_lr", 0.0, 1.0, True, True),
    ("stability_factor", 0.0, None, True, False),
    ("lr_variability", 0.0, None, True, False),
    ("fuzzy_lr_min", 0.0, None, True, False),
    ("fuzzy_lr_max", 0.0, None, True, False),
    ("fuzzy_lr_decay", 0.0, 1.0, True, False),
    ("dale_excitatory_fraction", 0.0, 1.0, False, False),
    ("synaptic_scaling_gamma", 0.0, None, False, False),
    ("synaptic_scaling_target", 0.0, None, False, False),
    ("activity_momentum", 0.0, 1.0, False, True),
)
_INT_MINIMA = (
    ("weight_splitting_Gamma", 0),
    ("fuzzy_lr_update_freq", 1),
    ("fuzzy_lr_layer_index", -1),
    ("fuzzy_lr_total_layers", -1),
    ("rejuvenate_every", 0),
)
_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(BioConfig))


def _checked_init(init: Callable) -> Callable:
    """The dataclass ``__init__`` with a "did you mean" for a misspelt field (its own error
    says only "unexpected keyword argument")."""

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - _FIELD_NAMES)
        if unknown:
            raise TypeError(f"BioConfig has no field {unknown[0]!r}{_did_you_mean(unknown[0])}")
        init(self, *args, **kwargs)

    return __init__


BioConfig.__init__ = _checked_init(BioConfig.__init__)


def _did_you_mean(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(_FIELD_NAMES), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_float(name: str, value: Any, low, high, open_low: bool, open_high: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"BioConfig.{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    lo = "(" if open_low else "["
    hi = ")" if open_high else "]"
    allowed = f"{lo}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}{hi}"
    bad = not math.isfinite(value)
    bad |= low is not None and (value <= low if open_low else value < low)
    bad |= high is not None and (value >= high if open_high else value > high)
    if bad:
        raise ValueError(f"BioConfig.{name} must be in {allowed}, got {value!r}")
    return value


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"BioConfig.{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"BioConfig.{name} must be >= {low}, got {value}")


def _check_enum(name: str, value: Any, enum_type: type) -> Any:
    try:
        return enum_type(value.lower() if isinstance(value, str) else value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum_type)
        raise ValueError(f"BioConfig.{name} must be one of {allowed}; got {value!r}") from None


def _check_automatic(value: Any) -> tuple:
    if isinstance(value, str):
        value = (value,) if value else ()
    if not isinstance(value, (tuple, list, set, frozenset)):
        raise TypeError(f"BioConfig.automatic must be a tuple of mechanism names, got {value!r}")
    unknown = [v for v in value if v not in MECHANISMS]
    if unknown:
        raise ValueError(f"BioConfig.automatic: unknown mechanism {unknown[0]!r}; allowed: {', '.join(MECHANISMS)}")
    return tuple(m for m in MECHANISMS if m in value)  # canonical order, no duplicates


def _check_activation(value: Any) -> Callable:
    if isinstance(value, str):
        if value.lower() not in _ACTIVATIONS:
            raise ValueError(
                f"BioConfig.weight_splitting_activation_function: unknown name {value!r}; "
                f"allowed: {', '.join(_ACTIVATIONS)} (or pass a module or function)"
            )
        return _ACTIVATIONS[value.lower()]()
    if not callable(value):
        raise TypeError(
            f"BioConfig.weight_splitting_activation_function must be callable, got {value!r} ({type(value).__name__})"
        )
    return value


def _activation_path(fn: Callable) -> str:
    target = fn
    if isinstance(fn, nn.Module):
        target = type(fn)
        try:
            same = repr(target()) == repr(fn)
        except TypeError:
            same = False
        if not same:
            raise TypeError(
                "BioConfig.weight_splitting_activation_function cannot be written to JSON: "
                f"{fn!r} is not a module built without arguments"
            )
    path = f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}"
    if "<" in path:
        raise TypeError(
            f"BioConfig.weight_splitting_activation_function {fn!r} is not importable, cannot write JSON"
        )
    return path


def _import_activation(path: str) -> Callable:
    module_name, _, attr = path.rpartition(".")
    target = getattr(importlib.import_module(module_name), attr)
    return target() if isinstance(target, type) else target


DEFAULT_BIO_CONFIG = BioConfig()


class ConfigMap:
    """Choose a :class:`BioConfig` per layer; ``None`` leaves a layer plain.

    Precedence, highest first (like torchao's module-name-to-config mapping):

    1. an exact module name (``"encoder.fc1"``),
    2. a ``"re:"`` regular expression that fully matches the name (first in insertion order),
    3. a module type (``nn.Conv2d``; the most specific class in the MRO wins),
    4. ``default``.

    A name or regular expression that matches no convertible layer is an error, not a no-op.

    Example::

        ConfigMap({"re:.*head": None, nn.Conv2d: BioConfig(weight_splitting_Gamma=2)},
                  default=BioConfig())
    """

    def __init__(
        self,
        mapping: Optional[Mapping[Union[str, type], Optional[BioConfig]]] = None,
        default: Optional[BioConfig] = None,
    ) -> None:
        self.default = BioConfig() if default is None else default
        self.names: dict = {}
        self.patterns: dict = {}
        self.types: dict = {}
        for key, cfg in (mapping or {}).items():
            if cfg is not None and not isinstance(cfg, BioConfig):
                raise TypeError(f"ConfigMap[{key!r}] must be a BioConfig or None, got {type(cfg).__name__}")
            if isinstance(key, type) and issubclass(key, nn.Module):
                self.types[key] = cfg
            elif isinstance(key, str) and key.startswith("re:"):
                try:
                    self.patterns[key] = (re.compile(key[3:]), cfg)
                except re.error as err:
                    raise ValueError(f"ConfigMap key {key!r} is not a valid regular expression: {err}") from None
            elif isinstance(key, str):
                self.names[key] = cfg
            else:
                raise TypeError(
                    f"ConfigMap keys are module names, 're:' patterns or nn.Module types, got {key!r}"
                )
        if not isinstance(self.default, BioConfig):
            raise TypeError(f"ConfigMap default must be a BioConfig, got {type(self.default).__name__}")

    def replace(self, **changes: Any) -> "ConfigMap":
        """A copy with ``changes`` applied to every config in it (``None`` entries stay ``None``)."""
        mapping = {**self.names, **{key: cfg for key, (_, cfg) in self.patterns.items()}, **self.types}
        mapping = {key: (cfg.replace(**changes) if cfg is not None else None) for key, cfg in mapping.items()}
        return ConfigMap(mapping, self.default.replace(**changes))

    def select(self, name: str, module: nn.Module) -> tuple[Optional[BioConfig], str]:
        """The config for the layer ``name`` and which rule chose it."""
        if name in self.names:
            return self.names[name], f"name {name!r}"
        for key, (pattern, cfg) in self.patterns.items():
            if pattern.fullmatch(name):
                return cfg, f"pattern {key!r}"
        for cls in type(module).__mro__:
            if cls in self.types:
                return self.types[cls], f"type {cls.__name__}"
        return self.default, "default"

    def check_all_used(self, layer_names: list[str]) -> None:
        """Raise if a name or pattern matched none of ``layer_names``."""
        for name in self.names:
            if name not in layer_names:
                import difflib

                close = difflib.get_close_matches(name, layer_names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; layers: {', '.join(layer_names)}"
                raise ValueError(f"ConfigMap name {name!r} matches no convertible layer{hint}")
        for key, (pattern, _) in self.patterns.items():
            if not any(pattern.fullmatch(n) for n in layer_names):
                raise ValueError(
                    f"ConfigMap pattern {key!r} fully matches no convertible layer; layers: {', '.join(layer_names)}"
                )
