"""Multi-process tests: start a worker on several spawned processes, bounded by a timeout.

The workers talk over ``gloo`` on 127.0.0.1 at a free port; the fixtures of
``tests/test_distributed.py`` and ``tests/test_fsdp.py`` share this harness.
"""

from __future__ import annotations

import socket
import time
from typing import Callable, Optional

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(worker: Callable, args: tuple, nprocs: int, timeout_s: float, what: str) -> Optional[str]:
    """Run ``worker(rank, *args)`` on ``nprocs`` processes; return why it failed, or None."""
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    failure = None
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                failure = f"{what} workers did not finish within {timeout_s} s"
                break
    except Exception as err:  # a rank crashed: the modes it finished before still count
        failure = f"{type(err).__name__}: {err}"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return failure
