"""See the bio graph: :func:`to_networkx`, :func:`to_graphviz` and :func:`draw`.

Every node biofx inserts or replaces carries a bio tag (``node.meta["custom"]["biofx"]``,
see :mod:`biofx.passes.tags`). The networkx view exposes it as the ``biofx`` node attribute;
the graphviz drawing fills each bio node with the colour of its mechanism
(:data:`MECHANISM_COLOURS`) and adds a legend of the mechanisms present. Mechanisms that act
at the optimizer step (crystallization, synaptic scaling, rejuvenation) have no graph node:
the networkx view lists them per layer in ``graph.graph["at_step"]`` and the drawing shows
them in a lane of their own, so a drawing shows everything ``bio_report`` lists. Both accept
any ``torch.fx.GraphModule``: a plain one simply has no bio nodes.

>>> import torch, torch.nn as nn, biofx
>>> from biofx.viz import to_networkx
>>> bio = biofx.transform(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
>>> g = to_networkx(bio, torch.randn(3, 4))
>>> g.nodes["linear"]["biofx"]["mechanism"], g.nodes["linear"]["shape"]
('layer', (3, 8))
"""

from __future__ import annotations

import html
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional, Union

import networkx as nx
import torch
import torch.fx as fx
from torch.fx.node import _get_qualified_name
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from . import ops, registry
from .passes import tags

__all__ = ["MECHANISM_COLOURS", "FORMATS", "to_networkx", "to_graphviz", "draw"]

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

_INSTALL_DOT = (
    "the graphviz 'dot' program was not found on PATH; install Graphviz: "
    "`apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS) or "
    "`conda install graphviz`"
)
_META_KEYS = ("tensor_meta", "type")  # what ShapeProp writes into node.meta
STEP_LANE = "at step"  #: the DOT name of the step-phase node (fx node names never contain a space)


def to_networkx(gm: fx.GraphModule, example_inputs: Any = None) -> nx.DiGraph:
    """The fx graph as a ``networkx.DiGraph``: one node per fx node, edges along data flow.

    Args:
        gm: any ``torch.fx.GraphModule`` (a bio model or a plain traced one).
        example_inputs: a tensor, or a tuple (or list) of positional inputs; when given, every
            tensor-valued node also gets ``shape`` (a tuple) and ``dtype``.

    Node keys are the fx node names; attributes: ``op``, ``target`` (a string: the qualified
    name of a called function, as in ``gm.code``), ``biofx`` (a copy of the bio tag, or
    ``None``) and ``module`` (the owning module path, ``None`` when unknown). Shapes come
    from ``ShapeProp`` run under ``torch.no_grad()`` with every module in eval mode (restored
    afterwards), so no bio state (activity counts) changes and ``node.meta`` is left as it was.

    Graph attributes: ``name`` (the module's class), ``at_step`` (``layer -> mechanisms`` that
    act at the optimizer step, in ``bio_report``'s words; empty for a plain graph) and, with
    example inputs, ``input_shapes`` (a list of shapes, one per tensor input).
    """
    if not isinstance(gm, fx.GraphModule):
        raise TypeError(
            f"expected a torch.fx.GraphModule, got {type(gm).__name__}; "
            "pass biofx.transform(model) or torch.fx.symbolic_trace(model)"
        )
    shapes = _propagate_shapes(gm, example_inputs) if example_inputs is not None else {}
    graph = nx.DiGraph(name=type(gm).__name__, at_step=_at_step(gm))
    if example_inputs is not None:
        graph.graph["input_shapes"] = [list(t.shape) for t in _as_tuple(example_inputs) if isinstance(t, torch.Tensor)]
    for node in gm.graph.nodes:
        tag = tags.get_tag(node)
        attrs = {
            "op": node.op,
            "target": _target_name(node.target),
            "biofx": dict(tag) if tag is not None else None,
            "module": _module_of(node, tag),
        }
        meta = shapes.get(node.name)
        if isinstance(meta, TensorMetadata):
            attrs["shape"] = tuple(meta.shape)
            attrs["dtype"] = meta.dtype
        graph.add_node(node.name, **attrs)
        for source in node.all_input_nodes:
            graph.add_edge(source.name, node.name)
    return graph


def to_graphviz(
    gm: fx.GraphModule,
    example_inputs: Any = None,
    cluster_by_module: bool = False,
    title: Optional[str] = None,
):
    """A ``graphviz.Digraph`` of ``gm`` (its ``.source`` is the DOT text); see :func:`draw`."""
    graphviz = _import_graphviz()
    graph = to_networkx(gm, example_inputs)
    dot = graphviz.Digraph(
        graph.graph["name"],
        graph_attr={"rankdir": "TB", "fontname": "Helvetica"},
        node_attr={"shape": "box", "style": "rounded", "fontname": "Helvetica", "fontsize": "10"},
        edge_attr={"arrowsize": "0.6"},
    )
    caption = _caption(title, graph.graph.get("input_shapes"))
    if caption:
        dot.attr(label=caption, labelloc="t", fontsize="16")
    fx_nodes = {node.name: node for node in gm.graph.nodes}
    nodes = {name: _node_attrs(gm, fx_nodes[name], data) for name, data in graph.nodes(data=True)}
    modules = {name: _box_of(data) if cluster_by_module else None for name, data in graph.nodes(data=True)}
    _emit_nodes(dot, nodes, modules)
    for source, target in graph.edges:
        dot.edge(source, target)
    present = {data["biofx"]["mechanism"] for _, data in graph.nodes(data=True) if data["biofx"]}
    if graph.graph["at_step"]:
        present |= _step_lane(dot, graph.graph["at_step"])
        for name, data in graph.nodes(data=True):  # the step comes after the forward pass: draw it below
            if data["op"] == "output":
                dot.edge(name, STEP_LANE, style="invis")
    if present:
        _legend(dot, present)
    return dot


def draw(
    gm: fx.GraphModule,
    path: Union[str, os.PathLike],
    example_inputs: Any = None,
    cluster_by_module: bool = False,
    title: Optional[str] = None,
) -> Union[str, os.PathLike]:
    """Render ``gm`` with Graphviz to ``path`` (``.svg``, ``.png`` or ``.pdf``) and return ``path``.

    Bio nodes are filled with their mechanism's colour (:data:`MECHANISM_COLOURS`), original
    nodes are left white, and a legend lists the mechanisms present. Labels show the
    operation, the owning module and, with ``example_inputs``, the output shape (the caption
    then names the input shapes the shapes follow from); a ``weight_split`` node shows its
    group sums (``Γ=2: 128 → 64 groups → 128``). Mechanisms that act at the optimizer step
    are drawn per layer in an "at optimizer.step()" lane.
    ``cluster_by_module=True`` boxes the nodes of each module (nested along the module path),
    which keeps large models readable.

    Needs the ``graphviz`` Python package (``pip install "biofx[viz]"``) and the Graphviz
    ``dot`` program.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot draw to {os.fspath(path)!r}: the suffix must be one of {', '.join(FORMATS)}")
    graphviz = _import_graphviz()
    dot = to_graphviz(gm, example_inputs, cluster_by_module, title)
    try:
        data = dot.pipe(format=suffix[1:])
    except graphviz.ExecutableNotFound as err:
        raise RuntimeError(_INSTALL_DOT) from err
    Path(path).write_bytes(data)
    return path


# -- networkx ------------------------------------------------------------------------------
def _propagate_shapes(gm: fx.GraphModule, example_inputs: Any) -> dict:
    """``node name -> ShapeProp tensor metadata``, leaving modes, bio state and ``node.meta`` as they were."""
    inputs = _as_tuple(example_inputs)
    saved_meta = {node: {k: node.meta[k] for k in _META_KEYS if k in node.meta} for node in gm.graph.nodes}
    modes = [(module, module.training) for module in gm.modules()]
    gm.eval()
    try:
        with torch.no_grad():
            try:
                # ShapeProp and GraphModule.__call__ print a traceback before they raise: check
                # the inputs with a quiet call of the generated forward first.
                gm.forward(*inputs)
            except Exception as err:
                raise ValueError(
                    f"example_inputs do not fit {type(gm).__name__}: {type(err).__name__}: {err}"
                ) from err
            ShapeProp(gm).propagate(*inputs)
        return {node.name: node.meta.get("tensor_meta") for node in gm.graph.nodes}
    finally:
        for module, training in modes:
            module.training = training
        for node, meta in saved_meta.items():
            for key in _META_KEYS:
                node.meta.pop(key, None)
            node.meta.update(meta)


def _as_tuple(example_inputs: Any) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _target_name(target: Any) -> str:
    # the name fx's code generation uses: F.max_pool2d is a boolean_dispatch wrapper whose
    # type name ends in "<locals>.fn"
    return target if isinstance(target, str) else _get_qualified_name(target)


def _at_step(gm: fx.GraphModule) -> dict[str, tuple[str, ...]]:
    """``layer -> mechanisms`` that ``bio_report`` lists for the layer but no graph node serves:
    those act at the optimizer step (or on a schedule of steps), not in the graph."""
    report = getattr(gm, "bio_report", None)
    if report is None:
        return {}
    in_graph = defaultdict(set)
    for node in gm.graph.nodes:
        tag = tags.get_tag(node)
        if tag is not None:
            in_graph[tag["layer"]].add(tag["mechanism"])
    at_step = {}
    for layer in report.converted:
        step = tuple(m for m in layer.mechanisms if _mechanism(m) not in in_graph[layer.name])
        if step:
            at_step[layer.name] = step
    return at_step


def _mechanism(entry: str) -> str:
    """The mechanism of a ``bio_report`` entry: ``"rejuvenate (every 50 steps)"`` → ``"rejuvenate"``."""
    return entry.partition(" ")[0]


def _module_of(node: fx.Node, tag: Optional[dict]) -> Optional[str]:
    """The owning module path: the tag's layer, the called module, the attribute's owner, or the module stack."""
    if tag is not None:
        return tag["layer"]
    if node.op == "call_module":
        return node.target
    if node.op == "get_attr":
        return node.target.rpartition(".")[0]
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, _ = list(stack.values())[-1]
        return path
    return None


# -- graphviz ------------------------------------------------------------------------------
def _import_graphviz():
    try:
        import graphviz
    except ImportError as err:
        raise ImportError('drawing needs the graphviz package: pip install "biofx[viz]"') from err
    return graphviz


def _short_name(gm: fx.GraphModule, name: str, data: dict) -> str:
    op, target = data["op"], data["target"]
    if op == "call_module":
        return type(gm.get_submodule(target)).__name__
    if op in ("call_function", "get_attr"):
        return target.rpartition(".")[2]
    if op == "placeholder":
        return "input" if target == "input" else f"input {target}"
    return target  # call_method: the method name; output: "output"


def _caption(title: Optional[str], input_shapes: Optional[list]) -> str:
    """The title, and which input the drawn shapes belong to."""
    lines = [title] if title else []
    if input_shapes:
        lines.append(f"shapes for an example input of {', '.join(map(str, input_shapes))}")
    return "\\n".join(lines)


def _split_line(node: fx.Node, data: dict) -> str:
    """What a ``weight_split`` node computes: ``"Γ=2: 128 → 64 groups → 128"``."""
    _, gamma, channel_dim = node.args
    if "shape" not in data:
        return f"Γ={gamma}: sums groups of {gamma}"
    channels = data["shape"][channel_dim]
    return f"Γ={gamma}: {channels} → {channels // gamma} groups → {channels}"


def _node_attrs(gm: fx.GraphModule, node: fx.Node, data: dict) -> dict:
    """Label (operation, module, shape), tooltip and fill of one node."""
    name = node.name
    lines = [_short_name(gm, name, data)]
    if data["module"]:
        lines.append(data["module"])
    if node.target is ops.weight_split:
        lines.append(_split_line(node, data))
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
    if data["op"] == "call_module" and data["biofx"] is None:
        return data["module"].rpartition(".")[0]
    return data["module"]


def _prefixes(module: str) -> list[str]:
    """``"a.b.c"`` → ``["a", "a.b", "a.b.c"]``."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _emit_nodes(dot, nodes: dict, modules: dict) -> None:
    """Declare the nodes, inside nested module clusters where ``modules`` names a module.

    A module gets a cluster when it (with its submodules) holds at least two nodes; a node
    goes into the deepest such cluster on its module path, or stays at the top level.
    """
    count = Counter(p for module in modules.values() if module for p in _prefixes(module))
    clusters = {p for p, n in count.items() if n >= 2}

    def home(module: Optional[str]) -> str:
        return max((p for p in _prefixes(module) if p in clusters), key=len, default="") if module else ""

    members, children = defaultdict(list), defaultdict(list)
    for name, module in modules.items():
        members[home(module)].append(name)
    for cluster in sorted(clusters):
        children[home(cluster.rpartition(".")[0])].append(cluster)

    def emit(container, cluster: str) -> None:
        for name in members[cluster]:
            container.node(name, **nodes[name])
        for child in children[cluster]:
            with container.subgraph(name=f"cluster_{child}") as sub:
                sub.attr(label=child, style="rounded,dashed", color="#777777", fontsize="11")
                emit(sub, child)

    emit(dot, "")


def _step_lane(dot, at_step: dict) -> set:
    """One node, a table with a row per layer: the mechanisms that act at its optimizer step,
    each in its colour. Returns the mechanisms drawn (for the legend)."""
    drawn, rows = set(), []
    width = 1 + max(len(mechanisms) for mechanisms in at_step.values())
    for layer, mechanisms in at_step.items():
        cells = [f'<TD BORDER="0" ALIGN="RIGHT">{html.escape(layer or "<root>")}</TD>']
        for entry in mechanisms:
            colour = MECHANISM_COLOURS.get(_mechanism(entry), OTHER_COLOUR)
            cells.append(f'<TD BGCOLOR="{colour}">{html.escape(entry)}</TD>')
            drawn.add(_mechanism(entry))
        rows.append(f"<TR>{''.join(cells)}</TR>")
    title = f'<TR><TD BORDER="0" COLSPAN="{width}">at optimizer.step() (no graph nodes)</TD></TR>'
    frame = 'BORDER="1" STYLE="ROUNDED" COLOR="#777777" CELLBORDER="1" CELLSPACING="4" CELLPADDING="4"'
    table = f'<TABLE {frame}>{title}{"".join(rows)}</TABLE>'
    dot.node(STEP_LANE, label=f"<{table}>", shape="plaintext")
    return drawn


def _legend(dot, present: set) -> None:
    """A cluster with one filled box per mechanism present, in :data:`MECHANISM_COLOURS` order."""
    ordered = [m for m in MECHANISM_COLOURS if m in present] + sorted(present - set(MECHANISM_COLOURS))
    with dot.subgraph(name="cluster legend") as legend:  # module paths never contain a space
        legend.attr(label="biofx mechanisms", style="rounded", color="#777777", fontsize="11")
        names = [f"legend {m}" for m in ordered]  # fx node names never contain a space
        for name, mechanism in zip(names, ordered):
            colour = MECHANISM_COLOURS.get(mechanism, OTHER_COLOUR)
            legend.node(name, label=mechanism, style="rounded,filled", fillcolor=colour)
        for first, second in zip(names, names[1:]):
            legend.edge(first, second, style="invis")
