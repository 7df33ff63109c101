"""The automatic path at run time: the live-layer registry and the optimizer-step hooks.

``torch.optim.optimizer.register_optimizer_step_pre_hook`` / ``..._post_hook`` fire at every
optimizer's ``step()``: after gradient accumulation and after DDP's all-reduce, without the
user passing the optimizer in. Mechanisms that need the step's whole gradient run here
(:data:`biofx.registry.PRE_STEP` and :data:`~biofx.registry.POST_STEP`):

* before the step, in the order of the authors' training loop (backward → synaptic scaling →
  rejuvenation → crystallization → step): ``scaling`` on ``.grad`` (activity statistics are
  folded first, summed over ranks under DDP), rejuvenation for layers with
  ``rejuvenate_every = N`` on every N-th step, ``crystallize`` on ``.grad``;
* after the step: with ``acts_on="update"`` (the default) the update each weight just took
  is rescaled by its fuzzy and volume factors, then crystallized; the step counters
  advance and dynamic fuzzy rates update (when ``fuzzy`` is automatic). For plain SGD (no
  momentum, no weight decay: :func:`is_plain_sgd`; stepped without a closure), whose step is
  ``−lr·g``, the gradient is scaled before the step instead: the same step, without keeping
  each weight.

Only layers whose weight the stepping optimizer holds are touched. With
``acts_on="gradient"`` the multiplicative mechanisms (``fuzzy``, ``volume``) act in the
backward graph instead (see ``biofx.ops``).

The hooks find the layers in the live-layer registry: every managed
:class:`~biofx.BioSynapses` registers itself when built or unpickled (:func:`register`); a
newer transform of the same model supersedes the older one's layers.
"""

from __future__ import annotations

import functools
import logging
import weakref
from typing import Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from . import registry, sharding
from ._warn import warn_user
from .mechanisms import dale, update
from .tiered_compile import kernel_scope

log = logging.getLogger("biofx")

__all__ = ["install", "register", "register_model", "live_synapses", "is_plain_sgd", "before_step", "after_step"]

# Every live BioSynapses, and a counter of registrations so the hooks know when to look again.
_LIVE: weakref.WeakSet = weakref.WeakSet()
_REGISTRATIONS = [0]
_HANDLES: list = []
_CACHE: "weakref.WeakKeyDictionary[torch.optim.Optimizer, tuple]" = weakref.WeakKeyDictionary()
# Every weight a bio layer was registered with, by id: (a weak reference to it, the layer's
# name); an optimizer that steps one that no live layer drives is warned once (_REPORTED). Not a
# WeakKeyDictionary: its lookups compare tensors with ==, which is elementwise.
_DRIVEN: dict = {}
_REPORTED: weakref.WeakSet = weakref.WeakSet()
# Every live transformed model (its root), and per model the paths already warned about: a
# plain layer put into a bio model after the transform trains plain (_report_new_layers)
_MODELS: weakref.WeakSet = weakref.WeakSet()
_NEW_REPORTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SETUP_REPORTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> problems warned about
# From the pre-step to the post-step hook: each layer's weight (this rank's shard) with
# acts_on="update" (unless the optimizer is plain SGD), and DANN's interneuron weights (BioSynapses.correct_interneurons_before_step)
_WEIGHT_BEFORE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_INTERNEURONS_BEFORE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def no_grad(fn: Callable) -> Callable:
    """``torch.no_grad()`` as a decorator that enters no-grad mode only when grad mode is on.

    The step hooks already run under no-grad; ``torch.no_grad()`` would still build and enter
    a context at each of the twenty-odd decorated calls of a step (a third of the hooks' Python
    time on a small model). Called outside the hooks, it behaves as ``torch.no_grad()``.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not torch.is_grad_enabled():
            return fn(*args, **kwargs)
        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


# -- the live-layer registry ----------------------------------------------------------------
def register(synapses) -> None:
    """Add a live state (a :class:`~biofx.BioSynapses`); an older live state of the same
    Parameter (an earlier transform of the same model) is superseded: the optimizer-step
    hooks stop driving it."""
    for other in live_synapses()[1]:
        if other is not synapses and other.weight is synapses.weight and not other.superseded:
            other.superseded = True
            log.warning(
                "biofx: %r was already driven by an earlier transform of the same model; "
                "the newer transform takes it over and the earlier one stops acting at the step",
                synapses.layer_name,
            )
    _LIVE.add(synapses)
    weight = synapses.weight
    _DRIVEN[id(weight)] = (weakref.ref(weight, lambda _, key=id(weight): _DRIVEN.pop(key, None)), synapses.layer_name)
    _REGISTRATIONS[0] += 1


def register_model(model) -> None:
    """Add a transformed model: the hooks say when a layer put into it later trains plain."""
    _MODELS.add(model)
    _REGISTRATIONS[0] += 1


def live_synapses() -> tuple[int, list]:
    """The registration count and every live, managed BioSynapses whose layer exists."""
    return _REGISTRATIONS[0], [synapses for synapses in list(_LIVE) if synapses.alive]


# -- the optimizer-step hooks ---------------------------------------------------------------
def _layers_of(optimizer: torch.optim.Optimizer) -> list:
    """The live layers whose weight ``optimizer`` steps, in its parameter order (cached until a
    layer registers or dies, a layer's weight is replaced, or the optimizer's parameters change)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    registrations, live = live_synapses()
    signature = (len(params), registrations)
    cached = _CACHE.get(optimizer)
    if cached is not None and cached[0] == signature:
        layers = [ref() for ref, _ in cached[1]]
        if all(s is not None and s.weight is weight() for s, (_, weight) in zip(layers, cached[1])):
            return layers
    position = {id(p): i for i, p in enumerate(params)}
    # Order by the optimizer's parameter order: the same on every rank, so collectives
    # (activity statistics under DDP) are issued in the same order everywhere.
    layers = [s for s in live if id(s.weight) in position and not s.superseded]
    layers.sort(key=lambda s: position[id(s.weight)])
    _CACHE[optimizer] = (signature, [(weakref.ref(s), weakref.ref(s.weight)) for s in layers])
    _report_undriven(optimizer, params, layers)
    _report_new_layers(position)
    _report_setup(optimizer, position, layers)
    return layers


def _report_setup(optimizer: torch.optim.Optimizer, position: dict, layers: list) -> None:
    """Warn (once per optimizer and problem) about a set-up that trains otherwise than asked:

    * DANN's interneuron weights (``dale_w_ei``, ``dale_w_ie``) are added by the transform, so
      an optimizer built before it holds the layer's weight but not them: they never train;
    * automatic rejuvenation under momentum or an adaptive optimizer: the re-drawn weights keep
      the optimizer's state of the old ones, and training diverges or loses accuracy (measured
      on digits with SGD momentum 0.9: every 1 or 50 steps NaN, every 400 steps 0.93 against 0.97)."""
    missing = [
        layer.layer_name
        for layer in layers
        if registry.DALE.is_on(layer.config) and layer.config.dale_mode == "dann"
        and any(id(getattr(layer.layer, name)) not in position for name in dale.INTERNEURON_PARAMS)
    ]
    reported = _SETUP_REPORTED.setdefault(optimizer, set())
    if missing and "interneurons" not in reported:
        reported.add("interneurons")
        warn_user(
            f"biofx: this optimizer does not hold the DANN interneuron weights (dale_w_ei, dale_w_ie) of "
            f"{_names(missing)}, so they never train: build the optimizer after biofx.transform, which adds them",
            RuntimeWarning,
        )
    turnover = [layer.layer_name for layer in layers if registry.REJUVENATE.is_on(layer.config)]
    if turnover and not is_plain_sgd(optimizer) and "turnover under momentum" not in reported:
        reported.add("turnover under momentum")
        warn_user(
            f"biofx: automatic rejuvenation ({_names(turnover)}) with {type(optimizer).__name__} and momentum or "
            "adaptive state: re-drawn weights keep the optimizer state of the weights they replace. Measured on "
            "digits (SGD momentum 0.9): rejuvenating every 1 or 50 steps diverged to NaN, every 100/200/400 steps "
            "ended at 0.70/0.89/0.93 accuracy against 0.97 without. Rejuvenate with plain SGD (see concepts: "
            "rejuvenation)",
            RuntimeWarning,
        )


def _names(names: list) -> str:
    shown = ", ".join(repr(name) for name in names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _report_new_layers(position: dict) -> None:
    """Warn (once per layer, one warning per model) when the optimizer steps plain layers of a
    known kind that were put into a transformed model after the transform (``model.fc =
    nn.Linear(...)``, PEFT's LoRA factors)."""
    for model in list(_MODELS):
        reported = _NEW_REPORTED.setdefault(model, set())
        new = [
            path
            for path in model.unconverted_new_layers()
            if path not in reported and id(getattr(model.get_submodule(path), "weight", None)) in position
        ]
        if not new:
            continue
        reported.update(new)
        plans = model.__dict__.get("_biofx_plans", {})
        if all(path in plans for path in new):
            one = "it" if len(new) == 1 else "them"
            fix = f"call bio.convert_replaced_layers() to convert {one} with the config of the layer it replaced"
        else:
            fix = (
                "biofx.transform converts a model once: add layers before it (with PEFT: "
                "biofx.transform(get_peft_model(model)), or leave the adapters plain on purpose)"
            )
        if len(new) == 1:
            what = f"layer {new[0]!r} ({type(model.get_submodule(new[0])).__name__}) was"
        else:
            what = f"layers {_names(new)} were"
        warn_user(
            f"biofx: {what} put into the model after biofx.transform and train{'s' * (len(new) == 1)} "
            f"without the bio mechanisms; {fix}",
            RuntimeWarning,
        )


def _report_undriven(optimizer: torch.optim.Optimizer, params: list, layers: list) -> None:
    """Warn (once per optimizer) when it steps weights that bio layers drove and none drives now:
    the bio model was garbage-collected, or a layer's weight was replaced by another Parameter
    after the optimizer was built (``load_state_dict(assign=True)``, ``to_empty``). Those
    weights would otherwise train plain without a word."""
    if optimizer in _REPORTED:
        return
    driven = {id(s.weight) for s in layers}
    names = []
    for p in params:
        entry = _DRIVEN.get(id(p))
        if entry is not None and entry[0]() is p and id(p) not in driven:
            names.append(entry[1])
    if names:
        _REPORTED.add(optimizer)
        warn_user(
            f"biofx: this optimizer steps the weights of bio layers {_names(names)}, but no live bio layer drives them "
            "any more, so they train without the bio mechanisms: the model biofx.transform returned was "
            "garbage-collected (keep a reference to it while training), or the layers' weights were replaced "
            "by other Parameters after the optimizer was built (build the optimizer after load_state_dict("
            "assign=True) or to_empty)",
            RuntimeWarning,
        )


def is_plain_sgd(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` steps by ``w ← w − lr·g`` (``torch.optim.SGD`` itself, without
    momentum or weight decay in any group), so that scaling g scales its update exactly."""
    return type(optimizer) is torch.optim.SGD and all(
        group["momentum"] == 0 and group["weight_decay"] == 0 for group in optimizer.param_groups
    )


# -- the schedule of one layer ---------------------------------------------------------------
@no_grad
def before_step(layer, plain_sgd: bool = False) -> None:
    """A layer's step-level work before the optimizer's update, in the authors' order.

    After backward: (for a tied weight with ``acts_on="gradient"``, fuzzy and volume on its
    whole g), synaptic scaling (on g), rejuvenation (every ``rejuvenate_every``-th step),
    then crystallization on g and the rejuvenated w, and the step. With ``acts_on="update"``
    the weight is kept so :func:`after_step` can rescale the update; crystallization then
    waits until the update has used this step's multipliers. With ``plain_sgd``
    (:func:`is_plain_sgd`) the update's factors and crystallization act on g instead, now.
    """
    config = layer.config
    _INTERNEURONS_BEFORE[layer] = layer.correct_interneurons_before_step(plain_sgd)
    has_grad = layer.weight.grad is not None
    if has_grad and layer.shared_with and config.acts_on == "gradient":
        for mechanism in registry.MULTIPLICATIVE:
            if layer.is_automatic(mechanism):
                getattr(layer, mechanism.method)()
    if has_grad and layer.is_automatic(registry.SCALING):
        layer.scale_grad()
    if registry.REJUVENATE.is_on(config) and (layer.steps.value + 1) % config.rejuvenate_every == 0:
        layer.rejuvenate_weights()
    if not has_grad:
        return
    if config.scales_update and plain_sgd:
        update.scale_grad_for_step_(layer.update_step())
    elif config.scales_update:
        _WEIGHT_BEFORE[layer] = sharding.local(layer.weight).detach().clone()
    elif layer.is_automatic(registry.CRYSTALLIZE):
        layer.crystallize()


@no_grad
def after_step(layer) -> None:
    """After the update: DANN's interneuron updates corrected, then (``acts_on="update"``, not
    plain SGD) the weight's update rescaled and crystallized on."""
    layer.correct_interneurons_after_step(_INTERNEURONS_BEFORE.pop(layer, []))
    before = _WEIGHT_BEFORE.pop(layer, None)
    if before is not None:
        update.scale_step_(layer.update_step(before))


# -- the hooks ------------------------------------------------------------------------------
@no_grad
def _before_step(optimizer, args, kwargs) -> None:
    layers = _layers_of(optimizer)
    # a closure recomputes the gradient inside step(): only the update can be rescaled then
    # (``args`` are step()'s, the optimizer first)
    closure = args[1] if len(args) > 1 else kwargs.get("closure")
    plain_sgd = bool(layers) and closure is None and is_plain_sgd(optimizer)
    with kernel_scope():
        for layer in layers:
            before_step(layer, plain_sgd)


@no_grad
def _after_step(optimizer, args, kwargs) -> None:
    layers = _layers_of(optimizer)
    if not layers:
        return
    with kernel_scope():
        for layer in layers:
            after_step(layer)
        torch._foreach_add_([layer.steps.tensor for layer in layers], 1)
        for layer in layers:
            layer.steps.value += 1  # the tensors advanced in bulk above
            if layer.is_automatic(registry.FUZZY):
                layer.update_fuzzy_learning_rates()


def install() -> None:
    """Register the global hooks once (idempotent)."""
    if not _HANDLES:
        _HANDLES.append(register_optimizer_step_pre_hook(_before_step))
        _HANDLES.append(register_optimizer_step_post_hook(_after_step))
