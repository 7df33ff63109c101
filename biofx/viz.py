"""See a bio model: :func:`to_networkx`, :func:`to_graphviz` and :func:`draw`.

A transformed model keeps its module tree; each converted layer runs its own ``fx.Graph``
(``layer.graph``) and the whole model is seen as ``bio.bio_graph``, with the bio layers as
``call_module`` leaves. The views here put the two together: the model graph with each bio
layer's call replaced by the nodes of its graph (*nested*), so one picture shows the model
and, inside every bio layer, the nodes biofx inserted.

* **The model graph.** ``bio.bio_graph`` (``torch.fx``, or ``torch.export`` when the
  transform had example inputs). A model neither could capture at transform time (Hugging
  Face transformers without example inputs) is captured for the drawing with
  :func:`biofx.capture.export_graph` and the ``example_inputs`` given here.
* **Tags and colours.** Every node biofx inserts or replaces carries a bio tag
  (``node.meta["custom"]["biofx"]``, see :mod:`biofx.passes.tags`), exposed as the ``biofx``
  node attribute; the drawing fills it with the colour of its mechanism
  (:data:`MECHANISM_COLOURS`), boxes each bio layer, and has a legend of the mechanisms drawn.
* **At the step.** Mechanisms that act at the optimizer step (crystallization, synaptic
  scaling, rejuvenation, and fuzzy/volume with ``acts_on="update"``) have no graph node: the
  networkx view lists them per layer in ``graph.graph["at_step"]`` and the drawing shows them
  in a lane of their own, so a drawing shows everything ``bio_report`` lists.
* **Large models.** Modules deeper than ``depth`` are drawn as one box each, listing the bio
  layers inside; by default (``depth="auto"``) a drawing of more than :data:`MAX_NODES`
  nodes is folded so (a transformer's blocks become boxes).

>>> import torch, torch.nn as nn, biofx
>>> from biofx.viz import to_networkx
>>> bio = biofx.transform(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
>>> g = to_networkx(bio, torch.randn(3, 4))
>>> g.nodes["0.linear"]["biofx"]["mechanism"], g.nodes["0.linear"]["shape"]
('layer', (3, 8))
"""

from __future__ import annotations

import dataclasses
import html
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional, Union

import networkx as nx
import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import _get_qualified_name

from . import capture as capture_
from . import ops, registry
from .bio_layer import BioLayer
from .passes import tags
from .passes.plan import join_path

__all__ = ["MECHANISM_COLOURS", "FORMATS", "MAX_NODES", "to_networkx", "to_graphviz", "draw"]

#: Fill colour of a bio node, by the ``"mechanism"`` of its tag: the converted layer's own
#: nodes (weight, bias, linear/conv), then each mechanism's colour from :mod:`biofx.registry`.
MECHANISM_COLOURS: dict[str, str] = {
    tags.LAYER: "#9ecae1",
    **{mechanism.name: mechanism.colour for mechanism in registry.REGISTRY.values()},
}
#: Fill colour of a bio node whose mechanism is not in :data:`MECHANISM_COLOURS`.
OTHER_COLOUR = "#bababa"
#: Output formats :func:`draw` writes, chosen by the path's suffix.
FORMATS = (".svg", ".png", ".pdf")
#: ``depth="auto"`` folds modules into boxes when a drawing would have more nodes than this.
MAX_NODES = 150

_INSTALL_DOT = (
    "the graphviz 'dot' program was not found on PATH; install Graphviz: "
    "`apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS) or "
    "`conda install graphviz`"
)
STEP_LANE = "at step"  #: the DOT name of the step lane (fx node names never contain a space)
LEGEND = "biofx legend"  #: the DOT name of the legend
_BOX = "box "  #: DOT names of folded modules: "box encoder.layer.0" (fx names never contain a space)
_INTERNAL = ("biofx_",)  #: module names biofx adds (biofx_state, biofx_lifted): never drawn as modules
_BIO_BOX = "#eef5fb"  #: background of a folded module that holds bio layers


# -- the networkx view ---------------------------------------------------------------------
def to_networkx(bio: nn.Module, example_inputs: Any = None) -> nx.DiGraph:
    """The model graph as a ``networkx.DiGraph``, each bio layer's graph nested in it.

    Args:
        bio: a model transformed by :func:`biofx.transform` (any kind: traced by ``torch.fx``,
            captured by ``torch.export``, planned from the module tree, or a single layer), or
            any ``torch.fx.GraphModule`` (a plain one has no bio nodes; ``bio.bio_graph`` works too).
        example_inputs: a tensor, a tuple (or list) of positional inputs, or a dict of keyword
            inputs (``{"input_ids": ids, "attention_mask": mask}``). When given, every
            tensor-valued node gets ``shape`` (a tuple) and ``dtype``. A model without a model
            graph (``bio.bio_graph`` is ``None``) needs them: it is captured with ``torch.export``.

    One graph node per fx node. A bio layer's ``call_module`` node is replaced by the nodes of
    its ``layer.graph`` (its placeholder and output dropped): edges go from the call's input
    to the users of the layer's input and from the layer's result to the call's users. Keys
    are the fx node names, a nested node's prefixed with its layer's path (``"fc1.linear"``;
    a layer's second call ``"fc1@1.linear"``), so they stay unique.

    Node attributes: ``op``; ``target`` (a string: the qualified name of a called function as
    in ``gm.code``, a module or attribute path from the root); ``biofx`` (a copy of the bio
    tag, or ``None``); ``module`` (the owning module path: a bio node's layer, a called module,
    an attribute's owner or the module stack; ``None`` for the root's own code and unknown);
    ``layer`` (for nested nodes the bio layer's path, else ``None``); ``module_type`` for a
    ``call_module`` (the class name); ``gamma`` and ``channel_dim`` for a ``weight_split``; and
    with example inputs ``shape`` and ``dtype`` for every tensor-valued node. Shapes come from
    running the model graph (and each layer's graph) with an ``fx.Interpreter`` under
    ``torch.no_grad()`` with every module in eval mode (restored afterwards), so no bio state
    (activity counts) changes and ``node.meta`` is left as it was.

    Graph attributes: ``name`` (the model's class), ``capture`` (how the drawn graph was
    captured), ``at_step`` (``layer -> mechanisms`` that act at the optimizer step, in
    ``bio_report``'s words; empty for a plain graph), ``layers`` (``layer path -> class
    name`` of the bio layers drawn) and, with example inputs, ``inputs`` (``(name, shape,
    dtype)`` per tensor input; name ``None`` for a positional one) and ``input_shapes``.
    """
    return _build(bio, example_inputs).graph


def to_graphviz(
    bio: nn.Module,
    example_inputs: Any = None,
    cluster_by_module: bool = False,
    title: Optional[str] = None,
    depth: Union[int, str, None] = "auto",
):
    """A ``graphviz.Digraph`` of ``bio`` (its ``.source`` is the DOT text); see :func:`draw`."""
    graphviz = _import_graphviz()
    built = _build(bio, example_inputs)
    graph = built.graph
    live = _live(graph)
    depth = _check_depth(depth, graph, live, built.root)
    dot = graphviz.Digraph(
        graph.graph["name"],
        graph_attr={"rankdir": "TB", "fontname": "Helvetica", "nodesep": "0.2", "ranksep": "0.3"},
        node_attr={"shape": "box", "style": "rounded", "fontname": "Helvetica", "fontsize": "10"},
        edge_attr={"arrowsize": "0.6"},
    )
    groups = _groups(graph, live, depth)
    caption = _caption(title, graph, live, depth, groups)
    if caption:
        dot.attr(label=caption, labelloc="t", fontsize="14")
    drawn: dict[str, dict] = {}  # DOT node -> attributes
    homes: dict[str, list] = {}  # DOT node -> its clusters, outermost first
    present: set = set()  # mechanisms drawn as filled nodes or box cells (the legend)
    members = defaultdict(list)
    for name, group in groups.items():
        if group is not None:
            members[group].append(name)
    sites = {data["site"]: data["layer"] for _, data in graph.nodes(data=True) if data.get("site")}
    clusters = _module_clusters(graph, groups) if cluster_by_module else set()
    for name in live:
        data = graph.nodes[name]
        if groups[name] is not None:
            continue
        home = _home(data, clusters, sites)
        drawn[name] = _node_attrs(name, data, home[-1] if home else None, sites)
        homes[name] = home
        if data["biofx"] is not None and data["biofx"]["mechanism"] != tags.LAYER:
            present.add(data["biofx"]["mechanism"])
    for group, names in members.items():
        box = _BOX + group
        drawn[box], mechanisms = _box_attrs(group, names, graph, groups, built.root)
        homes[box] = [p for p in _prefixes(group)[:-1] if p in clusters]
        present |= mechanisms
    _emit_nodes(dot, drawn, homes, sites, graph.graph["layers"])
    seen = set()
    for source, target in graph.edges:
        if source not in live or target not in live:
            continue
        edge = (_drawn_as(source, groups), _drawn_as(target, groups))
        if edge[0] != edge[1] and edge not in seen:
            seen.add(edge)
            dot.edge(*edge)
    for edge in _layer_tops(graph, groups) - seen:
        dot.edge(*edge, style="invis")
    at_step = graph.graph["at_step"]
    if at_step:
        _step_lane(dot, _lane_rows(at_step, depth))
        for name in drawn:  # the step comes after the forward pass: draw it below
            if name in graph and graph.nodes[name]["op"] == "output":
                dot.edge(name, STEP_LANE, style="invis")
    if present:
        _legend(dot, present)
    return dot


def draw(
    bio: nn.Module,
    path: Union[str, os.PathLike],
    example_inputs: Any = None,
    cluster_by_module: bool = False,
    title: Optional[str] = None,
    depth: Union[int, str, None] = "auto",
) -> Union[str, os.PathLike]:
    """Render ``bio`` with Graphviz to ``path`` (``.svg``, ``.png`` or ``.pdf``) and return ``path``.

    The model graph is drawn with each bio layer's graph nested in a box named after the layer
    (``fc1 · BioLinear``); bio nodes are filled with their mechanism's colour
    (:data:`MECHANISM_COLOURS`), the model's own nodes are left white, and a legend lists the
    mechanisms drawn as nodes. Labels show the operation (``linear``, ``softmax``; an ATen
    op by its name, not its overload), the owning module when no box names it and, with
    ``example_inputs``, the output shape (the caption then names the inputs the shapes follow
    from); a ``weight_split`` node shows its group sums (``Γ=2: 128 → 64 groups → 128``).
    Mechanisms that act at the optimizer step are drawn per layer in an "at optimizer.step()"
    lane, which has no legend entries: its cells name their mechanism.

    Args:
        bio, example_inputs: as for :func:`to_networkx` (a model without ``bio_graph``, such
            as a Hugging Face transformer transformed without example inputs, needs them).
        cluster_by_module: box the nodes of each module, nested along the module path.
        title: drawn above the graph.
        depth: ``N`` draws every module ``N`` levels down the tree (``encoder.layer.0`` is three
            levels down) as one box, listing the bio layers inside with their mechanisms;
            ``None`` draws every node; ``"auto"`` (the default) draws every node up to
            :data:`MAX_NODES` nodes, else the deepest depth that fits (:func:`choose_depth`).
            The caption says when modules are folded.

    Needs the ``graphviz`` Python package (``pip install -e ".[viz]"`` from a clone of biofx) and the Graphviz
    ``dot`` program.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot draw to {os.fspath(path)!r}: the suffix must be one of {', '.join(FORMATS)}")
    graphviz = _import_graphviz()
    dot = to_graphviz(bio, example_inputs, cluster_by_module, title, depth)
    try:
        data = dot.pipe(format=suffix[1:])
    except graphviz.ExecutableNotFound as err:
        raise RuntimeError(_INSTALL_DOT) from err
    Path(path).write_bytes(data)
    return path


# -- the graph to draw ---------------------------------------------------------------------
@dataclasses.dataclass
class _Site:
    """A bio layer's call in the model graph: its nodes are drawn under ``prefix``."""

    prefix: str
    path: str
    layer: nn.Module


@dataclasses.dataclass
class _Built:
    graph: nx.DiGraph
    root: nn.Module


def _build(bio: nn.Module, example_inputs: Any) -> _Built:
    """The nested networkx graph of ``bio`` (see :func:`to_networkx`) and the module its
    ``call_module`` and ``get_attr`` targets are relative to."""
    gm, root, capture = _model_graph(bio, example_inputs)
    if gm is None:  # a model that is one bio layer: its own graph is the whole graph
        graph, owner, sites = root.graph, root, {}
    else:
        graph, owner, sites = gm.graph, gm, _sites(gm)
    values = _run(owner, graph, sites, example_inputs, bio) if example_inputs is not None else {}
    out = nx.DiGraph(name=type(root).__name__, capture=capture, layers={}, at_step={})
    if example_inputs is not None:
        out.graph["inputs"] = _inputs(example_inputs)
        out.graph["input_shapes"] = [list(shape) for _, shape, _ in out.graph["inputs"]]
    source_of: dict = {}  # fx node -> the graph node holding its value
    for node in graph.nodes:
        site = sites.get(node)
        if site is None:
            key = node.name
            out.add_node(key, **_attrs(node, owner, "", None, values.get(key)))
            for arg in node.all_input_nodes:
                if source_of.get(arg) is not None:
                    out.add_edge(source_of[arg], key)
            source_of[node] = key
            continue
        out.graph["layers"][site.path] = type(site.layer).__name__
        inner: dict = {}
        for inner_node in site.layer.graph.nodes:
            if inner_node.op == "placeholder":  # the call's input
                arg = node.args[0] if node.args else None
                inner[inner_node] = source_of.get(arg) if isinstance(arg, fx.Node) else None
            elif inner_node.op == "output":  # the layer's result: what the call's users read
                result = inner_node.args[0]
                source_of[node] = inner.get(result) if isinstance(result, fx.Node) else None
            else:
                key = f"{site.prefix}.{inner_node.name}"
                attrs = _attrs(inner_node, site.layer, site.path, site, values.get(key))
                out.add_node(key, **attrs)
                for arg in inner_node.all_input_nodes:
                    if inner.get(arg) is not None:
                        out.add_edge(inner[arg], key)
                inner[inner_node] = key
    if gm is None:
        out.graph["layers"][""] = type(root).__name__
    out.graph["at_step"] = _at_step(root if gm is None else gm, out)
    return _Built(out, root if gm is None else gm)


def _model_graph(bio: nn.Module, example_inputs: Any) -> tuple[Optional[fx.GraphModule], nn.Module, str]:
    """``(model graph, model, how it was captured)``; the graph is ``None`` for a bio layer (a
    model that is one layer, or one layer of a model): its own graph is drawn."""
    if isinstance(bio, fx.GraphModule):
        return bio, bio, "fx"
    if isinstance(bio, BioLayer):  # transform(nn.Linear(...)), or one layer of a bio model
        return None, bio, "one layer"
    if not hasattr(type(bio), "bio_graph"):
        raise TypeError(
            f"expected a model transformed by biofx.transform or a torch.fx.GraphModule, got {type(bio).__name__}; "
            "pass biofx.transform(model) or torch.fx.symbolic_trace(model)"
        )
    gm = bio.bio_graph
    capture = bio.bio_report.capture
    if gm is not None:
        if example_inputs is None or not capture.startswith("export") or _fits(gm, example_inputs):
            return gm, bio, capture
        # an exported graph is specialized to the inputs it was captured with: capture again
    elif example_inputs is None:
        raise ValueError(
            f"{type(bio).__name__} has no model graph to draw (bio.bio_graph is None: it was planned from the "
            "module tree, see bio.bio_report.capture); pass example_inputs, e.g. "
            '{"input_ids": torch.randint(0, vocab_size, (1, 8))} or biofx.capture.default_inputs(model), '
            "to capture it with torch.export"
        )

    # in eval mode: in training mode an activity probe's update (under no_grad) is exported as
    # a node of its own beside the layer's call, which would draw it twice and, when run for
    # the shapes, count the example in the real buffers
    modes = [(module, module.training) for module in bio.modules()]
    bio.eval()
    try:
        captured = capture_.export_graph(bio, example_inputs)
    finally:
        for module, training in modes:
            module.training = training
    return captured.gm, bio, captured.label


def _fits(gm: fx.GraphModule, example_inputs: Any) -> bool:
    """Whether an exported graph takes ``example_inputs`` (same names and shapes as its capture)."""
    try:
        flat = _flat_inputs(gm, example_inputs)
    except (TypeError, ValueError):
        return False
    placeholders = [node for node in gm.graph.nodes if node.op == "placeholder"]
    for node, value in zip(placeholders, flat):
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) != isinstance(value, torch.Tensor):
            return False
        if isinstance(val, torch.Tensor) and (tuple(val.shape) != tuple(value.shape) or val.dtype != value.dtype):
            return False
    return True


def _sites(gm: fx.GraphModule) -> dict:
    """``call node -> _Site`` for every call of a bio layer in the model graph."""
    sites, calls = {}, Counter()
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = capture_.submodule(gm, node.target)
        if isinstance(module, BioLayer) and len(node.args) == 1 and not node.kwargs:
            n = calls[node.target]
            calls[node.target] += 1
            sites[node] = _Site(node.target if n == 0 else f"{node.target}@{n}", node.target, module)
    return sites


def _attrs(node: fx.Node, owner: nn.Module, base: str, site: Optional[_Site], value) -> dict:
    """The networkx attributes of ``node`` (of ``owner``'s graph, whose targets are relative to
    the module at path ``base``)."""
    tag = tags.get_tag(node)
    target = node.target
    if node.op in ("get_attr", "call_module"):
        target = join_path(base, target)
    attrs = {
        "op": node.op,
        "target": target if isinstance(target, str) else _get_qualified_name(target),
        "biofx": dict(tag) if tag is not None else None,
        "module": _module_of(node, tag, target, site),
        "layer": site.path if site is not None else None,
    }
    if site is not None:
        attrs["site"] = site.prefix
    if node.op == "call_module":
        attrs["module_type"] = type(capture_.submodule(owner, node.target)).__name__
    if node.op == "call_function":
        attrs["operation"] = _op_name(node.target)
    if node.target is ops.weight_split:
        _, attrs["gamma"], attrs["channel_dim"] = node.args
    if value is not None:
        attrs["shape"], attrs["dtype"] = value
    return attrs


def _module_of(node: fx.Node, tag: Optional[dict], target: Any, site: Optional[_Site]) -> Optional[str]:
    """The owning module path: the tag's layer, the called module, the attribute's owner, or
    the module stack; biofx's own modules (``biofx_state``, ``biofx_lifted``) are not modules
    of the model."""
    if tag is not None:
        return tag["layer"]
    if site is not None:
        return site.path
    if node.op == "call_module":
        return _public(target) or None
    if node.op == "get_attr":
        return _public(target.rpartition(".")[0]) or None
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, _ = list(stack.values())[-1]
        return _public(path) or None
    return None


def _public(path: str) -> str:
    """``path`` up to the first module biofx added (``fc1.biofx_state`` → ``fc1``)."""
    parts = path.split(".") if path else []
    for i, part in enumerate(parts):
        if part.startswith(_INTERNAL):
            return ".".join(parts[:i])
    return path


def _op_name(target: Any) -> str:
    """The operation a ``call_function`` target names: ``torch.ops.aten.linear.default`` →
    ``linear`` (an ATen op by its overload packet, not ``default``), ``F.max_pool2d`` → ``max_pool2d``."""
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        packet = target.overloadpacket if isinstance(target, torch._ops.OpOverload) else target
        return packet._qualified_op_name.split("::")[-1]
    if isinstance(target, torch._ops.HigherOrderOperator):
        return target.name()
    return _get_qualified_name(target).rpartition(".")[2]


# -- shapes --------------------------------------------------------------------------------
class _Recorder(fx.Interpreter):
    """Runs a graph and records ``(shape, dtype)`` of every tensor value under its graph key;
    a bio layer's call runs the layer's own graph, recorded under the site's prefix."""

    def __init__(self, module: nn.Module, graph: fx.Graph, prefix: str, sites: dict, values: dict) -> None:
        super().__init__(module, graph=graph)
        self.extra_traceback = False
        self.prefix, self.sites, self.values = prefix, sites, values

    def run_node(self, n: fx.Node) -> Any:
        site = self.sites.get(n)
        if site is not None:
            args, _ = self.fetch_args_kwargs_from_env(n)
            inner = _Recorder(site.layer, site.layer.graph, f"{site.prefix}.", {}, self.values)
            result = inner.run(*args, enable_io_processing=False)
        else:
            result = super().run_node(n)
        value = result
        if n.op == "output" and isinstance(result, (tuple, list)) and len(result) == 1:
            value = result[0]  # an exported graph returns its outputs flattened
        if isinstance(value, torch.Tensor):
            self.values[self.prefix + n.name] = (tuple(value.shape), value.dtype)
        return result


def _run(owner: nn.Module, graph: fx.Graph, sites: dict, example_inputs: Any, bio: nn.Module) -> dict:
    """``graph key -> (shape, dtype)``, leaving modes, bio state and ``node.meta`` as they were."""
    flat = _flat_inputs(owner, example_inputs, graph)
    modes = [(module, module.training) for module in (*owner.modules(), *bio.modules())]
    values: dict = {}
    owner.eval()
    bio.eval()
    try:
        with torch.no_grad():
            _Recorder(owner, graph, "", sites, values).run(*flat, enable_io_processing=False)
    except Exception as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"example_inputs do not fit {type(bio).__name__}: {type(err).__name__}: {first}") from err
    finally:
        for module, training in modes:
            module.training = training
    return values


def _flat_inputs(owner: nn.Module, example_inputs: Any, graph: Optional[fx.Graph] = None) -> list:
    """The values of ``graph``'s placeholders, in order, for ``example_inputs``."""
    graph = owner.graph if graph is None else graph
    args, kwargs = capture_.split_inputs(example_inputs)
    info = getattr(graph._codegen, "pytree_info", None)
    if info is not None and info.in_spec is not None:  # an exported graph: (args, kwargs) flattened
        from torch.fx._pytree import tree_flatten_spec

        try:
            return list(tree_flatten_spec((args, kwargs), info.in_spec))
        except Exception as err:
            raise ValueError(f"example_inputs do not fit the captured graph's inputs: {err}") from err
    flat = []
    for i, node in enumerate(n for n in graph.nodes if n.op == "placeholder"):
        name = node.target.lstrip("*")
        if i < len(args):
            flat.append(args[i])
        elif name in kwargs:
            flat.append(kwargs.pop(name))
        elif node.args:
            flat.append(node.args[0])  # the argument's default
        else:
            raise ValueError(f"example_inputs do not fit {type(owner).__name__}: no value for input {name!r}")
    if len(args) > len(flat) or kwargs:
        extra = ", ".join(map(repr, kwargs)) or f"{len(args)} positional inputs"
        raise ValueError(f"example_inputs do not fit {type(owner).__name__}: it does not take {extra}")
    return flat


def _inputs(example_inputs: Any) -> list:
    """``(name or None, shape, dtype)`` for every tensor input."""
    if isinstance(example_inputs, dict):
        items = list(example_inputs.items())
    else:
        positional = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        items = [(None, t) for t in positional]
    return [(name, tuple(t.shape), t.dtype) for name, t in items if isinstance(t, torch.Tensor)]


# -- at the step ---------------------------------------------------------------------------
def _at_step(root: nn.Module, graph: nx.DiGraph) -> dict[str, tuple[str, ...]]:
    """``layer -> mechanisms`` that ``bio_report`` lists for a drawn bio layer but no graph node
    serves: those act at the optimizer step (or on a schedule of steps), not in the graph."""
    from .report import layer_report

    in_graph = defaultdict(set)
    for _, data in graph.nodes(data=True):
        if data["biofx"] is not None:
            in_graph[data["biofx"]["layer"]].add(data["biofx"]["mechanism"])
    at_step = {}
    for path in graph.graph["layers"]:
        layer = root.get_submodule(path)
        step = tuple(m for m in layer_report(path, layer).mechanisms if _mechanism(m) not in in_graph[path])
        if step:
            at_step[path] = step
    return at_step


def _mechanism(entry: str) -> str:
    """The mechanism of a ``bio_report`` entry: ``"rejuvenate (every 50 steps)"`` → ``"rejuvenate"``."""
    return entry.partition(" ")[0]


# -- folding modules into boxes --------------------------------------------------------------
def _live(graph: nx.DiGraph) -> list:
    """The nodes the drawing shows: those whose value reaches the output (with the inputs and
    every bio node). An exported graph keeps some computations nothing uses (Hugging Face's
    mask helpers): they are left out, and the caption says how many."""
    outputs = [name for name, op in graph.nodes(data="op") if op == "output"]
    keep = set(outputs)
    for output in outputs:
        keep |= nx.ancestors(graph, output)
    return [
        name
        for name, data in graph.nodes(data=True)
        if name in keep or data["op"] == "placeholder" or data["biofx"] is not None or not outputs
    ]


def _check_depth(depth: Union[int, str, None], graph: nx.DiGraph, live: list, root: nn.Module) -> Optional[int]:
    if depth == "auto":
        return _auto_depth(graph, live, root)
    if depth is None:
        return None
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, None (every node) or 'auto', got {depth!r}")
    return depth


def _auto_depth(graph: nx.DiGraph, live: list, root: nn.Module) -> Optional[int]:
    """``depth="auto"``: every node up to :data:`MAX_NODES`; else the repeated blocks as boxes
    (the children of the outermost ``nn.ModuleList``/``nn.Sequential`` whose two or more
    children are containers of one class: a transformer's layers, a ResNet stage's blocks),
    or, without such blocks or when that is still too many, the deepest depth that fits."""
    if len(live) <= MAX_NODES:
        return None
    deepest = max((len(m.split(".")) for _, m in graph.nodes(data="module") if m), default=0)
    blocks = _block_depth(root)
    start = min(blocks, deepest) if blocks is not None else deepest
    for depth in range(start, 0, -1):
        if _count_drawn(graph, live, depth) <= MAX_NODES:
            return depth
    return 1 if deepest else None


def _block_depth(root: nn.Module) -> Optional[int]:
    """The depth of the outermost repeated blocks of ``root`` (see :func:`_auto_depth`), or ``None``."""
    depths = []
    for path, module in root.named_modules():
        children = list(module.children())
        if (
            isinstance(module, (nn.ModuleList, nn.Sequential))
            and len(children) >= 2
            and len({type(child) for child in children}) == 1
            and any(True for _ in children[0].children())
        ):
            depths.append(len(path.split(".")) + 1 if path else 1)
    return min(depths, default=None)


def _group(module: Optional[str], depth: Optional[int]) -> Optional[str]:
    """The box a node of ``module`` is drawn in at ``depth`` (``None``: drawn as itself)."""
    if depth is None or not module:
        return None
    parts = module.split(".")
    return ".".join(parts[:depth]) if len(parts) >= depth else None


def _groups(graph: nx.DiGraph, live: list, depth: Optional[int]) -> dict:
    """``node -> its box`` (``None``: drawn as itself); a box of one node is the node itself."""
    groups = {name: _group(graph.nodes[name]["module"], depth) for name in live}
    sizes = Counter(groups.values())
    return {name: group if sizes[group] > 1 else None for name, group in groups.items()}


def _count_drawn(graph: nx.DiGraph, live: list, depth: int) -> int:
    groups = _groups(graph, live, depth)
    return sum(group is None for group in groups.values()) + len({g for g in groups.values() if g is not None})


def _drawn_as(name: str, groups: dict) -> str:
    return name if groups[name] is None else _BOX + groups[name]


def _box_attrs(group: str, names: list, graph: nx.DiGraph, groups: dict, root: nn.Module) -> tuple[dict, set]:
    """A folded module: one box, its path and class, and a row per bio layer inside with the
    mechanisms of its graph nodes, each in its colour. Returns the attributes and the mechanisms."""
    layers: dict = {}  # layer path -> mechanisms in the graph (registry order)
    for name in names:
        data = graph.nodes[name]
        if data["layer"] is not None:
            mechanisms = layers.setdefault(data["layer"], set())
            if data["biofx"] is not None and data["biofx"]["mechanism"] != tags.LAYER:
                mechanisms.add(data["biofx"]["mechanism"])
    module = capture_.submodule(root, group)
    kind = type(module).__name__ if module is not None else ""
    width = 1 + max((len(m) for m in layers.values()), default=0)
    out = [n for n in names if any(groups.get(user, group) != group for user in graph.successors(n))]
    shapes = {graph.nodes[n].get("shape") for n in out} - {None}
    what = [kind]
    if layers and group not in layers:  # a folded bio layer is its own only row
        what.append(f"{len(layers)} bio layer{'s' * (len(layers) != 1)}")
    what.append(f"{len(names)} nodes")
    if len(shapes) == 1:
        what.append(f"→ {list(shapes.pop())}")
    rows = [
        f'<TR><TD COLSPAN="{width}"><B>{html.escape(group)}</B></TD></TR>',
        f'<TR><TD COLSPAN="{width}"><FONT POINT-SIZE="9">{html.escape(", ".join(what))}</FONT></TD></TR>',
    ]
    drawn = set()
    for layer, mechanisms in layers.items():
        ordered = [m for m in MECHANISM_COLOURS if m in mechanisms] + sorted(mechanisms - set(MECHANISM_COLOURS))
        cells = [] if layer == group else [
            f'<TD ALIGN="LEFT" BGCOLOR="{MECHANISM_COLOURS[tags.LAYER]}">{html.escape(layer[len(group) + 1 :])}</TD>'
        ]
        cells += [
            f'<TD BGCOLOR="{MECHANISM_COLOURS.get(m, OTHER_COLOUR)}"><FONT POINT-SIZE="8">{html.escape(m)}</FONT></TD>'
            for m in ordered
        ]
        if cells:
            cells += ["<TD></TD>"] * (width - len(cells))
            rows.append(f"<TR>{''.join(cells)}</TR>")
        drawn |= mechanisms
    table = f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="2" CELLPADDING="2">{"".join(rows)}</TABLE>'
    attrs = {"label": f"<{table}>", "tooltip": f"{group}: {kind}, {len(names)} nodes folded (depth)"}
    if layers:
        attrs.update(style="rounded,filled", fillcolor=_BIO_BOX)
    return attrs, drawn


# -- graphviz ------------------------------------------------------------------------------
def _layer_tops(graph: nx.DiGraph, groups: dict) -> set:
    """Invisible edges from a bio layer's input to its parameters (the nodes of its box with no
    input), so each layer's box is drawn below what feeds it: boxes stack down the page
    instead of stepping to the right."""
    inputs, tops = defaultdict(set), defaultdict(list)
    for name, group in groups.items():
        site = graph.nodes[name].get("site")
        if site is None or group is not None:
            continue
        preds = list(graph.predecessors(name))
        if not preds:
            tops[site].append(name)
        inputs[site] |= {_drawn_as(p, groups) for p in preds if p in groups and graph.nodes[p].get("site") != site}
    return {(source, top) for site, names in tops.items() for source in inputs[site] for top in names}


def _import_graphviz():
    try:
        import graphviz
    except ImportError as err:
        raise ImportError('drawing needs the graphviz package: pip install -e ".[viz]" (from a clone of biofx)') from err
    return graphviz


def _short_name(data: dict) -> str:
    op, target = data["op"], data["target"]
    if op == "call_module":
        return data["module_type"]
    if op == "call_function":
        return data["operation"]
    if op == "get_attr":
        return target.rpartition(".")[2]
    if op == "placeholder":
        return "input" if target == "input" else f"input {target}"
    return target  # call_method: the method name; output: "output"


def _caption(title: Optional[str], graph: nx.DiGraph, live: list, depth: Optional[int], groups: dict) -> str:
    """The title, which inputs the drawn shapes belong to, and what is folded or left out."""
    lines = [title] if title else []
    inputs = graph.graph.get("inputs")
    if inputs:
        described = []
        for name, shape, dtype in inputs:
            kind = str(dtype).removeprefix("torch.")
            shown = str(list(shape)) + ("" if kind == "float32" else f" {kind}")
            described.append(f"{name} {shown}" if name else shown)
        lines.append(f"shapes for an example input of {', '.join(described)}")
    boxes = {group for group in groups.values() if group is not None}
    notes = []
    if boxes:
        folded = sum(group is not None for group in groups.values())
        notes.append(
            f"modules {depth} level{'s' * (depth != 1)} deep drawn as boxes (depth={depth}): "
            f"{folded} nodes in {len(boxes)} boxes"
        )
    unused = graph.number_of_nodes() - len(live)
    if unused:
        notes.append(f"{unused} unused node{'s' * (unused != 1)} not drawn")
    if notes:
        lines.append("; ".join(notes))
    return "\\n".join(lines)


def _split_line(data: dict) -> str:
    """What a ``weight_split`` node computes: ``"Γ=2: 128 → 64 groups → 128"``."""
    gamma = data["gamma"]
    if "shape" not in data:
        return f"Γ={gamma}: sums groups of {gamma}"
    channels = data["shape"][data["channel_dim"]]
    return f"Γ={gamma}: {channels} → {channels // gamma} groups → {channels}"


def _node_attrs(name: str, data: dict, cluster: Optional[str], sites: dict) -> dict:
    """Label (operation, module unless its box names it, shape), tooltip and fill of one node."""
    lines = [_short_name(data)]
    named_by_box = cluster is not None and (cluster == data["module"] or sites.get(cluster) == data["module"])
    if data["module"] and not named_by_box:
        lines.append(data["module"])
    if "gamma" in data:
        lines.append(_split_line(data))
    if "shape" in data:
        dtype = str(data["dtype"]).removeprefix("torch.")
        lines.append(f"{list(data['shape'])}" + ("" if dtype == "float32" else f" {dtype}"))
    tooltip = f"{name}: {data['op']} {data['target']}"
    attrs = {"label": "\\n".join(lines), "tooltip": tooltip}
    tag = data["biofx"]
    if tag is not None:
        attrs["tooltip"] += f" | biofx {tag['mechanism']} ({tag['pass']})"
        attrs.update(style="rounded,filled", fillcolor=MECHANISM_COLOURS.get(tag["mechanism"], OTHER_COLOUR))
    if data["op"] in ("placeholder", "output"):
        attrs["shape"] = "ellipse"
    return attrs


def _box_of(data: dict) -> Optional[str]:
    """The module whose cluster may hold the node: a plain module call sits in its parent's box."""
    if data["op"] == "call_module" and data["layer"] is None:
        return data["module"].rpartition(".")[0] if data["module"] else None
    return data["module"]


def _prefixes(module: str) -> list[str]:
    """``"a.b.c"`` → ``["a", "a.b", "a.b.c"]``."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _module_clusters(graph: nx.DiGraph, groups: dict) -> set:
    """The modules that get a cluster: those holding at least two drawn nodes (a box counts once)."""
    count: Counter = Counter()
    for name, group in groups.items():
        if group is not None:
            continue
        box = _box_of(graph.nodes[name])
        if box:
            count.update(_prefixes(box))
    for group in {g for g in groups.values() if g is not None}:
        if "." in group:
            count.update(_prefixes(group.rpartition(".")[0]))
    return {p for p, n in count.items() if n >= 2}


def _home(data: dict, clusters: set, sites: dict) -> list:
    """The clusters a node sits in, outermost first: module clusters along its path and, for a
    nested node, its bio layer's box (a layer's box stands for its module's cluster)."""
    if data["layer"] is not None:
        parent = data["layer"].rpartition(".")[0]
        outer = [p for p in _prefixes(parent) if p in clusters] if parent else []
        return outer + [data["site"]]
    box = _box_of(data)
    return [p for p in _prefixes(box) if p in clusters] if box else []


def _emit_nodes(dot, drawn: dict, homes: dict, sites: dict, layers: dict) -> None:
    """Declare the nodes inside their clusters (nested along ``homes``)."""
    members, children = defaultdict(list), defaultdict(list)
    parent_of: dict = {}
    for name, home in homes.items():
        members[home[-1] if home else ""].append(name)
        for outer, inner in zip(["", *home], home):
            if inner not in parent_of:
                parent_of[inner] = outer
                children[outer].append(inner)

    def emit(container, cluster: str) -> None:
        for name in members[cluster]:
            container.node(name, **drawn[name])
        for child in children[cluster]:
            with container.subgraph(name=f"cluster_{child}") as sub:
                if child in sites:  # a bio layer's box: its path and class, in the layer colour
                    path = sites[child]
                    call = child.rpartition("@")[2] if "@" in child else ""
                    label = f"{path or '<root>'} · {layers.get(path, '')}"
                    label += f" (call {int(call) + 1})" if call else ""
                    sub.attr(label=label, style="rounded", color=MECHANISM_COLOURS[tags.LAYER], penwidth="1.5",
                             fontsize="10")
                else:
                    sub.attr(label=child, style="rounded,dashed", color="#777777", fontsize="11")
                emit(sub, child)

    emit(dot, "")


def _lane_rows(at_step: dict, depth: Optional[int]) -> list[tuple[str, tuple]]:
    """The lane's rows: one per layer, or one per folded module (its layers' mechanisms merged)."""
    rows: dict = {}
    for layer, mechanisms in at_step.items():
        group = _group(layer, depth)
        if group is None:
            rows[layer] = (layer or "<root>", list(mechanisms), 1)
            continue
        label, merged, n = rows.get(group, (group, [], 0))
        rows[group] = (label, merged + [m for m in mechanisms if m not in merged], n + 1)
    return [
        (label if n == 1 and label in at_step else f"{label} ({n} layers)", tuple(mechanisms))
        for label, mechanisms, n in rows.values()
    ]


def _step_lane(dot, rows: list) -> None:
    """One node, a table with a row per layer: the mechanisms that act at its optimizer step,
    each in its colour and named (they have no legend entry)."""
    width = 1 + max(len(mechanisms) for _, mechanisms in rows)
    cells_of = []
    for label, mechanisms in rows:
        cells = [f'<TD BORDER="0" ALIGN="RIGHT">{html.escape(label)}</TD>']
        for entry in mechanisms:
            colour = MECHANISM_COLOURS.get(_mechanism(entry), OTHER_COLOUR)
            cells.append(f'<TD BGCOLOR="{colour}">{html.escape(entry)}</TD>')
        cells_of.append(f"<TR>{''.join(cells)}</TR>")
    title = f'<TR><TD BORDER="0" COLSPAN="{width}">at optimizer.step() (no graph nodes)</TD></TR>'
    frame = 'BORDER="1" STYLE="ROUNDED" COLOR="#777777" CELLBORDER="1" CELLSPACING="4" CELLPADDING="4"'
    table = f'<TABLE {frame}>{title}{"".join(cells_of)}</TABLE>'
    dot.node(STEP_LANE, label=f"<{table}>", shape="plaintext")


def _legend(dot, present: set) -> None:
    """One node, a table with a filled cell per mechanism drawn, in :data:`MECHANISM_COLOURS` order."""
    ordered = [m for m in MECHANISM_COLOURS if m in present] + sorted(present - set(MECHANISM_COLOURS))
    rows = "".join(
        f'<TR><TD BGCOLOR="{MECHANISM_COLOURS.get(m, OTHER_COLOUR)}" STYLE="ROUNDED">{html.escape(m)}</TD></TR>'
        for m in ordered
    )
    frame = 'BORDER="1" STYLE="ROUNDED" COLOR="#777777" CELLBORDER="1" CELLSPACING="4" CELLPADDING="6"'
    title = '<TR><TD BORDER="0"><FONT POINT-SIZE="11">biofx mechanisms</FONT></TD></TR>'
    dot.node(LEGEND, label=f"<<TABLE {frame}>{title}{rows}</TABLE>>", shape="plaintext")
