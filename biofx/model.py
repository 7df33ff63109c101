"""The model-level API of a transformed model: :class:`BioMethods`.

``biofx.transform`` keeps the model's tree and gives its root the class ``(BioMethods,
<its class>)`` (same name, methods and ``forward``; see :func:`biofx.pipeline.bio_class`).
Every method acts on all bio layers of the model (their :class:`~biofx.state.BioSynapses`),
calling the layer-level method of the same name (the mechanism's ``method`` in
:mod:`biofx.registry`).
Gradient methods act once on ``.grad`` when called (the reference's explicit way); for a
mechanism a layer already runs automatically (``BioConfig.automatic``) the call is a no-op
with a one-time warning, so nothing is ever applied twice.

What the transform saw is kept on the root: the model graph (:attr:`BioMethods.bio_graph`),
how it was captured, the layers left plain and why. :attr:`BioMethods.bio_report` is derived
from the tree as it is now, so a layer replaced after the transform is listed as plain.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn

from . import registry, runtime
from ._warn import warn_user
from .bio_layer import BioLayer
from .layers import kind_of
from .mechanisms import dale
from .report import report_of
from .state import RANK_LOCAL_BUFFERS, STATE_ROOT, BioSynapses
from .tracing import TraceError, trace

__all__ = ["BioMethods"]

STATE_PREFIX = f"{STATE_ROOT}."


class BioMethods:
    """Mixin with the model-level bio methods; needs only ``self.modules()``."""

    def bio_layers(self) -> list[BioSynapses]:
        """The state modules of all bio layers, in execution order (one per weight)."""
        layers = sorted(
            {id(m): m for m in self.modules() if isinstance(m, BioSynapses) and m.managed}.values(),
            key=lambda state: state.index,
        )
        stale = [layer.layer_name for layer in layers if layer.superseded]
        if stale:
            raise RuntimeError(
                f"this bio model no longer drives {stale}: a newer biofx.transform of the same model took "
                "their weights over. Use the newer bio model (one transform per model is live at a time)."
            )
        return layers

    # -- helpers ----------------------------------------------------------------------------
    def _warn_once(self, key: str, message: str) -> None:
        warned = self.__dict__.setdefault("_biofx_warned", set())
        if key not in warned:
            warned.add(key)
            warn_user(message)

    def _explicit(self, mechanism: registry.Mechanism) -> list[BioSynapses]:
        """Layers the explicit method of ``mechanism`` acts on: trainable ones with a gradient.

        Frozen layers and layers the last backward did not reach (an unused head, say) are
        skipped; no gradient at all means the call came before any backward: RuntimeError.
        """
        trainable = [layer for layer in self.bio_layers() if layer.weight.requires_grad]  # frozen: skipped
        layers = [layer for layer in trainable if layer.weight.grad is not None]
        if trainable and not layers:
            raise RuntimeError("No gradients found for the weights")  # called before any backward
        manual = [layer for layer in layers if not layer.is_automatic(mechanism)]
        if len(manual) < len(layers):
            self._warn_once(
                mechanism.name,
                f"{mechanism.method}() skipped layers that apply {mechanism.name!r} automatically in the graph "
                f"(BioConfig.automatic); calling it would apply it twice. Set automatic=() for the "
                f"reference library's explicit behaviour.",
            )
        return manual

    def _run_explicit(self, mechanism: registry.Mechanism) -> None:
        for layer in self._explicit(mechanism):
            getattr(layer, mechanism.method)()

    def _dale_layers(self, error: str) -> list[BioSynapses]:
        """The layers with Dale's principle; none: the reference's ``AttributeError``."""
        layers = [layer for layer in self.bio_layers() if registry.DALE.is_on(layer.config)]
        if not layers:
            raise AttributeError(error)
        return layers

    # -- gradient mechanisms ----------------------------------------------------------------
    @torch.no_grad()
    def fuzzy_learning_rates(self) -> None:
        """Synaptic diversity: ``g ← g·f`` for every bio weight."""
        self._run_explicit(registry.FUZZY)

    @torch.no_grad()
    def volume_dependent_lr(self) -> None:
        """Volume-dependent plasticity: ``g ← g·|N(μ, lr_variability·μ)|``, ``μ = base_lr·exp(−s·|w|/(|w|+1))``."""
        self._run_explicit(registry.VOLUME)

    @torch.no_grad()
    def crystallize(self) -> None:
        """Crystallization: ``f ← f·dampening_factor`` where ``|g|/|w| < crystal_thresh`` or ``|g| > mean|w|``."""
        self._run_explicit(registry.CRYSTALLIZE)

    @torch.no_grad()
    def scale_grad(self) -> None:
        """Synaptic scaling: ``g ← g − γ·(a_target − ā_i)·w`` (see :mod:`biofx.mechanisms.scaling`)."""
        layers = self._explicit(registry.SCALING)
        if layers and not any(layer.config.synaptic_scaling_gamma > 0 for layer in layers):
            self._warn_once(
                "scaling-off",
                "scale_grad() has no effect: synaptic_scaling_gamma is 0. Set synaptic_scaling_gamma > 0 "
                "(and synaptic_scaling_target) in the BioConfig to enable synaptic scaling.",
            )
        for layer in layers:
            layer.scale_grad()

    # -- state mechanisms -------------------------------------------------------------------
    @torch.no_grad()
    def update_fuzzy_learning_rates(self, x: Optional[torch.Tensor] = None) -> None:
        """One update of dynamic fuzzy rates (TEMPORAL decay, ACTIVITY redraw).

        ``x`` is accepted for compatibility and not needed: ACTIVITY counts each layer's own
        outputs in the forward pass.
        """
        for layer in self.bio_layers():
            if layer.is_automatic(registry.FUZZY) and layer.config.fuzzy_lr_dynamic:
                self._warn_once(
                    "update",
                    "update_fuzzy_learning_rates() skipped layers whose dynamic fuzzy rates update "
                    f"automatically at every optimizer step (BioConfig.automatic contains {registry.FUZZY.name!r}).",
                )
                continue
            layer.update_fuzzy_learning_rates()

    def rejuvenate_weights(self) -> torch.Tensor:
        """Rejuvenation (spine turnover); returns how many weights were replaced (0-d tensor)."""
        counts = [layer.rejuvenate_weights() for layer in self.bio_layers()]
        return torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.int64)

    def enforce_dales_principle(self) -> None:
        """Stored weights onto Dale's constraint, the forward unchanged: ``w ← s·|w|``
        (DANN mode: the interneuron weights too)."""
        for layer in self._dale_layers("Can not enforce dales principle without apply_dales_principle set True."):
            layer.enforce_dales_principle()

    def dalian_network_initialization(self) -> None:
        """Balanced Dale initialization (done at transform time; call again after re-initializing)."""
        error = f"Can not use dalians network initialization on {type(self)}: apply_dales_principle is False"
        for layer in self._dale_layers(error):
            layer.dalian_network_initialization()

    def l1_reg(self) -> torch.Tensor:
        """L1 norm ``Σ|w|`` of the bio layers' weights (differentiable, add it to the loss)."""
        terms = [layer.l1_reg() for layer in self.bio_layers()]
        return torch.stack(terms).sum() if terms else torch.zeros(())

    def reset_bio_state(self) -> None:
        """Draw every layer's bio state afresh from its current weights, as ``transform`` does.

        For a model transformed on the meta device::

            bio = biofx.transform(meta_model)
            bio.to_empty(device="cuda")
            ...  # initialize or load the weights
            bio.reset_bio_state()
        """
        for layer in self.bio_layers():
            layer.reset_bio_state()

    @torch.no_grad()
    def advance_step(self) -> None:
        """Advance the step counters by hand (only for updates made without ``torch.optim``)."""
        for layer in self.bio_layers():
            layer.steps.add(1)

    # -- distributed ------------------------------------------------------------------------
    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """Names DistributedDataParallel leaves alone: the per-rank activity accumulators.

        DDP re-broadcasts buffers from rank 0 at every forward; these count each rank's own
        activity until the optimizer step sums them over ranks (with gradient accumulation
        and no ``no_sync()`` too). Names a user adds are kept.
        """
        local = [n for n, _ in self.named_buffers() if n.rsplit(".", 1)[-1] in RANK_LOCAL_BUFFERS]
        return [*self.__dict__.get("_biofx_ddp_ignore", []), *local]

    @_ddp_params_and_buffers_to_ignore.setter
    def _ddp_params_and_buffers_to_ignore(self, names) -> None:
        self.__dict__["_biofx_ddp_ignore"] = list(names)

    # -- checkpoints ------------------------------------------------------------------------
    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict``; a plain checkpoint (no ``biofx_state.*`` keys, no
        DANN interneuron weights) loads with ``strict=True`` too, and the bio state keeps its
        current values."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not _bio_key(k)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}: "
                f"missing keys {missing}, unexpected keys {result.unexpected_keys}"
            )
        return result

    def plain_state_dict(self) -> dict:
        """``state_dict()`` without bio state: loads into the original model. A Dale layer's
        weight is the one its forward uses (``s·|w|``, minus ``|W_EI|·|W_IE|`` in DANN mode)."""
        state = {k: v for k, v in self.state_dict().items() if not _bio_key(k)}
        dale_layers = {id(layer.weight): layer for layer in self.bio_layers() if registry.DALE.is_on(layer.config)}
        for name, param in self.named_parameters(remove_duplicate=False):
            if id(param) in dale_layers:
                state[name] = dale_layers[id(param)].dale_weight().detach()
        return state

    def bio_state_bytes(self) -> int:
        """Total bytes of bio state."""
        return sum(layer.state_bytes() for layer in self.bio_layers())

    # -- what the transform saw, and the tree as it is now ---------------------------------
    @property
    def bio_graph(self) -> Optional[fx.GraphModule]:
        """The whole model as a ``torch.fx.GraphModule`` with the bio layers as ``call_module``
        leaves (traced by ``torch.fx``, or captured by ``torch.export``), for seeing: the model
        runs its own ``forward``. ``None`` when neither could capture it (the transform then
        planned from the module tree; ``bio_report.capture`` says why). Not saved with the
        model: after loading, it is traced again on first use."""
        if "_biofx_graph" not in self.__dict__:
            try:
                self.__dict__["_biofx_graph"] = trace(self)
            except TraceError:
                self.__dict__["_biofx_graph"] = None
        return self.__dict__["_biofx_graph"]

    @property
    def bio_report(self):
        """What was converted (:class:`~biofx.report.TransformReport`), from the tree as it is:
        every bio layer, every layer left plain with the reason (a layer of a known kind that
        appeared after the transform, e.g. a replaced head, is listed as such)."""
        return report_of(self)

    def unconverted_new_layers(self) -> list[str]:
        """Paths of layers of a known kind that are neither bio nor listed plain by the transform:
        they were put into the model after it (``model.fc = nn.Linear(...)``)."""
        known = {name for name, _ in self.__dict__.get("_biofx_plain", ())}
        return [
            path
            for path, module in self.named_modules()
            if kind_of(module) is not None and not isinstance(module, BioLayer) and path not in known
        ]

    # -- pickling and copies (rebuilt from the model's class: reduce_converted) ---------------
    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        runtime.register_model(self)


def _bio_key(key: str) -> bool:
    """Whether a ``state_dict`` key is biofx's own (bio state, DANN interneuron weights)."""
    return STATE_PREFIX in key or key.rsplit(".", 1)[-1] in dale.INTERNEURON_PARAMS
