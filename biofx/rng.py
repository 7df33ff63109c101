"""Counter-based random numbers: a hash of (key, stream, counter, element index).

Every draw biofx makes during training comes from here. A draw is a pure function of a
per-layer key, a stream (which kind of draw), a step or update counter (a tensor, so it
changes without recompiling) and the element index, evaluated with integer tensor ops.
Eager, compiled and every device and DDP rank therefore produce the same numbers with no
communication and no stored noise.

The generator is SplitMix64's 64-bit finalizer (Steele, Lea & Flood, OOPSLA 2014; Stafford's
"Mix13": two multiply-xorshift rounds with full avalanche) used counter-style:

* a draw's 64-bit seed ``s = mix64(mix64(key + stream·γ) + counter·γ)`` (γ = 0x9E3779B97F4A7C15,
  SplitMix64's Weyl increment) is fully mixed from the key, the stream and the counter, so two
  steps (or streams, or layers) have unrelated seeds;
* element block ``b`` hashes ``mix64(mix64(s + b))``. A single finalizer over a counter with
  increment 1 is known to be weaker than over SplitMix64's γ-sequence; the second round makes
  it a full-avalanche function of a full-avalanche function, so the fixed input difference
  ``i − j`` of two elements at every step leaves no trace (see ``tests/test_rng.py``). The
  index is added, never multiplied by a 64-bit constant: Inductor folds ``arange·c`` into
  C++ index arithmetic, where a wrapping multiply is undefined behaviour;
* one 64-bit hash feeds two 23-bit uniforms (its high and low halves), so a draw costs one
  finalizer round per uniform.

Integer arithmetic is int64 with two's-complement wraparound (the same on CPU, CUDA and
in Inductor's generated code); right shifts are made logical with a mask.
"""

from __future__ import annotations

from typing import Optional

import torch

# One stream per kind of draw, so two draws with the same key and counter never coincide.
VOLUME = 1
REJUVENATE_THRESHOLD = 2
REJUVENATE_VALUE = 3
TEMPORAL = 4
ACTIVITY = 5
FUZZY = 6  # the static multipliers f₀ of fuzzy_lr_storage="counter" (counter 0)


def _signed(x: int) -> int:
    """A 64-bit constant as the int64 value with the same bits."""
    return x - (1 << 64) if x >= 1 << 63 else x


GAMMA = _signed(0x9E3779B97F4A7C15)  # the golden-ratio Weyl increment
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_BITS23 = (1 << 23) - 1


def _srl(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Logical right shift of int64 values (``>>`` on int64 is arithmetic)."""
    return (x >> shift) & ((1 << (64 - shift)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer, a bijection on 64-bit values (int64 tensors, wrapping)."""
    x = (x ^ _srl(x, 30)) * _M1
    x = (x ^ _srl(x, 27)) * _M2
    return x ^ _srl(x, 31)


_MASK64 = (1 << 64) - 1


def _mix64_int(x: int) -> int:
    """:func:`mix64` on a Python int (as unsigned 64-bit values)."""
    x = ((x ^ (x >> 30)) * _M1) & _MASK64
    x = ((x ^ (x >> 27)) * _M2) & _MASK64
    return x ^ (x >> 31)


def _seed_int(key: int, counter: int, stream: int) -> int:
    """``mix64(mix64(key + stream·γ) + counter·γ)`` on Python ints, as a signed 64-bit value."""
    inner = _mix64_int((key + stream * GAMMA) & _MASK64)
    return _signed(_mix64_int((inner + counter * GAMMA) & _MASK64))


def layer_key(seed: int, layer_index: int) -> int:
    """A layer's 64-bit key (as a signed int) from the model seed and the layer's position."""
    return _signed(_mix64_int((_mix64_int(seed & _MASK64) + layer_index * GAMMA) & _MASK64))


def stream_seed(
    key: torch.Tensor, counter: torch.Tensor, stream: int, values: Optional[tuple[int, int]] = None
) -> torch.Tensor:
    """The 64-bit seed of one draw, ``mix64(mix64(key + stream·γ) + counter·γ)`` (0-d int64 on
    the key's device), for :func:`uniform` and :func:`normal`.

    ``key`` and ``counter`` are 0-d int64 tensors; ``values``, their values when the caller
    knows them on the host (a layer's key and step mirrors). Outside a compiled region the
    seed is computed on the host from the values (10 µs, where the 20 tensor ops take 150 µs
    on the CPU and 20 kernel launches on a GPU) and copied to the device without a sync; the
    values are read from the tensors when they are on the CPU. Otherwise (a device tensor
    without ``values``, or inside a compiled graph) it is computed by tensor ops. A fused
    kernel takes the seed as an input: computed inside it, Inductor inlines it into every loop
    it generates, which doubled the kernel's compile time.
    """
    if not torch.compiler.is_compiling():
        if values is None and key.device.type == "cpu" and counter.device.type == "cpu":
            values = int(key), int(counter)
        if values is not None:
            seed = torch.tensor(_seed_int(*values, stream), dtype=torch.int64)
            return seed if key.device.type == "cpu" else seed.to(key.device, non_blocking=True)
    return mix64(mix64(key + _signed(stream * GAMMA % (1 << 64))) + counter * GAMMA)


def bits(numel: int, seed: torch.Tensor, start: int = 0) -> torch.Tensor:
    """``mix64(mix64(s + b))`` for blocks ``b = start … start + numel − 1`` (int64, all 64 bits
    random); ``seed`` s from :func:`stream_seed`."""
    block = torch.arange(numel, device=seed.device, dtype=torch.int64) + start
    return mix64(mix64(seed + block))


def uniform(shape: torch.Size, seed: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """U(0, 1) float32 samples in [2**-24, 1 − 2**-24], never 0 or 1 (23-bit resolution);
    ``seed`` from :func:`stream_seed`.

    Element ``2b`` takes bits 41-63 of block b's hash and element ``2b + 1`` bits 9-31.
    ``k + 0.5`` is exact in float32 only for ``k < 2**23``; with 24 bits the top value would
    round to 1.0 (and the normal draw to +inf). With ``offset``, the draws are those of flat
    elements ``offset … offset + numel − 1`` of a larger tensor (a shard draws its own slice).
    """
    shape = torch.Size(shape)
    numel = shape.numel()
    first = offset % 2  # the shard's first element within its first block
    h = bits((first + numel + 1) // 2, seed, offset // 2)
    # Converted to float before the interleave: Inductor then stores each block's two floats
    # straight from the hash loop, where interleaving the int64 halves first materialized them
    # in a second int64 buffer and pass (same numbers, uniform() 1.8x faster compiled on CPU).
    high, low = (_to_unit(k) for k in (_srl(h, 41), (h >> 9) & _BITS23))
    return torch.stack([high, low], dim=-1).reshape(-1)[first : first + numel].view(shape)


def _to_unit(k: torch.Tensor) -> torch.Tensor:
    """23-bit integers k as the float32 ``(k + 0.5)·2⁻²³``."""
    return (k.to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def normal(shape: torch.Size, seed: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """N(0, 1) float32 samples: the inverse normal CDF of :func:`uniform` (``seed`` and ``offset`` as there).

    The inverse CDF is :func:`ndtri` (a polynomial, within 1.2e-6 of ``torch.special.ndtri``),
    the same formula eager, compiled and on every device; Inductor vectorizes it, while
    ``torch.special.ndtri`` compiles to a scalar loop (about 8x slower on CPU).
    """
    return ndtri(uniform(shape, seed, offset))


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
