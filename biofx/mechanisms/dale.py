"""Dale's principle: every neuron is excitatory or inhibitory, never both.

Two modes (``BioConfig.dale_mode``), both parametrizations, so the constraint holds at
every forward whatever an optimizer does to the stored weights, and a stored weight that
crossed zero keeps a gradient (``d|w|/dw = sign(w)``) and can come back:

``"dann"`` (default), Dale's ANNs (Cornford et al., ICLR 2021). The layer's inputs and
outputs are excitatory units; ``n_i`` inhibitory interneurons per layer subtract::

    W = |W_EE| − |W_EI|·|W_IE|,   W_EE = layer.weight [n_e, d], W_EI [n_e, n_i], W_IE [n_i, d]

(convolutions: ``W_IE`` has the kernel's shape with ``n_i`` output channels). With
excitatory fraction ``p``, ``n_i = round(n_e·(1 − p)/p)``, so ``p`` of the layer's neurons
are excitatory (at least 1 for ``p < 1``; at most ``min(n_e, d)``, the highest rank
inhibition can have).

Initialization (balanced, with headroom): ``W_EE ~ Gamma(h², σ/h)``, so its std is σ, the
std of the layer's own init, and its mean is ``h·σ`` with ``h = HEADROOM``; the rows of
``W_IE`` are the mean row of ``W_EE`` (times random factors that average to 1 over the
interneurons), ``W_EI = 1/n_i``: at init ``W = W_EE − mean row``, so inhibition cancels the
mean excitation (each column sums to zero, each unit's expected input is zero) and ``W`` has
the layer's init variance. The headroom keeps ``W_EE`` away from its bound 0, so a weight can
decrease by about ``h·σ`` before the constraint stops it (the paper's exponential init is
``h = 1``, where many weights start at the bound).

Learning rule: the updates of the interneuron weights are scaled as in the paper's corrected
SGD, ``ΔW_EI ← ΔW_EI/d`` and ``ΔW_IE ← ΔW_IE/√n_e`` (``d`` inputs per unit): a change of one
interneuron weight moves a whole row or column of ``W``, and unscaled, the inhibitory path
outpaces the excitatory one (:func:`interneuron_update_scales`).

``"column"`` (ColumnEI): every presynaptic unit j (input feature of a Linear, input channel
of a Conv) has a sign s_j and the layer uses ``W = s·|w|``. Initialization ``w ← s·|w|``
with each unit's inhibitory magnitudes rescaled so that its summed input weight is zero.
"""

from __future__ import annotations

import torch

MODES = ("dann", "column")
#: names of DANN's inhibitory parameters, registered on the layer (``fc1.dale_w_ei``)
INTERNEURON_PARAMS = ("dale_w_ei", "dale_w_ie")
#: mean/std of ``W_EE`` at init, ``h``: its weights start ``h·σ`` on average from the bound 0
HEADROOM = 3


def draw_signs(num_units: int, excitatory_fraction: float, seed: int) -> torch.Tensor:
    """±1 per presynaptic unit: exactly ``round(fraction·n)`` excitatory units, randomly placed."""
    generator = torch.Generator().manual_seed(seed)
    signs = -torch.ones(num_units)
    excitatory = torch.randperm(num_units, generator=generator)[: round(excitatory_fraction * num_units)]
    signs[excitatory] = 1.0
    return signs


def broadcast_signs(
    unit_signs: torch.Tensor, weight_shape: torch.Size, in_axis: int, out_axis: int, groups: int
) -> torch.Tensor:
    """Signs shaped to broadcast against the weight.

    For grouped convolutions, weight[o, j] connects input channel
    ``(o // out_per_group)·in_per_group + j``; otherwise the presynaptic axis is enough.
    """
    shape = [1] * len(weight_shape)
    if groups == 1:
        shape[in_axis] = -1
        return unit_signs.view(shape)
    out_channels, in_per_group = weight_shape[out_axis], weight_shape[in_axis]
    group = torch.arange(out_channels) // (out_channels // groups)
    channel = group[:, None] * in_per_group + torch.arange(in_per_group)[None, :]
    shape[out_axis], shape[in_axis] = out_channels, in_per_group
    return unit_signs[channel].view(shape)


def constrain(weight: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """``s·|w|``: one sign per presynaptic unit; a wrong-signed w keeps the gradient ``±g``."""
    return sign.to(weight.dtype) * weight.abs()


def interneurons(num_excitatory: int, excitatory_fraction: float, num_inputs: int) -> int:
    """``n_i = round(n_e·(1 − p)/p)``, at least 1 unless ``p = 1`` (no inhibition), at most
    ``min(n_e, d)`` (``d`` inputs per unit), the highest rank ``|W_EI|·|W_IE|`` can have."""
    if excitatory_fraction == 1.0:
        return 0
    cap = min(num_excitatory, num_inputs)
    if num_excitatory * (1.0 - excitatory_fraction) >= cap * excitatory_fraction:  # no division by a tiny p
        return max(1, cap)
    return max(1, round(num_excitatory * (1.0 - excitatory_fraction) / excitatory_fraction))


def inhibit(weight: torch.Tensor, w_ei: torch.Tensor, w_ie: torch.Tensor, out_axis: int) -> torch.Tensor:
    """``W − |W_EI|·|W_IE|``, the product taken over the interneurons (``out_axis`` of ``W_IE``)."""
    inhibition = torch.tensordot(w_ei.abs(), w_ie.abs().movedim(out_axis, 0), dims=1)
    return weight - inhibition.movedim(0, out_axis).to(weight.dtype)


def initialize_column_(weight: torch.Tensor, sign: torch.Tensor, out_axis: int) -> None:
    """In place: ``w ← s·|w|``, inhibitory entries of each postsynaptic unit i scaled by
    ``Σ_E |w_i| / Σ_I |w_i|`` so that ``Σ_j w_ij = 0`` (units with no E or no I input: unscaled)."""
    sign = sign.to(weight.dtype).expand_as(weight)
    magnitude = weight.abs()
    rest = [d for d in range(weight.dim()) if d != out_axis]
    excitatory = (magnitude * (sign > 0)).sum(rest, keepdim=True)
    inhibitory = (magnitude * (sign < 0)).sum(rest, keepdim=True)
    scale = torch.where((excitatory > 0) & (inhibitory > 0), excitatory / inhibitory, torch.ones_like(excitatory))
    weight.copy_(sign * magnitude * torch.where(sign < 0, scale, torch.ones_like(scale)))


def interneuron_update_scales(num_excitatory: int, num_inputs: int) -> tuple[float, float]:
    """The factors on the updates of ``(W_EI, W_IE)``: ``(1/d, 1/√n_e)``, after Cornford et al.'s
    corrected SGD."""
    return 1.0 / max(num_inputs, 1), num_excitatory**-0.5


def initialize_dann_(
    weight: torch.Tensor, w_ei: torch.Tensor, w_ie: torch.Tensor, out_axis: int, seed: int
) -> None:
    """In place: ``W_EE ~ Gamma(h², σ/h)`` (mean ``h·σ``, std σ = std of ``weight``, ``h =
    HEADROOM``; drawn as a sum of h² exponentials); ``W_IE[k] = m·(1 + ε_k)`` with m the mean
    row of ``W_EE`` and ``ε_k ~ U(−½, ½)`` centred over the interneurons k; ``W_EI = 1/n_i``.
    Then ``W = W_EE − m``: ``E[Σ_j W_ij] = 0``, ``Σ_i W_ij = 0``, variance σ²·(1 − 1/n_e). The ε
    make the interneurons differ: with equal ones, their gradients are equal and they stay one
    (rank-1) interneuron."""
    generator = torch.Generator().manual_seed(seed)
    std = weight.detach().float().std(correction=0)
    draw, term = torch.zeros(weight.shape), torch.empty(weight.shape)
    for _ in range(HEADROOM**2):  # Gamma(h², 1) as a sum of h² Exp(1), one weight-sized buffer at a time
        draw += term.exponential_(1.0, generator=generator)
    weight.copy_((draw.to(weight.device) * (std / HEADROOM)).to(weight.dtype))
    spread = torch.rand(w_ie.shape, generator=generator) - 0.5
    spread = (spread - spread.mean(out_axis, keepdim=True)).to(w_ie.device)
    w_ie.copy_(weight.mean(out_axis, keepdim=True) * (1 + spread))
    w_ei.fill_(1.0 / max(w_ei.shape[1], 1))
