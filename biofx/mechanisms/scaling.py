"""Synaptic scaling (homeostatic plasticity).

Each postsynaptic unit i keeps a running mean activity ā_i, measured in the forward pass
by the layer's activity probe as the mean positive part of its output (a firing-rate
proxy). Its incoming weights' gradient gets the multiplicative scaling term

    g_ij ← g_ij − γ·(a_target − ā_i)·w_ij

so an under-active unit's weights grow and an over-active unit's shrink
(Tetzlaff, Kolodziejski, Timme & Wörgötter 2011, "Synaptic scaling in combination with
many generic plasticity mechanisms stabilizes circuit connectivity"; Hofmann & Mäder 2022,
IEEE TNNLS). γ = ``synaptic_scaling_gamma``, a_target = ``synaptic_scaling_target``.
"""

from __future__ import annotations

import torch


def scaling_term(
    weight: torch.Tensor, mean_activity: torch.Tensor, out_axis: int, gamma: float, target: float
) -> torch.Tensor:
    """``−γ·(a_target − ā_i)·w_ij`` (float32), broadcast along the postsynaptic axis."""
    shape = [1] * weight.dim()
    shape[out_axis] = -1
    return -gamma * (target - mean_activity).view(shape) * weight.detach().float()


def running_mean(
    mean: torch.Tensor, batch_sum: torch.Tensor, batch_count: torch.Tensor, momentum: float
) -> torch.Tensor:
    """``ā ← m·ā + (1 − m)·sum/count``; unchanged where nothing was counted (no host sync)."""
    batch_mean = batch_sum / batch_count.clamp(min=1.0)
    return torch.where(batch_count > 0, momentum * mean + (1.0 - momentum) * batch_mean, mean)
