"""biofx.viz: the model graph with each bio layer's graph nested, and its drawing."""

import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.node import _get_qualified_name

import biofx
from biofx import viz, zoo
from biofx.bio_layer import BioLayer
from biofx.passes import tags

pytest.importorskip("graphviz")

# Every mechanism that puts nodes into the graph.
CONFIG = dict(
    weight_splitting_Gamma=2,
    apply_dales_principle=True,
    automatic=("fuzzy", "volume"),
    acts_on="gradient",
    synaptic_scaling_gamma=0.01,
    seed=0,
)
GRAPH_MECHANISMS = {"layer", "dale", "fuzzy", "volume", "weight_split", "activity"}
LEGEND = GRAPH_MECHANISMS - {"layer"}  # the layer's own nodes are named by its box, not the legend
OVERLOADS = {"default", "Tensor", "Scalar", "int", "dtype_layout", "self", "out"}
SVG_TEXT = "{http://www.w3.org/2000/svg}text"


def _model(name):
    """A small zoo model and an example input."""
    return {
        "mlp": lambda: (zoo.MLP(16, (8,), 4), torch.randn(3, 16)),
        "cnn": lambda: (zoo.CNN(1, (2, 4), 8, 3, 8), torch.randn(2, 1, 8, 8)),
        "residual": lambda: (zoo.ResidualBlock(dim=8, heads=2, hidden=16), torch.randn(2, 5, 8)),
    }[name]()


def _case(name):
    """``(model, example input)``: a plain traced CNN or a bio model."""
    if name == "plain_cnn":
        model, x = _model("cnn")
        return fx.symbolic_trace(model), x
    model, x = _model(name)
    return biofx.transform(model, **CONFIG), x


CASES = ["plain_cnn", "mlp", "cnn", "residual"]


class Tokens(nn.Module):
    """A Hugging Face-like model torch.fx cannot trace (``int(shape)``): token ids in, with an
    optional mask and a tensor constant (lifted by torch.export)."""

    main_input_name = "input_ids"

    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.config = types.SimpleNamespace(vocab_size=vocab)
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, input_ids, attention_mask=None):
        n = int(input_ids.shape[1])
        x = self.embed(input_ids) * torch.tensor(0.5)
        if attention_mask is not None:
            x = x * attention_mask[..., None]
        x = F.softmax(self.proj(x), dim=-1).reshape(-1, n, x.shape[-1])
        return self.head(x)


def _tokens():
    return {"input_ids": torch.randint(0, 11, (2, 5)), "attention_mask": torch.ones(2, 5)}


def _dot_nodes(source):
    """``name -> (attributes, enclosing cluster names)`` for every node statement of a DOT text."""
    nodes, stack = {}, []
    for line in source.splitlines():
        line = line.strip()
        if m := re.fullmatch(r'subgraph ("[^"]+"|\S+) \{', line):
            stack.append(m.group(1).strip('"'))
        elif line == "}" and stack:
            stack.pop()
        elif "->" not in line and (m := re.fullmatch(r'("[^"]+"|\w+) \[(.*)\]', line)):
            name = m.group(1).strip('"')
            if name not in ("graph", "node", "edge"):
                attrs = {k: v.strip('"') for k, v in re.findall(r'(\w+)=(<(?:[^<>]|<[^<>]*>)*>|"(?:[^"\\]|\\.)*"|[^\s"]+)', m.group(2))}
                nodes[name] = (attrs, list(stack))
    return nodes


def _dot_edges(source):
    return set(re.findall(r'^\s*("[^"]+"|\w+) -> ("[^"]+"|\w+)', source, re.M))


def _legend(nodes):
    """``mechanism -> colour`` of the legend's cells (no legend: empty)."""
    if viz.LEGEND not in nodes:
        return {}
    cells = re.findall(r'<TD BGCOLOR="(#[0-9a-f]{6})" STYLE="ROUNDED">([^<]+)</TD>', nodes[viz.LEGEND][0]["label"])
    return {mechanism: colour for colour, mechanism in cells}


def _expected_graph(gm):
    """Nodes and edges of ``gm``'s graph with each bio layer's call replaced by its layer's graph
    (written independently of biofx.viz: the contract, spelled out)."""
    nodes, edges, value_of, calls = [], set(), {}, {}
    for node in gm.graph.nodes:
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(module, BioLayer):
            nodes.append((node.name, node, node.target))
            edges |= {(value_of[i], node.name) for i in node.all_input_nodes}
            value_of[node] = node.name
            continue
        n = calls[node.target] = calls.get(node.target, -1) + 1
        prefix = node.target if n == 0 else f"{node.target}@{n}"
        inner = {}
        for layer_node in module.graph.nodes:
            if layer_node.op == "placeholder":
                inner[layer_node] = value_of[node.args[0]]
            elif layer_node.op == "output":
                value_of[node] = inner[layer_node.args[0]]
            else:
                key = inner[layer_node] = f"{prefix}.{layer_node.name}"
                target = layer_node.target
                if layer_node.op in ("get_attr", "call_module"):
                    target = f"{node.target}.{target}"
                nodes.append((key, layer_node, target))
                edges |= {(inner[i], key) for i in layer_node.all_input_nodes}
    return nodes, edges


# -- networkx --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_networkx_nests_each_layer_graph_in_the_model_graph(name):
    model, _ = _case(name)
    gm = model if isinstance(model, fx.GraphModule) else model.bio_graph
    g = viz.to_networkx(model)
    nodes, edges = _expected_graph(gm)
    assert list(g.nodes) == [key for key, _, _ in nodes]
    assert set(g.edges) == edges
    for key, node, target in nodes:
        data = g.nodes[key]
        assert data["op"] == node.op
        assert data["target"] == (target if isinstance(target, str) else _get_qualified_name(target))
        assert data["biofx"] == tags.get_tag(node)
        assert "shape" not in data and "dtype" not in data
    if name != "plain_cnn":  # no bio layer's call is left: each is its nodes
        assert not [n for n, d in g.nodes(data=True) if d["op"] == "call_module" and d.get("module_type", "").startswith("BioL")]
        assert set(g.graph["layers"]) == {layer.name for layer in model.bio_report.converted}


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual"])
def test_every_bio_node_is_tagged_with_its_layer(name):
    bio, _ = _case(name)
    g = viz.to_networkx(bio)
    layers = {layer.name for layer in bio.bio_report.converted}
    tagged = {n: d for n, d in g.nodes(data=True) if d["biofx"] is not None}
    assert {d["biofx"]["mechanism"] for d in tagged.values()} == GRAPH_MECHANISMS
    for node, data in tagged.items():
        assert data["biofx"]["layer"] in layers
        assert data["module"] == data["layer"] == data["biofx"]["layer"]
        assert node.startswith(data["layer"] + ".")
    # the untagged nodes are the traced model's, less the converted layer calls
    traced = fx.symbolic_trace(_model(name)[0]).graph.nodes
    expected = {n.name for n in traced if not (n.op == "call_module" and n.target in layers)}
    assert {n for n, d in g.nodes(data=True) if d["biofx"] is None} == expected


def test_module_attribute_follows_calls_attributes_and_the_module_stack():
    bio, _ = _case("residual")
    g = viz.to_networkx(bio)
    assert g.nodes["norm1"]["module"] == "norm1"  # call_module: its target
    assert g.nodes["scaled_dot_product_attention"]["module"] == "attn"  # nn_module_stack
    assert g.nodes["add"]["module"] is None  # the root's own code
    assert g.nodes["attn.q.linear"]["module"] == "attn.q"  # a nested node: its layer
    assert g.nodes["attn.q.biofx_state"]["target"] == "attn.q.biofx_state"  # targets from the root
    assert g.nodes["attn.q.biofx_state"]["module"] == "attn.q"  # biofx's own module is no module
    plain = fx.symbolic_trace(zoo.MLP(4, (3,), 2))
    assert viz.to_networkx(plain).nodes["fc1"]["module"] == "fc1"
    gm = fx.symbolic_trace(nn.Linear(3, 2))  # a Linear traced as the root: get_attr of its own weight
    assert {d["module"] for _, d in viz.to_networkx(gm).nodes(data=True) if d["op"] == "get_attr"} == {None}


class _Recorder(fx.Interpreter):
    """Runs a graph and keeps every node's value."""

    def __init__(self, module, graph=None):
        super().__init__(module, graph=graph)
        self.values = {}

    def run_node(self, n):
        self.values[n.name] = super().run_node(n)
        return self.values[n.name]


@pytest.mark.parametrize("name", CASES)
def test_shapes_match_an_eager_run(name):
    model, x = _case(name)
    g = viz.to_networkx(model, x)
    model.eval()
    gm = model if isinstance(model, fx.GraphModule) else model.bio_graph
    outer = _Recorder(gm)
    expected = {}
    with torch.no_grad():
        outer.run(x)
        for node in gm.graph.nodes:
            module = gm.get_submodule(node.target) if node.op == "call_module" else None
            if isinstance(module, BioLayer):  # the layer's own graph on the call's input
                inner = _Recorder(module, module.graph)
                inner.run(outer.values[node.args[0].name])
                expected |= {f"{node.target}.{k}": v for k, v in inner.values.items()}
            else:
                expected[node.name] = outer.values[node.name]
    for key, data in g.nodes(data=True):
        value = expected[key]
        if isinstance(value, torch.Tensor):
            assert data["shape"] == tuple(value.shape), key
            assert data["dtype"] == value.dtype
        else:
            assert "shape" not in data
    assert g.nodes["output"]["shape"] == tuple(model(x).shape)
    assert g.graph["inputs"] == [(None, tuple(x.shape), torch.float32)]


def test_shape_propagation_leaves_modes_state_and_meta_alone():
    bio, x = _case("mlp")
    bio.train()
    bio.fc1.eval()  # a user's mixed modes survive
    before = {k: v.clone() for k, v in bio.state_dict().items()}
    meta = [dict(n.meta) for n in bio.fc1.graph.nodes]
    viz.to_networkx(bio, x)
    assert bio.training and not bio.fc1.training and bio.out.training
    assert all(torch.equal(before[k], v) for k, v in bio.state_dict().items())  # no activity counted
    assert [dict(n.meta) for n in bio.fc1.graph.nodes] == meta
    bio.out(torch.randn(3, 8))  # the same call in training mode does count: the check above can fail
    assert bio.out.biofx_state.activity_n.item() == 3


def test_several_and_keyword_example_inputs():
    class Add(nn.Module):
        def forward(self, a, b, scale=2.0):
            return (a + b.sum()) * scale

    gm = fx.symbolic_trace(Add())
    g = viz.to_networkx(gm, (torch.randn(2, 3), torch.randn(4)))
    assert g.nodes["a"]["shape"] == (2, 3) and g.nodes["b"]["shape"] == (4,) and g.nodes["sum_1"]["shape"] == ()
    assert "shape" not in g.nodes["scale"]  # its default, not a tensor
    g = viz.to_networkx(gm, {"a": torch.randn(2, 3), "b": torch.randn(4), "scale": torch.randn(3)})
    assert g.nodes["output"]["shape"] == (2, 3)
    assert [name for name, _, _ in g.graph["inputs"]] == ["a", "b", "scale"]
    with pytest.raises(ValueError, match="does not take 'c'"):
        viz.to_networkx(gm, {"a": torch.randn(2, 3), "b": torch.randn(4), "c": torch.randn(1)})


def test_bad_example_input_is_a_value_error_without_a_printed_traceback(capsys):
    bio, _ = _case("mlp")
    with pytest.raises(ValueError, match="example_inputs do not fit MLP: RuntimeError: mat1 and mat2"):
        viz.to_networkx(bio, torch.randn(3, 5))
    assert capsys.readouterr().err == ""


def test_to_networkx_needs_a_bio_model_or_a_graph_module():
    with pytest.raises(TypeError, match="expected a model transformed by biofx.transform or a torch.fx.GraphModule"):
        viz.to_networkx(nn.Linear(2, 2))


def test_a_layer_called_twice_is_nested_at_each_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(torch.relu(self.fc(self.fc(x))))

    bio = biofx.transform(Twice(), seed=0)
    g = viz.to_networkx(bio, torch.randn(3, 4))
    assert ("fc.linear", "fc@1.linear") in g.edges  # the first call's result feeds the second
    assert g.nodes["fc@1.linear"]["layer"] == "fc" and g.nodes["fc@1.linear"]["shape"] == (3, 4)
    nodes = _dot_nodes(viz.to_graphviz(bio).source)
    assert nodes["fc@1.linear"][1] == ["cluster_fc@1"]


def test_a_model_that_is_one_layer_draws_its_own_graph():
    bio = biofx.transform(nn.Linear(4, 6), weight_splitting_Gamma=2, seed=0)
    g = viz.to_networkx(bio, torch.randn(3, 4))
    assert set(g.nodes) == {n.name for n in bio.graph.nodes}
    assert g.nodes["weight_split"]["shape"] == (3, 6) and g.nodes["weight"]["module"] == ""
    assert "weight_split" in _dot_nodes(viz.to_graphviz(bio).source)


def test_the_model_graph_itself_is_drawn_nested():
    bio, x = _case("mlp")
    g = viz.to_networkx(bio.bio_graph, x)
    assert list(g.nodes) == list(viz.to_networkx(bio, x).nodes)
    assert g.nodes["fc1.weight_split"]["shape"] == (3, 8)


# -- models without a torch.fx graph: captured with torch.export ------------------------------
def test_a_model_fx_cannot_trace_needs_example_inputs():
    bio = biofx.transform(Tokens(), seed=0)
    assert bio.bio_graph is None
    with pytest.raises(ValueError, match=r'pass example_inputs, e.g. \{"input_ids": .*default_inputs'):
        viz.to_networkx(bio)


def test_a_model_fx_cannot_trace_is_captured_with_its_keyword_inputs():
    bio = biofx.transform(Tokens(), weight_splitting_Gamma=2, seed=0)
    inputs = _tokens()
    g = viz.to_networkx(bio, inputs)
    assert g.graph["capture"] == "export (inputs: input_ids, attention_mask)"
    assert g.nodes["proj.weight_split"]["biofx"]["mechanism"] == "weight_split"
    assert g.nodes["head.linear"]["shape"] == (2, 5, 4) and g.nodes["output"]["shape"] == (2, 5, 4)
    assert [(name, shape) for name, shape, _ in g.graph["inputs"]] == [("input_ids", (2, 5)), ("attention_mask", (2, 5))]
    assert g.nodes["softmax"]["target"] == "torch.ops.aten.softmax.int"  # the fx target, in full
    assert not [n for n, d in g.nodes(data=True) if (d["module"] or "").startswith("biofx")]
    nodes = _dot_nodes(viz.to_graphviz(bio, inputs).source)
    labels = {attrs["label"].split("\\n")[0] for attrs, _ in nodes.values() if not attrs["label"].startswith("<")}
    assert {"softmax", "embedding", "mul", "reshape", "linear"} <= labels  # named after the operation
    assert not labels & OVERLOADS  # never after an overload
    assert not any("biofx_" in attrs["label"] for attrs, _ in nodes.values())  # no internal module drawn


def test_drawing_a_model_captured_for_it_leaves_modes_and_state_alone():
    bio = biofx.transform(Tokens(), synaptic_scaling_gamma=0.01, automatic=("fuzzy", "scaling"), seed=0)
    bio.train()
    bio.proj.eval()
    before = {k: v.clone() for k, v in bio.state_dict().items()}
    g = viz.to_networkx(bio, _tokens())
    assert all(torch.equal(before[k], v) for k, v in bio.state_dict().items())  # no activity counted
    assert bio.training and not bio.proj.training and bio.head.training
    probes = [n for n, d in g.nodes(data=True) if d["biofx"] and d["biofx"]["mechanism"] == "activity"]
    assert probes == ["proj.biofx_state", "head.biofx_state"]
    assert not [n for n in g if "biofx_state" in n and n not in probes]  # the probes' buffers: inside them


def test_a_graph_exported_at_transform_is_reused_when_the_inputs_fit(monkeypatch):
    inputs = _tokens()
    bio = biofx.transform(Tokens(), example_inputs=inputs, seed=0)
    assert bio.bio_report.capture.startswith("export")
    from biofx import capture

    calls = []
    export = capture.export_graph
    monkeypatch.setattr(capture, "export_graph", lambda *a: calls.append(a) or export(*a))
    assert viz.to_networkx(bio, inputs).nodes["output"]["shape"] == (2, 5, 4)
    assert calls == []  # the same names and shapes: the transform's graph
    other = {"input_ids": torch.randint(0, 11, (3, 7))}
    assert viz.to_networkx(bio, other).nodes["output"]["shape"] == (3, 7, 4)
    assert len(calls) == 1  # an exported graph is specialized: captured again


# -- graphviz --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "cnn", "residual"])
def test_bio_nodes_get_their_mechanism_colour_and_a_legend(name):
    bio, _ = _case(name)
    g = viz.to_networkx(bio)
    nodes = _dot_nodes(viz.to_graphviz(bio).source)
    for key, data in g.nodes(data=True):
        attrs, _ = nodes[key]
        if data["biofx"] is None:
            assert "fillcolor" not in attrs, key
        else:
            assert attrs["fillcolor"] == viz.MECHANISM_COLOURS[data["biofx"]["mechanism"]], key
            assert "filled" in attrs["style"]
    assert _legend(nodes) == {m: viz.MECHANISM_COLOURS[m] for m in LEGEND}


def test_each_bio_layer_is_a_box_in_the_layer_colour():
    bio, _ = _case("mlp")
    source = viz.to_graphviz(bio).source
    nodes = _dot_nodes(source)
    assert nodes["fc1.linear"][1] == ["cluster_fc1"] and nodes["out.weight"][1] == ["cluster_out"]
    assert nodes["act1"][1] == []
    assert re.search(r'subgraph cluster_fc1 \{\s+color="#9ecae1" .*label="fc1 · BioLinear"', source)


def test_plain_graph_has_no_fill_and_no_legend():
    gm, x = _case("plain_cnn")
    source = viz.to_graphviz(gm, x).source
    assert "fillcolor" not in source and "legend" not in source and "cluster" not in source
    assert set(_dot_nodes(source)) == {n.name for n in gm.graph.nodes}


def test_unknown_mechanism_gets_the_fallback_colour():
    gm = fx.symbolic_trace(zoo.MLP(4, (3,), 2))
    tags.tag(next(n for n in gm.graph.nodes if n.name == "act1"), "novel", "act1", "test")
    nodes = _dot_nodes(viz.to_graphviz(gm).source)
    assert nodes["act1"][0]["fillcolor"] == viz.OTHER_COLOUR
    assert _legend(nodes) == {"novel": viz.OTHER_COLOUR}


def test_labels_show_operation_module_and_shape():
    bio, x = _case("mlp")
    nodes = _dot_nodes(viz.to_graphviz(bio, x, title="My model").source)
    assert nodes["fc1.dale_weight"][0]["label"] == r"dale_weight\n[8, 16]"  # its box names the layer
    assert nodes["fc1.biofx_state_rng_key"][0]["label"] == r"rng_key\n[] int64"
    assert nodes["fc1.biofx_state"][0]["label"] == r"BioSynapses\n[3, 8]"
    assert nodes["act1"][0]["label"] == r"ReLU\nact1\n[3, 8]"
    assert 'label="My model' in viz.to_graphviz(bio, title="My model").source


def test_input_function_and_caption_labels():
    class Pooled(nn.Module):
        def forward(self, input):
            return F.max_pool2d(input, 2)

    gm = fx.symbolic_trace(Pooled())
    g = viz.to_networkx(gm, torch.randn(4, 1, 6, 6))
    assert g.nodes["max_pool2d"]["target"] == "torch.nn.functional.max_pool2d"  # not "...<locals>.fn"
    assert g.graph["input_shapes"] == [[4, 1, 6, 6]]
    source = viz.to_graphviz(gm, torch.randn(4, 1, 6, 6), title="Pooled").source
    nodes = _dot_nodes(source)
    placeholder = next(n.name for n in gm.graph.nodes if n.op == "placeholder")
    assert nodes[placeholder][0]["label"] == r"input\n[4, 1, 6, 6]"  # not "input input"
    assert nodes["max_pool2d"][0]["label"] == r"max_pool2d\n[4, 1, 3, 3]"
    assert 'label="Pooled\\nshapes for an example input of [4, 1, 6, 6]"' in source
    x_named, _ = _case("plain_cnn")  # forward(self, x)
    assert _dot_nodes(viz.to_graphviz(x_named).source)["x"][0]["label"] == "input x"
    tokens = viz.to_graphviz(biofx.transform(Tokens(), seed=0), _tokens()).source
    assert "shapes for an example input of input_ids [2, 5] int64, attention_mask [2, 5]" in tokens


@pytest.mark.parametrize(
    "name, layer, with_shapes",
    [("mlp", "fc1", r"Γ=2: 8 → 4 groups → 8\n[3, 8]"), ("cnn", "conv1", r"Γ=2: 2 → 1 groups → 2\n[2, 2, 8, 8]")],
)
def test_weight_split_label_shows_the_group_sums(name, layer, with_shapes):
    bio, x = _case(name)
    label = _dot_nodes(viz.to_graphviz(bio, x).source)[f"{layer}.weight_split"][0]["label"]
    assert label == rf"weight_split\n{with_shapes}"
    label = _dot_nodes(viz.to_graphviz(bio).source)[f"{layer}.weight_split"][0]["label"]
    assert label == r"weight_split\nΓ=2: sums groups of 2"


STEP_CONFIG = dict(CONFIG, automatic=("fuzzy", "crystallize", "scaling"), rejuvenate_every=50)


def test_step_mechanisms_are_listed_per_layer():
    model, x = _model("mlp")
    bio = biofx.transform(model, **STEP_CONFIG)
    g = viz.to_networkx(bio)
    expected = ("crystallize", "scaling", "rejuvenate (every 50 steps)")
    assert g.graph["at_step"] == {"fc1": expected, "out": expected}
    in_graph = {d["biofx"]["mechanism"] for _, d in g.nodes(data=True) if d["biofx"]}
    mechanisms = lambda entries: {entry.partition(" ")[0] for entry in entries}  # "rejuvenate (every 50 steps)"
    for layer in bio.bio_report.converted:  # the graph and the lane together cover the report
        assert mechanisms(layer.mechanisms) <= in_graph | mechanisms(g.graph["at_step"][layer.name])
    assert viz.to_networkx(_case("plain_cnn")[0]).graph["at_step"] == {}
    assert viz.to_networkx(biofx.transform(_model("mlp")[0], **CONFIG)).graph["at_step"] == {}


def test_step_lane_is_drawn_with_colours_and_no_legend_swatches(tmp_path):
    model, x = _model("mlp")
    bio = biofx.transform(model, **STEP_CONFIG)
    source = viz.to_graphviz(bio, x).source
    nodes = _dot_nodes(source)
    lane = [line.strip() for line in source.splitlines() if line.strip().startswith(f'"{viz.STEP_LANE}" [label=<')]
    assert len(lane) == 1
    rows = re.findall(r"<TR>(.*?)</TR>", lane[0])
    assert "at optimizer.step() (no graph nodes)" in rows[0]
    cells = [
        f'<TD BGCOLOR="{viz.MECHANISM_COLOURS[m.partition(" ")[0]]}">{m}</TD>'
        for m in ("crystallize", "scaling", "rejuvenate (every 50 steps)")
    ]
    assert rows[1:] == [f'<TD BORDER="0" ALIGN="RIGHT">{layer}</TD>' + "".join(cells) for layer in ("fc1", "out")]
    # the lane names its mechanisms: the legend has the ones drawn as nodes only
    assert set(_legend(nodes)) == {"dale", "fuzzy", "weight_split", "activity"}
    texts = {t.text for t in ET.parse(viz.draw(bio, tmp_path / "g.svg", x)).iter(SVG_TEXT)}
    assert {"at optimizer.step() (no graph nodes)", "fc1", "rejuvenate (every 50 steps)"} <= texts


def test_the_legend_shows_only_what_is_drawn():
    """The demo's configuration: fuzzy on the update and rejuvenation in the lane, weight
    splitting the only mechanism with graph nodes (issue 23)."""
    from biofx.demo import PAPER_CONFIG

    bio = biofx.transform(zoo.MLP(16, (8,), 4), PAPER_CONFIG)
    source = viz.to_graphviz(bio, torch.randn(2, 16)).source
    nodes = _dot_nodes(source)
    assert set(_legend(nodes)) == {"weight_split"}  # no "layer", no swatch for lane-only mechanisms
    assert PAPER_CONFIG.rejuvenate_every == 1 and ">rejuvenate (every step)</TD>" in source  # not "every 1 steps"
    drawn = {viz.to_networkx(bio).nodes[n]["biofx"]["mechanism"] for n in nodes if "." in n}
    assert drawn == {"layer", "weight_split"}


def test_clusters_nest_along_the_module_path():
    bio, _ = _case("residual")
    plain = _dot_nodes(viz.to_graphviz(bio).source)
    assert plain["norm1"][1] == [] and plain["scaled_dot_product_attention"][1] == []
    assert plain["attn.q.linear"][1] == ["cluster_attn.q"]  # a bio layer is always a box
    nodes = _dot_nodes(viz.to_graphviz(bio, cluster_by_module=True).source)
    for key, data in viz.to_networkx(bio).nodes(data=True):
        if data["layer"] is not None:
            path = data["layer"].split(".")
            expected = ["cluster_" + ".".join(path[: i + 1]) for i in range(len(path))]
            assert nodes[key][1] == expected, key
    assert nodes["scaled_dot_product_attention"][1] == ["cluster_attn"]
    assert nodes["mlp_1"][1] == ["cluster_mlp"]  # GELU, a plain module call, sits in its parent's box
    assert nodes["mlp.0.linear"][0]["label"] == r"linear"  # the box names the layer
    assert nodes["norm1"][1] == [] and nodes["add"][1] == []


# -- large models: modules folded into boxes ---------------------------------------------------
class Blocks(nn.Sequential):
    """``n`` residual blocks in a ModuleList, then a head: a transformer's shape."""

    def __init__(self, n):
        super().__init__()
        self.blocks = nn.ModuleList(zoo.ResidualBlock(dim=8, heads=2, hidden=16) for _ in range(n))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_depth_draws_deep_modules_as_boxes_listing_their_bio_layers():
    bio = biofx.transform(Blocks(2), **CONFIG)
    x = torch.randn(2, 5, 8)
    full = viz.to_networkx(bio, x)
    source = viz.to_graphviz(bio, x, depth=2).source
    nodes = _dot_nodes(source)
    assert {n for n in nodes if n.startswith("box ")} == {"box blocks.0", "box blocks.1"}
    box = nodes["box blocks.0"][0]
    assert "<B>blocks.0</B>" in box["label"] and "ResidualBlock, 6 bio layers" in box["label"]
    inside = [n for n, m in full.nodes(data="module") if m and (m == "blocks.0" or m.startswith("blocks.0."))]
    assert f"{len(inside)} nodes, → [2, 5, 8]" in box["label"]
    cells = "".join(
        f'<TD BGCOLOR="{colour}"><FONT POINT-SIZE="8">{m}</FONT></TD>'
        for m, colour in viz.MECHANISM_COLOURS.items()
        if m in LEGEND
    )
    for layer in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.0", "mlp.2"):  # its bio layers and their mechanisms
        assert f'<TR><TD ALIGN="LEFT" BGCOLOR="#9ecae1">{layer}</TD>{cells}</TR>' in box["label"], layer
    assert not [n for n in nodes if n.startswith("blocks.")]  # folded
    assert "head.linear" in nodes and nodes["head.linear"][1] == ["cluster_head"]  # shallower: drawn
    edges = _dot_edges(source)
    assert ('"box blocks.0"', '"box blocks.1"') in edges and ('"box blocks.1"', '"head.linear"') in edges
    assert "modules 2 levels deep drawn as boxes (depth=2)" in source
    assert set(_legend(nodes)) == LEGEND  # mechanisms in the boxes' cells count as drawn


def test_depth_merges_the_step_lane_per_box():
    bio = biofx.transform(Blocks(2), **STEP_CONFIG)
    source = viz.to_graphviz(bio, depth=2).source
    lane = next(line for line in source.splitlines() if line.strip().startswith(f'"{viz.STEP_LANE}"'))
    labels = re.findall(r'<TD BORDER="0" ALIGN="RIGHT">([^<]+)</TD>', lane)
    assert labels == ["blocks.0 (6 layers)", "blocks.1 (6 layers)", "head"]


def test_auto_depth_folds_a_large_model_into_its_blocks(tmp_path):
    small = biofx.transform(Blocks(1), **CONFIG)
    assert len(viz.to_networkx(small)) <= viz.MAX_NODES
    assert not [n for n in _dot_nodes(viz.to_graphviz(small).source) if n.startswith("box ")]  # every node
    bio = biofx.transform(Blocks(4), **CONFIG)
    assert len(viz.to_networkx(bio)) > viz.MAX_NODES
    nodes = _dot_nodes(viz.to_graphviz(bio).source)
    assert {n for n in nodes if n.startswith("box ")} == {f"box blocks.{i}" for i in range(4)}
    assert len(nodes) < 40
    everything = _dot_nodes(viz.to_graphviz(bio, depth=None).source)
    assert len(set(everything) & set(viz.to_networkx(bio))) == len(viz.to_networkx(bio))
    assert not [n for n in everything if n.startswith("box ")]


@pytest.mark.parametrize("depth", [0, -1, 1.5, "all", True])
def test_bad_depth_is_a_value_error(depth):
    bio, _ = _case("mlp")
    with pytest.raises(ValueError, match="depth must be a positive int, None .every node. or 'auto'"):
        viz.to_graphviz(bio, depth=depth)


def test_unused_nodes_of_an_exported_graph_are_left_out():
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            int(x.shape[0])  # not traceable by torch.fx
            torch.arange(3).unsqueeze(0)  # computed, never used
            return self.fc(x)

    bio = biofx.transform(Dead(), seed=0)
    x = torch.randn(2, 4)
    g = viz.to_networkx(bio, x)
    unused = {n for n, d in g.nodes(data=True) if d["op"] == "call_function" and not list(g.successors(n))}
    source = viz.to_graphviz(bio, x).source
    drawn = set(_dot_nodes(source)) & set(g)
    assert unused and not unused & drawn
    assert {"x", "fc.linear", "output"} <= drawn
    left_out = len(g) - len(drawn)
    assert f"{left_out} unused node{'s' * (left_out != 1)} not drawn" in source


# -- files ---------------------------------------------------------------------------------
def test_draw_writes_an_svg_with_the_bio_labels(tmp_path):
    bio, x = _case("mlp")
    path = tmp_path / "graph.svg"
    assert viz.draw(bio, path, x) == path
    texts = {t.text for t in ET.parse(path).iter(SVG_TEXT)}
    assert {"dale_weight", "fuzzy_grad", "volume_grad", "weight_split", "BioSynapses", "dale_sign"} <= texts
    assert {"[3, 8]", "[8, 16]", "fc1 · BioLinear"} <= texts
    assert LEGEND <= texts


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_draw_formats_follow_the_suffix(tmp_path, suffix, magic):
    bio, _ = _case("mlp")
    path = viz.draw(bio, str(tmp_path / f"g{suffix}"), cluster_by_module=True)
    with open(path, "rb") as f:
        assert f.read(4) == magic


def test_draw_rejects_other_suffixes(tmp_path):
    bio, _ = _case("mlp")
    with pytest.raises(ValueError, match=r"suffix must be one of \.svg, \.png, \.pdf"):
        viz.draw(bio, tmp_path / "graph.jpg")
    assert not (tmp_path / "graph.jpg").exists()


def test_missing_dot_program_says_how_to_install_it(tmp_path, monkeypatch):
    bio, _ = _case("mlp")
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` here
    with pytest.raises(RuntimeError, match="apt-get install graphviz.*brew install graphviz.*conda install graphviz"):
        viz.draw(bio, tmp_path / "graph.svg")
    assert not (tmp_path / "graph.svg").exists()


def test_missing_graphviz_package_says_how_to_install_it(tmp_path, monkeypatch):
    bio, _ = _case("mlp")
    monkeypatch.setitem(sys.modules, "graphviz", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[viz\]" \(from a clone of biofx\)'):
        viz.draw(bio, tmp_path / "graph.svg")


# -- the docs ------------------------------------------------------------------------------
DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_docs_colour_table_matches_the_colours():
    page = (DOCS / "visualization.rst").read_text(encoding="utf-8")
    table = dict(re.findall(r"\* - ``(\w+)``\n\s+- ``(#[0-9a-f]{6})``", page))
    assert table == viz.MECHANISM_COLOURS
    assert f"``{viz.OTHER_COLOUR}``" in page


def test_docs_figures_link_to_the_full_size_pictures():
    page = (DOCS / "visualization.rst").read_text(encoding="utf-8")
    figures = re.findall(r"\.\. figure:: (\S+)\n((?:   .*\n)+)", page)
    assert len(figures) >= 2
    for path, options in figures:
        assert f":target: {path}" in options, path
        assert ":alt:" in options, path
        assert (DOCS / path).exists(), path


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_docs_pictures_show_every_mechanism(name):
    texts = {t.text for t in ET.parse(DOCS / "_static" / f"graph_{name}.svg").iter(SVG_TEXT)}
    assert LEGEND <= texts  # the legend
    assert {"dale_weight", "fuzzy_grad", "volume_grad", "weight_split", "BioSynapses"} <= texts
    assert {"at optimizer.step() (no graph nodes)", "crystallize", "scaling", "rejuvenate (every 50 steps)"} <= texts
    assert any(t and t.startswith("shapes for an example input of [2, ") for t in texts)  # the caption
