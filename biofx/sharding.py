"""Weights sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``): what a shard's bio state is.

Outside forward and backward, FSDP2 holds each parameter as a DTensor sharded on dim 0 over
the data-parallel ranks of its mesh (``Shard(0)``; ``(Replicate(), Shard(0))`` for HSDP): a
rank owns a block of whole rows, and the elementwise mechanisms act on that block alone:

* the shard's bio state is the slice of the full state its rows hold (``fuzzy_lr`` becomes a
  DTensor sharded like the weight; broadcast state such as ``dale_sign`` is sliced on use);
* its random draws are the full tensor's draws at its flat indices (``offset``, see
  :func:`biofx.rng.uniform`);
* statistics over the whole layer (``max|W|``, ``mean|W|``) are all-reduced over the ranks
  that hold the shards.

A plain tensor has no :class:`Layout` (``None``): :func:`local`, :func:`local_rows` and
:func:`full` return it unchanged. The layer statistics (:func:`layer_max`, :func:`layer_mean`,
:func:`layer_sum`) are for shards only: for a whole weight the mechanism takes its own, inside
its fused kernel.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

# ``torch.distributed.tensor`` is not imported here: it costs about half a second and pulls in
# sympy. Only a model FSDP2 sharded holds a DTensor, and by then it is imported (see is_sharded);
# the functions that need its placements import them, and run for shards only.


@dataclass(frozen=True)
class Layout:
    """Where a rank's shard of a weight lies in the full weight."""

    shape: torch.Size  #: the full weight's shape
    rows: slice  #: the rows (dim 0) this rank holds
    offset: int  #: flat index of the shard's first element in the full weight
    mesh: object  #: the DTensor's device mesh
    placements: tuple
    group: object  #: the process group of the sharded mesh dimension


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a shard of a larger tensor on each rank)."""
    # A DTensor exists only once torch.distributed.tensor is imported: look, do not import.
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def layout(weight: torch.Tensor, name: str = "weight") -> Optional[Layout]:
    """The shard ``weight`` holds (``None`` for a plain tensor).

    Raises ``NotImplementedError`` for placements other than FSDP2's row sharding.
    """
    if not is_sharded(weight):
        return None
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    placements = tuple(weight.placements)
    sharded = [i for i, p in enumerate(placements) if isinstance(p, Shard)]
    if len(sharded) != 1 or placements[sharded[0]] != Shard(0) or not all(
        isinstance(p, (Shard, Replicate)) for p in placements
    ):
        raise NotImplementedError(
            f"biofx acts on DTensor weights sharded on dim 0 (FSDP2's fully_shard: Shard(0), or "
            f"(Replicate(), Shard(0)) for HSDP); {name} has placements {placements}. Shard the bio model "
            "with fully_shard only (no tensor parallelism on bio layers), or use DDP."
        )
    local_shape, global_offset = compute_local_shape_and_global_offset(weight.shape, weight.device_mesh, placements)
    start = global_offset[0]
    return Layout(
        shape=weight.shape,
        rows=slice(start, start + local_shape[0]),
        offset=start * math.prod(weight.shape[1:]),
        mesh=weight.device_mesh,
        placements=placements,
        group=weight.device_mesh.get_group(sharded[0]),
    )


def local(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """This rank's part of ``tensor`` (shares its storage: in-place writes update the DTensor)."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def local_rows(tensor: torch.Tensor, where: Optional[Layout]) -> torch.Tensor:
    """The shard's rows of a tensor indexed like the weight's dim 0 (a broadcast size 1 stays)."""
    if where is None or tensor.dim() == 0 or tensor.shape[0] != where.shape[0]:
        return tensor
    return tensor[where.rows]


def shard_like(tensor: torch.Tensor, where: Layout) -> torch.Tensor:
    """A full tensor of the weight's shape (the same on every rank) as a DTensor sharded like it."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        tensor[where.rows].clone(), where.mesh, where.placements, shape=tensor.shape, stride=tensor.stride()
    )


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (an all-gather for a DTensor)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def layer_max(values: torch.Tensor, where: Layout) -> torch.Tensor:
    """``max`` of non-negative ``values`` (the shard's part of the layer) over the whole layer:
    all-reduce MAX of the shards' maxima (an empty shard contributes 0)."""
    top = values.amax() if values.numel() else values.new_zeros(())
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=where.group)
    return top


def layer_mean(values: torch.Tensor, where: Layout) -> torch.Tensor:
    """The mean of ``values`` (the shard's part of the layer) over the whole layer: all-reduce
    SUM of the shards' sums, divided by the layer's size."""
    total = values.sum()
    dist.all_reduce(total, group=where.group)
    return total / math.prod(where.shape)


def layer_sum(count: torch.Tensor, where: Layout) -> torch.Tensor:
    """A count summed over the shards (all-reduce SUM)."""
    dist.all_reduce(count, group=where.group)
    return count


def offset(where: Optional[Layout]) -> int:
    """The shard's first flat index in the full weight (0 for a whole weight)."""
    return 0 if where is None else where.offset
