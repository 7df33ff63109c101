"""A small built-in model zoo for the command line, the docs and the tests.

- ``mlp``: :class:`MLP`, 784 → 512 → 512 → 10 with ReLU; input ``[2, 784]``.
- ``cnn``: :class:`CNN`, conv 3×3 (32) → pool → conv 3×3 (64) → pool → fc 128 → 10;
  input ``[2, 3, 32, 32]``.
- ``residual``: :class:`ResidualBlock`, pre-LayerNorm self-attention (explicit q/k/v/out
  Linears) and an MLP, both residual; input ``[2, 8, 64]`` (batch, sequence, features).

>>> from biofx import zoo
>>> model, x = zoo.get("mlp")
>>> model(x).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MLP", "CNN", "SelfAttention", "ResidualBlock", "ZooEntry", "MODELS", "get"]


class MLP(nn.Sequential):
    """``flatten → (Linear → ReLU) per hidden width → Linear``; layers ``fc1, fc2, …, out``."""

    def __init__(self, in_features: int = 784, hidden: tuple[int, ...] = (512, 512), out_features: int = 10) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = in_features
        for i, h in enumerate(hidden, 1):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"act{i}"] = nn.ReLU()
            width = h
        layers["out"] = nn.Linear(width, out_features)
        super().__init__(layers)


class CNN(nn.Module):
    """Two 3×3 convolutions (padding 1), each followed by ReLU and 2×2 max pooling, then two Linears.

    Input ``[batch, in_channels, image_size, image_size]``; ``image_size`` must be divisible by 4.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 128,
        classes: int = 10,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"CNN image_size must be divisible by 4 (two 2x2 poolings), got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(channels[1] * (image_size // 4) ** 2, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.out(F.relu(self.fc1(x.flatten(1))))


class SelfAttention(nn.Module):
    """Multi-head self-attention with explicit ``q``, ``k``, ``v``, ``out`` Linears.

    ``softmax(q·kᵀ/√d_head)·v`` per head, by ``F.scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"SelfAttention dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [b, s, d] -> [b, h, s, d/h]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split_heads(proj(x)) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).flatten(2))


class ResidualBlock(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int = 64, heads: int = 4, hidden: int = 128) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _randn(*shape: int) -> torch.Tensor:
    """A fixed example input (its own generator: the global RNG is left alone)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A zoo model: ``build()`` makes a fresh model, ``example_input()`` a matching input."""

    build: Callable[[], nn.Module]
    example_input: Callable[[], torch.Tensor]
    description: str


MODELS: dict[str, ZooEntry] = {
    "mlp": ZooEntry(MLP, lambda: _randn(2, 784), "MLP 784-512-512-10, input [2, 784]"),
    "cnn": ZooEntry(CNN, lambda: _randn(2, 3, 32, 32), "CNN conv32-conv64-fc128-10, input [2, 3, 32, 32]"),
    "residual": ZooEntry(
        ResidualBlock, lambda: _randn(2, 8, 64), "LayerNorm + self-attention + MLP residual block, input [2, 8, 64]"
    ),
}


def get(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A fresh zoo model and its example input; ``ValueError`` for an unknown name."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(MODELS)}{hint}")
    entry = MODELS[name]
    return entry.build(), entry.example_input()
