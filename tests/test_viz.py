"""biofx.viz: the networkx view mirrors the fx graph; the drawing colours every bio node."""

import re
import sys
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


def _model(name):
    """A small zoo model and an example input."""
    return {
        "mlp": lambda: (zoo.MLP(16, (8,), 4), torch.randn(3, 16)),
        "cnn": lambda: (zoo.CNN(1, (2, 4), 8, 3, 8), torch.randn(2, 1, 8, 8)),
        "residual": lambda: (zoo.ResidualBlock(dim=8, heads=2, hidden=16), torch.randn(2, 5, 8)),
    }[name]()


def _case(name):
    """``(GraphModule, example input)``: a plain traced CNN or a bio model."""
    if name == "plain_cnn":
        model, x = _model("cnn")
        return fx.symbolic_trace(model), x
    model, x = _model(name)
    return biofx.transform(model, **CONFIG), x


CASES = ["plain_cnn", "mlp", "cnn", "residual"]


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
                attrs = {k: v.strip('"') for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)', m.group(2))}
                nodes[name] = (attrs, list(stack))
    return nodes


class _Recorder(fx.Interpreter):
    """Runs the graph and keeps every node's value."""

    def __init__(self, gm):
        super().__init__(gm)
        self.values = {}

    def run_node(self, n):
        self.values[n.name] = super().run_node(n)
        return self.values[n.name]


# -- networkx --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_networkx_mirrors_the_fx_graph(name):
    gm, _ = _case(name)
    g = viz.to_networkx(gm)
    assert list(g.nodes) == [n.name for n in gm.graph.nodes]
    assert set(g.edges) == {(i.name, n.name) for n in gm.graph.nodes for i in n.all_input_nodes}
    for node in gm.graph.nodes:
        data = g.nodes[node.name]
        assert data["op"] == node.op
        assert data["target"] == (node.target if isinstance(node.target, str) else _get_qualified_name(node.target))
        assert data["biofx"] == tags.get_tag(node)
        assert "shape" not in data and "dtype" not in data


@pytest.mark.parametrize("name", ["mlp", "cnn", "residual"])
def test_every_bio_node_is_tagged_with_its_layer(name):
    gm, _ = _case(name)
    g = viz.to_networkx(gm)
    layers = {layer.layer_name for layer in gm.bio_layers()}
    tagged = {n: d for n, d in g.nodes(data=True) if d["biofx"] is not None}
    assert {d["biofx"]["mechanism"] for d in tagged.values()} == GRAPH_MECHANISMS
    for node, data in tagged.items():
        assert data["biofx"]["layer"] in layers
        assert data["module"] == data["biofx"]["layer"]
    # every node the passes inserted carries a tag: the untagged ones are the traced model's,
    # less the converted layer calls (replaced by tagged functional calls)
    converted = {layer.layer_name for layer in gm.bio_layers()}
    traced = fx.symbolic_trace(_model(name)[0]).graph.nodes
    expected = {n.name for n in traced if not (n.op == "call_module" and n.target in converted)}
    assert {n for n, d in g.nodes(data=True) if d["biofx"] is None} == expected


def test_module_attribute_follows_calls_attributes_and_the_module_stack():
    gm, _ = _case("residual")
    g = viz.to_networkx(gm)
    assert g.nodes["norm1"]["module"] == "norm1"  # call_module: its target
    assert g.nodes["scaled_dot_product_attention"]["module"] == "attn"  # nn_module_stack
    assert g.nodes["add"]["module"] is None  # the root's own code
    plain = fx.symbolic_trace(zoo.MLP(4, (3,), 2))
    g = viz.to_networkx(plain)
    assert g.nodes["fc1"]["module"] == "fc1"
    gm = fx.symbolic_trace(nn.Linear(3, 2))  # a Linear traced as the root: get_attr of its own weight
    assert {d["module"] for _, d in viz.to_networkx(gm).nodes(data=True) if d["op"] == "get_attr"} == {""}


@pytest.mark.parametrize("name", CASES)
def test_shapes_match_an_eager_run(name):
    gm, x = _case(name)
    g = viz.to_networkx(gm, x)
    gm.eval()
    recorder = _Recorder(gm)
    with torch.no_grad():
        recorder.run(x)
    for node in gm.graph.nodes:
        value = recorder.values[node.name]
        if isinstance(value, torch.Tensor):
            assert g.nodes[node.name]["shape"] == tuple(value.shape), node.name
            assert g.nodes[node.name]["dtype"] == value.dtype
        else:
            assert "shape" not in g.nodes[node.name]
    assert g.nodes["output"]["shape"] == tuple(gm(x).shape)


def test_shape_propagation_leaves_modes_state_and_meta_alone():
    gm, x = _case("mlp")
    gm.train()
    gm.fc1.eval()  # a user's mixed modes survive
    before = {k: v.clone() for k, v in gm.state_dict().items()}
    viz.to_networkx(gm, x)
    assert gm.training and not gm.fc1.training and gm.out.training
    assert all(torch.equal(before[k], v) for k, v in gm.state_dict().items())  # no activity counted
    assert not any("tensor_meta" in n.meta for n in gm.graph.nodes)
    gm(x)  # the same call in training mode does count: the check above can fail
    assert gm.biofx_state["fc1"].activity_n.item() == 3


def test_several_example_inputs():
    class Add(nn.Module):
        def forward(self, a, b):
            return a + b.sum()

    g = viz.to_networkx(fx.symbolic_trace(Add()), (torch.randn(2, 3), torch.randn(4)))
    assert g.nodes["a"]["shape"] == (2, 3) and g.nodes["b"]["shape"] == (4,) and g.nodes["sum_1"]["shape"] == ()


def test_bad_example_input_is_a_value_error_without_a_printed_traceback(capsys):
    gm, _ = _case("mlp")
    with pytest.raises(ValueError, match="example_inputs do not fit BioMLP"):
        viz.to_networkx(gm, torch.randn(3, 5))
    assert capsys.readouterr().err == ""


def test_to_networkx_needs_a_graph_module():
    with pytest.raises(TypeError, match="expected a torch.fx.GraphModule, got Linear.*symbolic_trace"):
        viz.to_networkx(nn.Linear(2, 2))


# -- graphviz --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "cnn", "residual"])
def test_bio_nodes_get_their_mechanism_colour_and_a_legend(name):
    gm, _ = _case(name)
    nodes = _dot_nodes(viz.to_graphviz(gm).source)
    for node in gm.graph.nodes:
        attrs, _ = nodes[node.name]
        tag = tags.get_tag(node)
        if tag is None:
            assert "fillcolor" not in attrs, node.name
        else:
            assert attrs["fillcolor"] == viz.MECHANISM_COLOURS[tag["mechanism"]], node.name
            assert "filled" in attrs["style"]
    legend = {attrs["label"]: attrs["fillcolor"] for n, (attrs, _) in nodes.items() if n.startswith("legend ")}
    assert legend == {m: viz.MECHANISM_COLOURS[m] for m in GRAPH_MECHANISMS}


def test_plain_graph_has_no_fill_and_no_legend():
    gm, x = _case("plain_cnn")
    source = viz.to_graphviz(gm, x).source
    assert "fillcolor" not in source and "legend" not in source
    assert set(_dot_nodes(source)) == {n.name for n in gm.graph.nodes}


def test_unknown_mechanism_gets_the_fallback_colour():
    gm = fx.symbolic_trace(zoo.MLP(4, (3,), 2))
    tags.tag(next(n for n in gm.graph.nodes if n.name == "act1"), "novel", "act1", "test")
    nodes = _dot_nodes(viz.to_graphviz(gm).source)
    assert nodes["act1"][0]["fillcolor"] == viz.OTHER_COLOUR
    assert nodes["legend novel"][0]["fillcolor"] == viz.OTHER_COLOUR


def test_labels_show_operation_module_and_shape():
    gm, x = _case("mlp")
    nodes = _dot_nodes(viz.to_graphviz(gm, x, title="My model").source)
    assert nodes["dale_weight"][0]["label"] == r"dale_weight\nfc1\n[8, 16]"
    assert nodes["biofx_state_fc1_rng_key"][0]["label"] == r"rng_key\nfc1\n[] int64"
    assert nodes["act1"][0]["label"] == r"ReLU\nact1\n[3, 8]"
    assert "label=\"My model\"" in viz.to_graphviz(gm, title="My model").source


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


@pytest.mark.parametrize(
    "name, layer, with_shapes",
    [("mlp", "fc1", r"Γ=2: 8 → 4 groups → 8\n[3, 8]"), ("cnn", "conv1", r"Γ=2: 2 → 1 groups → 2\n[2, 2, 8, 8]")],
)
def test_weight_split_label_shows_the_group_sums(name, layer, with_shapes):
    gm, x = _case(name)
    label = _dot_nodes(viz.to_graphviz(gm, x).source)["weight_split"][0]["label"]
    assert label == rf"weight_split\n{layer}\n{with_shapes}"
    label = _dot_nodes(viz.to_graphviz(gm).source)["weight_split"][0]["label"]
    assert label == rf"weight_split\n{layer}\nΓ=2: sums groups of 2"


STEP_CONFIG = dict(CONFIG, automatic=("fuzzy", "crystallize", "scaling"), rejuvenate_every=50)


def test_step_mechanisms_are_listed_per_layer():
    model, x = _model("mlp")
    gm = biofx.transform(model, **STEP_CONFIG)
    at_step = viz.to_networkx(gm).graph["at_step"]
    expected = ("crystallize", "scaling", "rejuvenate (every 50 steps)")
    assert at_step == {"fc1": expected, "out": expected}
    in_graph = {tags.get_tag(n)["mechanism"] for n in gm.graph.nodes if tags.get_tag(n)}
    mechanisms = lambda entries: {entry.partition(" ")[0] for entry in entries}  # "rejuvenate (every 50 steps)"
    for layer in gm.bio_report.converted:  # the graph and the lane together cover the report
        assert mechanisms(layer.mechanisms) <= in_graph | mechanisms(at_step[layer.name])
    assert viz.to_networkx(_case("plain_cnn")[0]).graph["at_step"] == {}
    assert viz.to_networkx(biofx.transform(_model("mlp")[0], **CONFIG)).graph["at_step"] == {}


def test_step_lane_is_drawn_with_colours_and_legend(tmp_path):
    model, x = _model("mlp")
    gm = biofx.transform(model, **STEP_CONFIG)
    source = viz.to_graphviz(gm, x).source
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
    legend = {attrs["label"] for n, (attrs, _) in nodes.items() if n.startswith("legend ")}
    assert {"crystallize", "scaling", "rejuvenate", "fuzzy", "activity"} <= legend
    texts = {t.text for t in ET.parse(viz.draw(gm, tmp_path / "g.svg", x)).iter("{http://www.w3.org/2000/svg}text")}
    assert {"at optimizer.step() (no graph nodes)", "fc1", "rejuvenate (every 50 steps)"} <= texts


def test_clusters_nest_along_the_module_path():
    gm, _ = _case("residual")
    plain_nodes = _dot_nodes(viz.to_graphviz(gm).source)
    assert all(clusters in ([], ["cluster legend"]) for _, clusters in plain_nodes.values())
    nodes = _dot_nodes(viz.to_graphviz(gm, cluster_by_module=True).source)
    for node in gm.graph.nodes:
        tag = tags.get_tag(node)
        if tag is not None:
            path = tag["layer"].split(".")
            expected = ["cluster_" + ".".join(path[: i + 1]) for i in range(len(path))]
            assert nodes[node.name][1] == expected, node.name
    assert nodes["scaled_dot_product_attention"][1] == ["cluster_attn"]
    assert nodes["mlp_1"][1] == ["cluster_mlp"]  # GELU, a plain module call, sits in its parent's box
    assert nodes["norm1"][1] == [] and nodes["add"][1] == []


def test_draw_writes_an_svg_with_the_bio_labels(tmp_path):
    gm, x = _case("mlp")
    path = tmp_path / "graph.svg"
    assert viz.draw(gm, path, x) == path
    texts = {t.text for t in ET.parse(path).iter("{http://www.w3.org/2000/svg}text")}
    assert {"dale_weight", "fuzzy_grad", "volume_grad", "weight_split", "BioSynapses", "dale_sign"} <= texts
    assert {"[3, 8]", "[8, 16]"} <= texts
    assert set(GRAPH_MECHANISMS) <= texts  # the legend


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_draw_formats_follow_the_suffix(tmp_path, suffix, magic):
    gm, _ = _case("mlp")
    path = viz.draw(gm, str(tmp_path / f"g{suffix}"), cluster_by_module=True)
    with open(path, "rb") as f:
        assert f.read(4) == magic


def test_draw_rejects_other_suffixes(tmp_path):
    gm, _ = _case("mlp")
    with pytest.raises(ValueError, match=r"suffix must be one of \.svg, \.png, \.pdf"):
        viz.draw(gm, tmp_path / "graph.jpg")
    assert not (tmp_path / "graph.jpg").exists()


def test_missing_dot_program_says_how_to_install_it(tmp_path, monkeypatch):
    gm, _ = _case("mlp")
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` here
    with pytest.raises(RuntimeError, match="apt-get install graphviz.*brew install graphviz.*conda install graphviz"):
        viz.draw(gm, tmp_path / "graph.svg")
    assert not (tmp_path / "graph.svg").exists()


def test_missing_graphviz_package_says_how_to_install_it(tmp_path, monkeypatch):
    gm, _ = _case("mlp")
    monkeypatch.setitem(sys.modules, "graphviz", None)
    with pytest.raises(ImportError, match=r'pip install "biofx\[viz\]"'):
        viz.draw(gm, tmp_path / "graph.svg")


# -- the docs ------------------------------------------------------------------------------
DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_docs_colour_table_matches_the_colours():
    page = (DOCS / "visualization.rst").read_text(encoding="utf-8")
    table = dict(re.findall(r"\* - ``(\w+)``\n\s+- ``(#[0-9a-f]{6})``", page))
    assert table == viz.MECHANISM_COLOURS
    assert f"``{viz.OTHER_COLOUR}``" in page


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_docs_pictures_show_every_graph_mechanism(name):
    texts = {t.text for t in ET.parse(DOCS / "_static" / f"graph_{name}.svg").iter("{http://www.w3.org/2000/svg}text")}
    assert GRAPH_MECHANISMS | {"crystallize", "scaling", "rejuvenate"} <= texts  # the legend
    assert {"dale_weight", "fuzzy_grad", "volume_grad", "weight_split", "BioSynapses"} <= texts
    assert {"at optimizer.step() (no graph nodes)", "rejuvenate (every 50 steps)"} <= texts  # the step lane
    assert any(t and t.startswith("shapes for an example input of [2, ") for t in texts)  # the caption
