"""The model-level API of a transformed model: :class:`BioMethods` and :class:`BioGraphModule`.

Every method acts on all bio layers of the model (their :class:`~biofx.state.BioSynapses`),
calling the layer-level method of the same name (the mechanism's ``method`` in
:mod:`biofx.registry`).
Gradient methods act once on ``.grad`` when called (the reference's explicit way); for a
mechanism a layer already runs automatically (``BioConfig.automatic``) the call is a no-op
with a one-time warning, so nothing is ever applied twice.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree

from . import registry
from .mechanisms import dale
from .state import RANK_LOCAL_BUFFERS, STATE_ROOT, BioSynapses

__all__ = ["BioMethods", "BioGraphModule", "keep_state"]

STATE_PREFIX = f"{STATE_ROOT}."


class BioMethods:
    """Mixin with the model-level bio methods; needs only ``self.modules()``."""

    def bio_layers(self) -> list[BioSynapses]:
        """The state modules of all bio layers, in execution order (one per weight)."""
        layers = [m for m in self.modules() if isinstance(m, BioSynapses) and m.managed]
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
            warnings.warn(message, UserWarning, stacklevel=3)

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


class BioGraphModule(BioMethods, fx.GraphModule):
    """A ``torch.fx.GraphModule`` with bio layers and the model-level bio methods.

    ``bio_report`` (a :class:`~biofx.report.TransformReport`) tells what was converted.
    """

    def keep_state(self, source: torch.nn.Module) -> None:
        """Keep ``source``'s submodules, root parameters, buffers and attributes as they are.

        The GraphModule constructor (also used by unpickling and deepcopy) rebuilds only what
        the graph reads: a layer whose weight the graph reads through ``get_attr`` would come
        back as an empty ``nn.Module``, and unread buffers (``num_batches_tracked``) would be
        dropped. This keeps the original layer objects (``bio.fc1`` stays an ``nn.Linear``),
        the bio state modules and every key of the original ``state_dict()``.
        """
        keep_state(source, self)

    def _deepcopy_init(self):
        def init(copy, source, graph):
            fx.GraphModule.__init__(copy, source, graph, type(self).__name__)
            copy.keep_state(source)

        return init

    def __reduce__(self):
        reducer, (body, import_block) = super().__reduce__()
        body["_graphmodule_cls_name"] = type(self).__name__
        if isinstance(self.graph._codegen, fx.graph._PyTreeCodeGen):  # a torch.export capture
            body["_biofx_codegen"] = self.graph._codegen
        return (_rebuild, (body, import_block))


def _bio_key(key: str) -> bool:
    """Whether a ``state_dict`` key is biofx's own (bio state, DANN interneuron weights)."""
    return STATE_PREFIX in key or key.rsplit(".", 1)[-1] in dale.INTERNEURON_PARAMS


def _rebuild(body: dict, import_block: str) -> BioGraphModule:
    """Unpickle a :class:`BioGraphModule` (``torch.save(model)`` / ``torch.load``).

    Unpickling re-traces the code; a captured graph's input/output pytree handling
    (``biofx.capture``: a Hugging Face ``ModelOutput`` comes back as one) is restored after.
    """
    from torch.fx.graph_module import _deserialize_graph_module, _forward_from_src

    forward = _forward_from_src(import_block + body["_code"], {})
    codegen = body.pop("_biofx_codegen", None)
    source = torch.nn.Module.__new__(torch.nn.Module)
    source.__dict__.update(body)
    gm = _deserialize_graph_module(forward, body, graph_module_cls=BioGraphModule)
    gm.keep_state(source)
    if codegen is not None:  # the re-trace flattened the inputs and made the output a dict
        output = gm.graph.output_node()
        output.args = (tuple(pytree.tree_leaves(output.args[0])),)
        gm.graph._codegen = codegen
        gm.recompile()
    return gm


def keep_state(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Give ``target`` the submodules, root parameters/buffers and other attributes of ``source``."""
    for name, child in source._modules.items():
        if child is not None:
            target._modules[name] = child
    for name, param in source._parameters.items():
        if param is not None:
            target.register_parameter(name, param)
    for name, buffer in source._buffers.items():
        if buffer is not None:
            target.register_buffer(name, buffer, persistent=name not in source._non_persistent_buffers_set)
    for name, value in vars(source).items():  # stride, config, bio_report, ...: code around the module reads them
        if not hasattr(type(target), name):  # not a forward or compiled call of the source
            target.__dict__.setdefault(name, value)

