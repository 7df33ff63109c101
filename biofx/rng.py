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
    """U(0, 1) float32 samples in [2**-24, 1 − 2**-24], never 0 or 1 (23-bit resolution).

    ``k + 0.5`` is exact in float32 only for ``k < 2**23``; with 24 bits the top value would
    round to 1.0 (and the normal draw to +inf).
    """
    return ((bits(shape, key, counter, stream) >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def normal(shape: torch.Size, key: torch.Tensor, counter: torch.Tensor, stream: int) -> torch.Tensor:
    """N(0, 1) float32 samples: the inverse normal CDF of :func:`uniform`.

    The inverse CDF is :func:`ndtri` (a polynomial, within 1.2e-6 of ``torch.special.ndtri``),
    the same formula eager, compiled and on every device; Inductor vectorizes it, while
    ``torch.special.ndtri`` compiles to a scalar loop (about 8x slower on CPU).
    """
    return ndtri(uniform(shape, key, counter, stream))


# Giles, "Approximating the erfinv function" (GPU Computing Gems Jade, 2011), single precision:
# erfinv(x) = x·p(w), w = −log(1 − x²), p a polynomial in w − 2.5 (w < 5) or in √w − 3.
_ERFINV_CENTRAL = (
    2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
    -0.00125372503, -0.00417768164, 0.246640727, 1.50140941,
)  # fmt: skip
_ERFINV_TAIL = (
    -0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
    -0.0076224613, 0.00943887047, 1.00167406, 2.83297682,
)  # fmt: skip


def _horner(coefficients: tuple, x: torch.Tensor) -> torch.Tensor:
    p = torch.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        p = p * x + c
    return p


def ndtri(u: torch.Tensor) -> torch.Tensor:
    """``√2·erfinv(2u − 1)`` for u in (0, 1); with x = 2u − 1, ``1 − x² = 4u(1 − u)`` (exact near 0 and 1)."""
    w = -torch.log(4.0 * u * (1.0 - u))
    central = _horner(_ERFINV_CENTRAL, w - 2.5)
    tail = _horner(_ERFINV_TAIL, torch.sqrt(w) - 3.0)
    return 1.4142135623730951 * torch.where(w < 5.0, central, tail) * (2.0 * u - 1.0)
