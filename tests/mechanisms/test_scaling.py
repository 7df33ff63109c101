"""Synaptic scaling: formula, direction (under-active grow, over-active shrink), automatic."""

import pytest
import torch
import torch.nn as nn

import biofx


def scaled_model(**kw):
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.01, 0.01, 0.01, 0.01]]) * 0.5)
        layer.bias.copy_(torch.tensor([5.0, -5.0]))  # unit 0 very active, unit 1 silent
    cfg = dict(synaptic_scaling_gamma=0.1, synaptic_scaling_target=1.0, activity_momentum=0.0, automatic=())
    cfg.update(kw)
    return layer, biofx.transform(layer, fuzzy_lr_distribution="baseline", **cfg)


def test_formula():
    layer, bio = scaled_model()
    x = torch.rand(10, 4)
    out = layer(x)
    bio(x).sum().backward()
    g = layer.weight.grad.clone()
    bio.scale_grad()
    mean_activity = torch.relu(out).mean(0)
    expected = g - 0.1 * (1.0 - mean_activity)[:, None] * layer.weight
    torch.testing.assert_close(layer.weight.grad, expected)


def test_direction_under_active_grow_over_active_shrink():
    layer, bio = scaled_model()
    opt = torch.optim.SGD(bio.parameters(), lr=1.0)
    norms0 = layer.weight.detach().abs().sum(1)
    for _ in range(5):
        opt.zero_grad()
        out = bio(torch.rand(10, 4))
        (0.0 * out.sum()).backward()  # no task gradient: only the homeostatic term
        bio.scale_grad()
        opt.step()
    norms = layer.weight.detach().abs().sum(1)
    assert norms[0] < norms0[0]  # over-active unit 0 shrinks
    assert norms[1] > norms0[1]  # silent unit 1 grows


def test_automatic_equals_explicit():
    _, explicit = scaled_model()
    _, auto = scaled_model(automatic=("scaling",))
    x = torch.rand(10, 4)
    for bio in (explicit, auto):
        opt = torch.optim.SGD(bio.parameters(), lr=0.5)
        opt.zero_grad()
        bio(x).sum().backward()
        if bio is explicit:
            bio.scale_grad()
        opt.step()
    torch.testing.assert_close(explicit.weight, auto.weight)


def test_off_by_default_warns():
    bio = biofx.transform(nn.Linear(3, 3), automatic=())
    bio(torch.randn(2, 3)).sum().backward()
    g = bio.weight.grad.clone()
    with pytest.warns(UserWarning, match="synaptic_scaling_gamma"):
        bio.scale_grad()
    assert torch.equal(g, bio.weight.grad)
