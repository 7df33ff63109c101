"""Dale's principle: one sign per presynaptic unit.

Every presynaptic unit (input feature of a Linear, input channel of a Conv) is excitatory
(+1) or inhibitory (−1), and all its outgoing weights share that sign. The constraint is a
parametrization: the weight a layer uses is ``sign·relu(sign·w)``, so it holds at every
forward whatever an optimizer does to the stored w.
"""

from __future__ import annotations

import torch


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
    """``sign·relu(sign·w)``: the weight with every wrong-signed entry at zero."""
    sign = sign.to(weight.dtype)
    return sign * torch.relu(sign * weight)


def initialize_(weight: torch.Tensor, sign: torch.Tensor) -> None:
    """The reference's Dale initialization, in place: ``w ← |w|·sign``."""
    weight.copy_(weight.abs() * sign.to(weight.dtype))
