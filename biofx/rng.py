"""Counter-based random numbers: a hash of (key, counter, element index).

Every draw biofx makes during training comes from here. A draw is a pure function of a
per-layer key, a step or update counter (a tensor, so it changes without recompiling) and
the element index, evaluated with integer tensor ops. Eager, compiled and every DDP rank
therefore produce the same numbers with no communication and no stored noise.

The mixer is the 32-bit ``lowbias32`` integer hash (two rounds), computed in int64 with the
products masked to 32 bits.
"""

from __future__ import annotations

import torch

_MASK = 0xFFFFFFFF

# One stream per kind of draw, so two draws with the same key and counter never coincide.
VOLUME = 0x1B873593
REJUVENATE_THRESHOLD = 0x68E31DA4
REJUVENATE_VALUE = 0x2C1B3C6D
TEMPORAL = 0x297A2D39
ACTIVITY = 0x5F356495


def mix32(x):
    """The ``lowbias32`` bijection on values in [0, 2**32) (int64 tensors or Python ints)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


def layer_key(seed: int, layer_index: int) -> int:
    """A layer's 32-bit key from the model seed and the layer's position (host side, once)."""
    x = mix32((seed ^ (layer_index * 0x9E3779B9)) & _MASK)
    return mix32(x ^ ((seed >> 32) & _MASK))


def bits(shape: torch.Size, key: torch.Tensor, counter: torch.Tensor, stream: int) -> torch.Tensor:
    """Uniform 32-bit integers (as int64) for every element of ``shape``.

    ``key`` and ``counter`` are 0-d int64 tensors on the target device.
    """
    k1 = mix32((key ^ stream) & _MASK)
    k2 = mix32((k1 + counter) & _MASK)
    index = torch.arange(shape.numel(), device=key.device, dtype=torch.int64).view(shape)
    return mix32(mix32((index + k1) & _MASK) ^ k2)


def uniform(shape: torch.Size, key: torch.Tensor, counter: torch.Tensor, stream: int) -> torch.Tensor:
    """U(0, 1) float32 samples, never exactly 0 or 1 (24-bit resolution)."""
    return ((bits(shape, key, counter, stream) >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def normal(shape: torch.Size, key: torch.Tensor, counter: torch.Tensor, stream: int) -> torch.Tensor:
    """N(0, 1) float32 samples by the inverse normal CDF of :func:`uniform`."""
    return torch.special.ndtri(uniform(shape, key, counter, stream))
