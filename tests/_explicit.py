"""The reference library's explicit loop, shared by the tests that compare it with the
automatic path (accumulation, checkpoints, DDP, FSDP)."""

from __future__ import annotations


def before_step(bio) -> None:
    """The explicit mechanisms between ``backward()`` and ``optimizer.step()``."""
    bio.fuzzy_learning_rates()
    bio.volume_dependent_lr()
    bio.crystallize()
    bio.scale_grad()
