"""Shared fixtures and checks for the biofx tests."""

import pytest
import torch
import torch.nn as nn

import biofx
import biofx.kernels

# Fused kernels compile on first use (seconds each); the suite tests the plain functions and
# checks the fused ones against them in tests/test_kernels.py.
biofx.kernels.set_enabled(False)


class MLP(nn.Module):
    def __init__(self, sizes=(6, 8, 4)):
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class GeneralPathSGD(torch.optim.SGD):
    """Plain SGD under another type: the step hooks cannot know its step, so they keep each
    weight and rescale its update after the step (the path of every other optimizer), where
    ``torch.optim.SGD`` itself has its gradient scaled before the step."""


def bio_nodes(bio):
    """Every node of the bio layers' own graphs (each converted layer once), in module order."""
    layers = {id(m): m for m in bio.modules() if isinstance(m, biofx.BioLayer)}
    return [node for layer in layers.values() for node in layer.graph.nodes]


def conv_model(dims: int, in_ch=3, mid=4, out=2):
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    return nn.Sequential(conv(in_ch, mid, 3, padding=1), nn.ReLU(), conv(mid, out, 3, padding=1))


def conv_input(dims: int, batch=2, ch=3, size=5):
    return torch.randn(batch, ch, *([size] * dims))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fused_kernels():
    biofx.kernels.set_enabled(True, after_calls=0)
    yield
    biofx.kernels.set_enabled(False, after_calls=200)
