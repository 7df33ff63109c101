"""How long ``import biofx`` takes on top of ``import torch``.

Each run is a fresh interpreter that times ``import torch`` and then ``import biofx``
(``time.perf_counter`` around each import), so both figures come from the same process and
the same disk cache. Prints the median of N runs of each and of their difference, the cost
biofx adds; the goal is at most 0.3 s.

Usage: ``python tools/import_time.py [--runs 9]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import biofx
t2 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "biofx": t2 - t1}))
"""


def measure(runs: int) -> dict[str, list[float]]:
    """``{"torch": [s, ...], "biofx": [s, ...]}``: seconds per fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    times: dict[str, list[float]] = {"torch": [], "biofx": []}
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
        for key, seconds in json.loads(out.stdout.splitlines()[-1]).items():
            times[key].append(seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="fresh interpreters to time (default: 9)")
    times = measure(parser.parse_args().runs)
    torch_s, extra_s = statistics.median(times["torch"]), statistics.median(times["biofx"])
    print(f"import torch:                 {torch_s:.3f} s (median of {len(times['torch'])})")
    print(f"import biofx after torch:     {extra_s:.3f} s  <- what biofx adds")
    print(f"import biofx (torch incl.):   {torch_s + extra_s:.3f} s")


if __name__ == "__main__":
    main()
