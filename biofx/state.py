"""Per-layer bio state: :class:`BioSynapses`.

One ``BioSynapses`` module sits beside every converted layer (under the bio model's
``biofx_state`` dict). It owns the layer's bio state as registered buffers, so
``state_dict()`` holds all of it and loads with ``torch.load(weights_only=True)``:

====================  =============  ==================================================
buffer                shape, dtype   meaning
====================  =============  ==================================================
``fuzzy_lr``          weight, f32    fuzzy learning-rate multipliers f
                                     (``fuzzy_lr_storage="buffer"``, the default)
``fuzzy_dampenings``  weight, uint8  with ``fuzzy_lr_storage="counter"``: each weight's
                                     count c of crystallizations, f = f₀·d^c with f₀
                                     recomputed (int16/int32 for d > 0.66)
``rng_key``           (), int64      the layer's counter-based RNG key (from the seed)
``step``              (), int64      optimizer steps taken (keys the volume noise)
``updates``           (), int64      fuzzy-rate updates done (TEMPORAL/ACTIVITY)
``rejuvenations``     (), int64      rejuvenations done (keys their noise)
``dale_sign``         bcast, f32     ±1 per presynaptic unit (Dale's principle only; +1 in DANN mode)
``activity_*``        (C,), f32      activity statistics (ACTIVITY / synaptic scaling only)
====================  =============  ==================================================

Under FSDP2 (``fully_shard``) the step-level mechanisms act on each rank's shard of the weight
and ``fuzzy_lr`` (or ``fuzzy_dampenings``) becomes a DTensor sharded like it (:mod:`biofx.sharding`).

Bio state keeps its dtypes (float32, the counts integer) when the model is cast (``model.half()``)
or runs under autocast.
The module is also the activity probe: called on the layer's output in the forward pass,
it counts activity in training mode and returns the output unchanged.

This module holds state and pure per-layer methods. Which layers are live and when their
step-level methods run is the run time's business (:mod:`biofx.runtime`). A layer-level
method has the name of the model-level method that calls it (:mod:`biofx.registry`).
"""

from __future__ import annotations

import logging
import weakref
from typing import Optional

import torch
import torch.nn as nn

from . import registry, rng, runtime, sharding
from ._leaf import bio_annotation
from .config import BioConfig, Distribution
from .layers import LayerKind
from .mechanisms import crystallize, dale, fuzzy, rejuvenate, scaling, update, volume
from .runtime import no_grad

log = logging.getLogger("biofx")

#: The ``nn.ModuleDict`` of a bio model that holds every layer's state module.
STATE_ROOT = "biofx_state"

#: Buffers that count activity per rank between optimizer steps (summed over ranks at the
#: step), which DistributedDataParallel must not overwrite with rank 0's at each forward.
RANK_LOCAL_BUFFERS = ("activity_sum", "activity_active", "activity_n")

#: The buffer that holds the multipliers' per-weight state, by ``BioConfig.fuzzy_lr_storage``.
PER_WEIGHT_BUFFERS = {"buffer": "fuzzy_lr", "counter": "fuzzy_dampenings"}


class Counter:
    """One counter of a layer: the int64 buffer ``<name>`` of its state module (saved in
    ``state_dict()``, read on the device by graph nodes and RNG keys) and its value on the host
    (:attr:`value`, for schedule decisions without a device sync). :meth:`add` advances both;
    :meth:`sync` reads the buffer once (after loading a checkpoint).
    """

    def __init__(self, owner: nn.Module, name: str) -> None:
        # the owner's buffer dict, not the owner: no reference cycle, so a dropped model's
        # state leaves the live-layer registry at once (deepcopy and pickle keep the pairing)
        self._buffers, self.name, self.value = owner._buffers, name, 0

    @property
    def tensor(self) -> torch.Tensor:
        return self._buffers[self.name]

    def add(self, n: int = 1) -> None:
        self.value += n
        self.tensor.add_(n)

    def sync(self) -> None:
        self.value = int(self.tensor)


class BioSynapses(nn.Module):
    """Bio state and per-layer mechanisms of one converted layer.

    Args:
        name: the layer's module path in the model (``"encoder.fc1"``).
        layer: the converted layer (its parameters stay where they were).
        kind: the layer's :class:`~biofx.layers.LayerKind`.
        config: the layer's :class:`~biofx.BioConfig`.
        index: position among the model's bio layers in execution order.
        total: number of bio layers.
        seed: the model seed.
        register: whether the optimizer-step hooks drive it (False for a scratch copy).
    """

    #: driven by the model-level methods and the optimizer-step hooks
    managed = True
    #: set when a newer transform of the same model took this layer's weight over
    superseded = False

    def __init__(
        self,
        name: str,
        layer: nn.Module,
        kind: LayerKind,
        config: BioConfig,
        index: int,
        total: int,
        seed: int,
        *,
        register: bool = True,
    ) -> None:
        super().__init__()
        self.layer_name = name
        self.kind = kind
        self.config = config
        self.index = index
        # a weak reference: the layer owns this module (its ``biofx_state``), and no cycle keeps a
        # dropped model's state alive in the live-layer registry; pickling relinks it (attach)
        self.__dict__["_layer_ref"] = weakref.ref(layer)
        self.train(layer.training)
        self._drawn_from = (total, seed)  # for reset_bio_state
        key = rng.layer_key(seed, index)
        weight = layer.weight
        device = weight.device
        if config.fuzzy_lr_storage == "counter":
            dtype, _ = fuzzy.dampening_count_type(config.dampening_factor, config.fuzzy_lr_max)
            self.register_buffer("fuzzy_dampenings", torch.zeros(weight.shape, dtype=dtype, device=device))
            self._note_zero_counts()
        else:
            self.register_buffer("fuzzy_lr", fuzzy.initial_multipliers(weight, config, index, total, key))
        self.register_buffer("rng_key", torch.tensor(key, dtype=torch.int64, device=device))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("rejuvenations", torch.zeros((), dtype=torch.int64, device=device))
        if config.apply_dales_principle:
            units = _presynaptic_units(layer, kind)
            if config.dale_mode == "column":
                signs = dale.draw_signs(units, config.dale_excitatory_fraction, key)
            else:  # DANN: the layer's inputs are excitatory, its interneurons inhibit
                if not self.managed:
                    raise NotImplementedError(
                        f"{type(self).__name__} on its own has no graph to add DANN's interneurons to the "
                        "layer's forward; use dale_mode='column', or biofx.transform / BioConverter on the model"
                    )
                signs = torch.ones(units)
                _add_interneurons(layer, kind, config.dale_excitatory_fraction)
            groups = getattr(layer, "groups", 1)
            sign = dale.broadcast_signs(signs, weight.shape, kind.in_axis, kind.out_axis, groups)
            self.register_buffer("dale_sign", sign.to(device))
        if config.tracks_activity:
            channels = kind.out_features(layer)
            for buffer in ("activity_count", "activity_mean", *RANK_LOCAL_BUFFERS[:2]):
                self.register_buffer(buffer, torch.zeros(channels, device=device))
            self.register_buffer(RANK_LOCAL_BUFFERS[2], torch.zeros((), device=device))
        #: optimizer steps taken (keys the volume noise) and fuzzy-rate updates done
        self.steps, self.fuzzy_updates = Counter(self, "step"), Counter(self, "updates")
        #: other modules' names for this weight when non-bio modules read it too (tied weights)
        self.shared_with: tuple = ()
        #: built on the meta device: the state has no values until reset_bio_state() (or a load)
        self.undrawn = weight.is_meta
        if self.managed and register:
            runtime.register(self)

    # -- plumbing --------------------------------------------------------------------------
    @property
    def layer(self) -> nn.Module:
        layer = self.__dict__["_layer_ref"]()
        if layer is None:
            raise RuntimeError(f"the layer {self.layer_name!r} of this bio state no longer exists")
        return layer

    @property
    def alive(self) -> bool:
        """Whether its layer still exists (a state kept after its model was dropped is not)."""
        ref = self.__dict__.get("_layer_ref")
        return ref is not None and ref() is not None

    def attach(self, layer: nn.Module) -> None:
        """Link the state to its layer again (after unpickling or a deep copy) and register it."""
        self.__dict__["_layer_ref"] = weakref.ref(layer)
        if self.managed:
            runtime.register(self)

    @property
    def weight(self) -> torch.Tensor:
        return self.layer.weight

    def extra_repr(self) -> str:
        return f"layer={self.layer_name!r}, kind={self.kind.name}, index={self.index}"

    def __getstate__(self) -> dict:  # pickle and deepcopy: the owning layer relinks (attach)
        state = dict(self.__dict__)
        state.pop("_layer_ref", None)
        return state

    def _sync_counters(self) -> None:
        self.steps.sync()
        self.fuzzy_updates.sync()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        where = self._shard()  # under FSDP, the per-weight state is sharded like the weight before it loads
        key = prefix + self._per_weight
        if where is not None and key in state_dict and not sharding.is_sharded(state_dict[key]):
            state_dict[key] = sharding.shard_like(state_dict[key], where)  # a whole one: this rank's rows
        ours = self.config.fuzzy_lr_storage
        theirs = next(storage for storage in PER_WEIGHT_BUFFERS if storage != ours)
        other = prefix + PER_WEIGHT_BUFFERS[theirs]
        if other in state_dict and key not in state_dict:
            raise RuntimeError(
                f"the checkpoint holds {other}: it was saved with fuzzy_lr_storage={theirs!r}, and this "
                f"model keeps its multipliers with fuzzy_lr_storage={ours!r}; transform the model with "
                f"fuzzy_lr_storage={theirs!r} to load it"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._sync_counters()  # one sync at load time, none per step
        if key in state_dict:  # a bio checkpoint fills the state of a model built on the meta device
            self.undrawn = False

    def _apply(self, fn, recurse=True):
        """Move buffers with the model but keep their dtypes (bio state stays float32).

        Under FSDP2 (``model.to(...)`` or ``model.to_empty(...)`` after ``fully_shard``: the
        weight is a DTensor) the per-weight state is sharded like the weight first, so a rank
        moves or materializes its rows only."""
        if self.alive and sharding.is_sharded(self.weight):
            self._shard()
        dtypes = {name: b.dtype for name, b in self._buffers.items() if b is not None}
        # zero counts moved are zero counts (but not from the meta device: to_empty leaves garbage)
        zero_counts = not self._counts_may_be_nonzero() and self._buffers[self._per_weight].device.type != "meta"
        super()._apply(fn, recurse)
        for name, dtype in dtypes.items():
            if self._buffers[name].dtype != dtype:
                self._buffers[name] = self._buffers[name].to(dtype)
        if zero_counts:
            self._note_zero_counts()
        return self

    def is_automatic(self, mechanism: registry.Mechanism) -> bool:
        """Whether this layer applies ``mechanism`` by itself (``BioConfig.automatic``)."""
        return mechanism.is_on(self.config)

    def require_grad(self) -> torch.Tensor:
        """The weight's gradient (this rank's shard of it under FSDP)."""
        grad = self.weight.grad
        if grad is None:
            raise RuntimeError("No gradients found for the weights")
        return sharding.local(grad)

    def _shard(self) -> Optional[sharding.Layout]:
        """The shard of the weight this rank holds under FSDP2 (``None`` when it is whole).

        The first time the weight is seen sharded, the per-weight state (``fuzzy_lr`` or
        ``fuzzy_dampenings``, the same full tensor on every rank until then) becomes a DTensor
        sharded like the weight: each rank keeps its rows.
        """
        where = sharding.layout(self.weight, f"{self.layer_name}.weight")
        state = self._buffers[self._per_weight]
        if where is not None and not sharding.is_sharded(state):
            zero_counts = not self._counts_may_be_nonzero()
            self._buffers[self._per_weight] = sharding.shard_like(state, where)
            if zero_counts:
                self._note_zero_counts()
        return where

    @property
    def _per_weight(self) -> str:
        """The name of the buffer holding the multipliers' per-weight state."""
        return PER_WEIGHT_BUFFERS[self.config.fuzzy_lr_storage]

    def _multipliers(self, where: Optional[sharding.Layout]):
        """This rank's multipliers for the kernels: the ``fuzzy_lr`` tensor, or a
        :class:`~biofx.mechanisms.fuzzy.Recomputed` (``where``: from :meth:`_shard`)."""
        state = sharding.local(self._buffers[self._per_weight])
        if self.config.fuzzy_lr_storage == "buffer":
            return state
        seed = rng.stream_seed(self.rng_key, self.step.new_zeros(()), rng.FUZZY, (self._key_value(), 0))
        return fuzzy.Recomputed(state, seed, self.fuzzy_law, sharding.offset(where), self._counts_may_be_nonzero())

    def _note_zero_counts(self) -> None:
        """Record that the crystallization counts (``fuzzy_lr_storage="counter"``) are all 0 now:
        until anything writes them, f = f₀ and the kernels skip ``d^c``. Any write to the buffer
        (crystallization, a load, an in-place edit) changes its version, ``.data =`` its data
        pointer, and a new buffer its identity; :meth:`_counts_may_be_nonzero` then says yes.
        A write that bypasses the version counter (through ``.data`` or a NumPy alias) is not
        seen; docs/concepts.rst tells users to edit the buffer itself."""
        if self.config.fuzzy_lr_storage == "counter":
            self.__dict__["_zero_counts"] = self._counts_signature()

    def _counts_signature(self) -> tuple:
        buffer = self._buffers["fuzzy_dampenings"]
        local = sharding.local(buffer)
        try:
            version = local._version
        except RuntimeError:  # an inference tensor keeps no version: never taken as untouched
            version = None
        return buffer, version, local.data_ptr()

    def _counts_may_be_nonzero(self) -> bool:
        """False only while the counts are known to be all 0 (see :meth:`_note_zero_counts`)."""
        if self.config.fuzzy_lr_storage != "counter":
            return True
        noted = self.__dict__.get("_zero_counts")
        if noted is None:
            return True
        now = self._counts_signature()
        if noted[0] is now[0] and noted[1] is not None and noted[1:] == now[1:]:
            return False
        del self.__dict__["_zero_counts"]  # written since: drop the note (and the old buffer it holds)
        return True

    def _key_value(self) -> int:
        """``rng_key``'s value on the host, read once per change of the buffer (a load), not per step."""
        key = self.rng_key
        seen = self.__dict__.get("_key_seen")
        if seen is None or seen[0] is not key or seen[1] != key._version:
            self.__dict__["_key_seen"] = seen = (key, key._version, int(key))
        return seen[2]

    def _volume_seed(self) -> torch.Tensor:
        """The seed of this step's volume noise, from the key's and the step's host values."""
        return volume.seed(self.rng_key, self.step, (self._key_value(), self.steps.value))

    @property
    def fuzzy_law(self) -> tuple:
        """The constants of the recomputed f (:func:`~biofx.mechanisms.fuzzy.counter_law`)."""
        return fuzzy.counter_law(self.config, self.index, self._drawn_from[0])

    @no_grad
    def fuzzy_multipliers(self) -> torch.Tensor:
        """The multipliers f as a float32 tensor of the weight's shape (this rank's shard under
        FSDP): ``fuzzy_lr`` itself, or f₀·d^c computed afresh with ``fuzzy_lr_storage="counter"``."""
        multipliers = self._multipliers(self._shard())
        return fuzzy.values(multipliers).view(sharding.local(self.weight).shape)

    def _require_whole(self, what: str) -> None:
        if sharding.is_sharded(self.weight):
            raise NotImplementedError(
                f"{what} needs the whole weight of {self.layer_name!r}, which FSDP (fully_shard) has sharded "
                "over the ranks; call it before fully_shard (on the unsharded bio model)"
            )

    # -- the weight's life: meta device, new Parameters ------------------------------------
    def _drawn_afresh(self) -> "BioSynapses":
        """The state as the transform draws it from the layer's current weight (unregistered)."""
        return BioSynapses(
            self.layer_name, self.layer, self.kind, self.config, self.index, *self._drawn_from, register=False
        )

    def raise_undrawn(self) -> None:
        raise RuntimeError(
            f"the bio state of {self.layer_name!r} was built on the meta device and has no values yet: after "
            "bio.to_empty(device=...) and initializing or loading the weights, call bio.reset_bio_state() "
            "(or load a checkpoint of the bio model, which holds the state)"
        )

    @property
    def per_weight_shape(self) -> torch.Size:
        """The weight shape the per-weight state was drawn for."""
        return self._buffers[self._per_weight].shape

    @no_grad
    def follow_weight(self) -> None:
        """The layer got a weight of another shape (Hugging Face's ``resize_token_embeddings``
        re-ties ``lm_head.weight`` to a resized embedding): draw the state for the new shape and
        keep the old values where the shapes overlap (rows added keep the old rows' state)."""
        if registry.DALE.is_on(self.config) and self.config.dale_mode == "dann":
            raise NotImplementedError(
                f"the weight of {self.layer_name!r} changed shape ({tuple(self.per_weight_shape)} -> "
                f"{tuple(self.weight.shape)}), and DANN's interneuron weights cannot follow; resize before "
                "biofx.transform, or use dale_mode='column'"
            )
        self._require_whole("a weight of a new shape")
        old = {name: buffer for name, buffer in self._buffers.items() if buffer is not None}
        for name, buffer in self._drawn_afresh().named_buffers():
            previous = old[name]
            if previous.dim() == buffer.dim() and previous.dim() > 0:
                overlap = tuple(slice(0, min(a, b)) for a, b in zip(previous.shape, buffer.shape))
                buffer[overlap] = previous[overlap].to(buffer.device)
            elif previous.shape == buffer.shape:
                buffer.copy_(previous)
            self._buffers[name] = buffer
        if self.managed:
            runtime.register(self)  # the hooks know the new weight

    @no_grad
    def reset_bio_state(self) -> None:
        """Draw the bio state afresh, as the transform did, from the layer's current weight.

        For a model transformed on the meta device: after ``to_empty(device=...)`` and the
        weights' initialization (or loading), this fills the state; with Dale's principle it also
        re-applies the Dale initialization to the weight, as the transform does.
        """
        self._require_whole("reset_bio_state()")
        for name, buffer in self._drawn_afresh().named_buffers():
            self._buffers[name].copy_(buffer)
        self._note_zero_counts()
        self._sync_counters()
        self.undrawn = False
        if registry.DALE.is_on(self.config):
            self.dalian_network_initialization()

    # -- forward: activity probe -----------------------------------------------------------
    def forward(self, output: torch.Tensor) -> torch.Tensor:
        """Count the layer's activity (training mode only); return ``output`` unchanged.

        A forward that activation checkpointing recomputes during backward is not counted
        again (its outputs were counted when first computed)."""
        if self.training and not _recomputing():
            with torch.no_grad(), bio_annotation(registry.ACTIVITY.name):
                y = output.detach().float().movedim(self.kind.channel_dim, -1)
                y = y.reshape(-1, y.shape[-1])
                self.activity_sum.add_(torch.relu(y).sum(0))
                self.activity_active.add_((y.abs() > 0.01).sum(0))
                self.activity_n.add_(y.shape[0])
        return output

    def fold_activity(self) -> None:
        """Fold the activity counted since the last fold into the running statistics.

        Under ``torch.distributed`` the counts are summed over ranks first, so every rank
        folds the same global statistics (and gets what one process on the whole batch gets).
        """
        if not self.config.tracks_activity:
            return
        packed = torch.cat([self.activity_sum, self.activity_active, self.activity_n.view(1)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                torch.distributed.all_reduce(packed)
        channels = self.activity_sum.numel()
        total, active, n = packed[:channels], packed[channels : 2 * channels], packed[-1]
        self.activity_mean.copy_(scaling.running_mean(self.activity_mean, total, n, self.config.activity_momentum))
        self.activity_count.add_(active)
        for buffer in (self.activity_sum, self.activity_active, self.activity_n):
            buffer.zero_()

    # -- gradient mechanisms (act on .grad once) -------------------------------------------
    @no_grad
    def fuzzy_learning_rates(self) -> None:
        """Synaptic diversity on ``.grad``: ``g ← g·f``."""
        grad, multipliers = self.require_grad(), self.fuzzy_multipliers()
        if grad.dtype == torch.float32:
            grad.mul_(multipliers)
        else:
            grad.copy_(fuzzy.apply(grad, multipliers))

    @no_grad
    def volume_dependent_lr(self) -> None:
        """Volume-dependent plasticity on ``.grad``: ``g ← g·|N(μ, lr_variability·μ)|`` with this step's noise."""
        where = self._shard()
        grad, weight = self.require_grad(), sharding.local(self.weight)
        grad.copy_(volume.scale_for(grad, weight, self._volume_seed(), self.config, sharding.offset(where)))

    @no_grad
    def crystallize(self) -> None:
        """Dampen f where the step's gradient says the weight is settled or strongly driven."""
        if not self.weight.requires_grad:
            raise RuntimeError("Weights do not require gradients")
        where = self._shard()
        weight = sharding.local(self.weight)
        mean_magnitude = self._mean_magnitude(weight, where)
        crystallize.crystallize_(self._multipliers(where), weight, self.require_grad(), self.config, mean_magnitude)

    @staticmethod
    def _mean_magnitude(weight: torch.Tensor, where: Optional[sharding.Layout]) -> torch.Tensor:
        """Crystallization's mean|w| over the layer (this rank's ``weight`` is a shard under FSDP)."""
        if where is None:
            return crystallize.mean_abs(weight)
        return sharding.layer_mean(weight.detach().float().abs(), where)

    @no_grad
    def scale_grad(self) -> None:
        """``g ← g − γ·(a_target − ā_i)·w`` from the running activity."""
        grad = self.require_grad()
        if not self.config.tracks_activity or self.config.synaptic_scaling_gamma == 0:
            return
        self.fold_activity()
        where = self._shard()
        term = scaling.scaling_term(
            sharding.local(self.weight),
            sharding.local_rows(self.activity_mean, where) if self.kind.out_axis == 0 else self.activity_mean,
            self.kind.out_axis,
            self.config.synaptic_scaling_gamma,
            self.config.synaptic_scaling_target,
        )
        grad.add_(term.to(grad.dtype))

    # -- the optimizer's update (acts_on="update"; scheduled by biofx.runtime) --------------
    @no_grad
    def update_step(self, before: Optional[torch.Tensor] = None) -> update.LayerStep:
        """This layer's part of an update-mode step, for :func:`~biofx.mechanisms.update.scale_step_`
        (``before``: w₀, this rank's shard, kept by the pre-step hook) or, with ``before=None``,
        for :func:`~biofx.mechanisms.update.scale_grad_for_step_` (plain SGD, before its step)."""
        cfg = self.config
        where = self._shard()
        weight = sharding.local(self.weight).detach()
        w0 = weight if before is None else before
        crystal_args = (cfg.crystal_thresh, cfg.dampening_factor) if self.is_automatic(registry.CRYSTALLIZE) else None
        volume_on = self.is_automatic(registry.VOLUME)
        return update.LayerStep(
            weight=weight,
            grad=sharding.local(self.weight.grad),
            multipliers=self._multipliers(where),
            volume_seed=self._volume_seed() if volume_on else None,
            fuzzy=self.is_automatic(registry.FUZZY),
            volume_args=(cfg.base_lr, cfg.stability_factor, cfg.lr_variability) if volume_on else None,
            crystal_args=crystal_args,
            offset=sharding.offset(where),
            mean_magnitude=None if crystal_args is None else self._mean_magnitude(w0, where),
            before=before,
        )

    @no_grad
    def correct_interneurons_before_step(self, plain_sgd: bool = False) -> list:
        """DANN's interneuron updates scaled by :func:`~biofx.mechanisms.dale.interneuron_update_scales`:
        with ``acts_on="gradient"`` or ``plain_sgd`` (the step is ``−lr·g``) their gradients
        now, otherwise their updates after the step (any optimizer): returns ``(parameter,
        scale, value before)`` for :meth:`correct_interneurons_after_step`."""
        config = self.config
        if not (registry.DALE.is_on(config) and config.dale_mode == "dann"):
            return []
        n_e = self.weight.shape[self.kind.out_axis]
        scales = dale.interneuron_update_scales(n_e, self.weight.numel() // n_e)
        steps = []
        for name, scale in zip(dale.INTERNEURON_PARAMS, scales):
            parameter = getattr(self.layer, name)
            if parameter.grad is None:
                continue
            if config.acts_on == "gradient" or plain_sgd:
                sharding.local(parameter.grad).mul_(scale)
            else:
                steps.append((parameter, scale, sharding.local(parameter).detach().clone()))
        return steps

    @no_grad
    def correct_interneurons_after_step(self, steps: list) -> None:
        """Scale the interneuron updates just taken (``steps`` from :meth:`correct_interneurons_before_step`)."""
        for parameter, scale, before in steps:
            local = sharding.local(parameter)
            local.copy_(torch.lerp(before, local, scale))

    # -- state mechanisms --------------------------------------------------------------------
    @no_grad
    def update_fuzzy_learning_rates(self) -> None:
        """One fuzzy-rate update (TEMPORAL decay/noise, ACTIVITY redraw); no-op otherwise."""
        dist = self.config.fuzzy_lr_distribution
        if not self.config.fuzzy_lr_dynamic or dist not in (Distribution.TEMPORAL, Distribution.ACTIVITY):
            return
        self.fuzzy_updates.add(1)
        where = self._shard()
        multipliers, offset = sharding.local(self.fuzzy_lr), sharding.offset(where)
        if dist is Distribution.TEMPORAL:
            fuzzy.temporal_update(multipliers, self.fuzzy_updates.value, self.updates, self.rng_key, self.config, offset)
        else:
            self.fold_activity()
            fuzzy.activity_update(
                multipliers,
                self.activity_count,
                self.kind.out_axis,
                self.fuzzy_updates.value,
                self.updates,
                self.rng_key,
                self.config,
                slice(None) if where is None else where.rows,
                offset,
            )

    @no_grad
    def rejuvenate_weights(self) -> torch.Tensor:
        """Rejuvenate the layer's weights; returns the number replaced (a 0-d tensor).

        Under FSDP each rank rejuvenates its shard, with max|W| all-reduced over the layer's
        shards; the count returned is the layer's (summed over the shards).
        """
        where = self._shard()
        if where is not None and self.config.rejuvenation_rule != "paper":
            raise NotImplementedError(
                f"rejuvenation_rule={self.config.rejuvenation_rule!r} under FSDP (fully_shard): its layer mean "
                f"and std of {self.layer_name!r} are not reduced over the shards; use rejuvenation_rule='paper' "
                "(the default), or DDP"
            )
        weight = sharding.local(self.weight)
        sign = getattr(self, "dale_sign", None)
        count = rejuvenate.rejuvenate_(
            weight,
            self.config.rejuvenation_parameter_dre,
            self.rng_key,
            self.rejuvenations,
            None if sign is None else sharding.local_rows(sign, where),
            self.config.rejuvenation_rule,
            sharding.offset(where),
            None if where is None else sharding.layer_max(rejuvenate.magnitude(weight), where),
        )
        self.rejuvenations.add_(1)
        return count if where is None else sharding.layer_sum(count, where)

    def dale_weight(self) -> torch.Tensor:
        """The weight the layer uses: ``s·|w|``, minus ``|W_EI|·|W_IE|`` in DANN mode."""
        weight = dale.constrain(self.weight, self.dale_sign)
        if self.config.dale_mode == "dann":
            weight = dale.inhibit(weight, self.layer.dale_w_ei, self.layer.dale_w_ie, self.kind.out_axis)
        return weight

    @no_grad
    def enforce_dales_principle(self) -> None:
        """Stored weights onto the constraint, the forward unchanged: ``w ← s·|w|`` (DANN: all ``|·|``).

        Raises the reference's ``AttributeError`` when Dale's principle is off."""
        if not registry.DALE.is_on(self.config):
            raise AttributeError("Can not enforce dales principle without apply_dales_principle set True.")
        where = self._shard()
        weight = sharding.local(self.weight)
        weight.copy_(dale.constrain(weight, sharding.local_rows(self.dale_sign, where)))
        if self.config.dale_mode == "dann":
            sharding.local(self.layer.dale_w_ei).abs_()
            sharding.local(self.layer.dale_w_ie).abs_()

    @no_grad
    def dalian_network_initialization(self) -> None:
        """Balanced Dale initialization (:func:`biofx.mechanisms.dale.initialize_dann_` or
        :func:`~biofx.mechanisms.dale.initialize_column_`); draws are keyed by the layer's seed."""
        self._require_whole("Dale initialization (dalian_network_initialization())")
        if self.config.dale_mode == "dann":
            layer = self.layer
            dale.initialize_dann_(self.weight, layer.dale_w_ei, layer.dale_w_ie, self.kind.out_axis, int(self.rng_key))
        else:
            dale.initialize_column_(self.weight, self.dale_sign, self.kind.out_axis)

    def l1_reg(self) -> torch.Tensor:
        """``Σ|w|`` of the layer's weight."""
        return self.weight.abs().sum()

    def state_bytes(self) -> int:
        """Bytes of bio state this layer holds (on this rank, under FSDP)."""
        return sum(sharding.local(b).numel() * b.element_size() for b in self.buffers())

    # The layer-level names of biofx 0.1, public as BioSynapses members: kept as aliases.
    apply_fuzzy = fuzzy_learning_rates
    apply_volume = volume_dependent_lr
    update_fuzzy = update_fuzzy_learning_rates
    rejuvenate = rejuvenate_weights
    enforce_dale = enforce_dales_principle
    dale_initialize = dalian_network_initialization
    l1 = l1_reg


def _recomputing() -> bool:
    """Whether this forward runs inside backward: activation checkpointing recomputing it.
    (Compiled code recomputes without re-running the module, so it never is.)"""
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


def _presynaptic_units(layer: nn.Module, kind: LayerKind) -> int:
    return layer.weight.shape[kind.in_axis] * getattr(layer, "groups", 1)


def _add_interneurons(layer: nn.Module, kind: LayerKind, excitatory_fraction: float) -> None:
    """DANN's inhibitory weights as parameters of the layer: ``dale_w_ei`` [n_e, n_i] and
    ``dale_w_ie`` (the weight's shape with n_i outputs); ``layer.weight`` stays W_EE."""
    weight = layer.weight
    num_excitatory = weight.shape[kind.out_axis]
    num_inhibitory = dale.interneurons(num_excitatory, excitatory_fraction, weight.numel() // max(num_excitatory, 1))
    shape = list(weight.shape)
    shape[kind.out_axis] = num_inhibitory
    w_ei, w_ie = dale.INTERNEURON_PARAMS
    for name, size in ((w_ei, (num_excitatory, num_inhibitory)), (w_ie, shape)):
        layer.register_parameter(name, nn.Parameter(weight.new_zeros(size), requires_grad=weight.requires_grad))

