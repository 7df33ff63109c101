#!/usr/bin/env bash
# GPU check for biofx: the GPU, the CUDA tests, the CUDA benchmark, the fixed cost per bio layer.
#
# Run from the repository root on a machine with a CUDA GPU, in a Python environment where
# torch (with CUDA) and biofx's dependencies are importable:
#
#     bash tools/gpu_check.sh                    # JSON to bench-results/bench-cuda.json
#     bash tools/gpu_check.sh --profile 8 --out /somewhere/bench-cuda.json
#
# Arguments are passed on to tools/bench.py. PYTHON selects the interpreter (default: python).
# biofx is installed with `pip install -e .` only if it is not importable already.
# Exit status: non-zero if the CUDA tests, the benchmark or the per-layer measure failed (all always run).
set -uo pipefail

PYTHON="${PYTHON:-python}"
cd "$(dirname "$0")/.." || exit 2

section() { printf '\n===== %s =====\n' "$*"; }

section "GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi
else
    echo "nvidia-smi not found"
fi

section "environment"
"$PYTHON" - <<'EOF' || exit 2
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda)
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: install a CUDA build of torch or run on a GPU machine")
print("device:", torch.cuda.get_device_name(0))
EOF
# Checked from outside the checkout: tools/bench.py and pytest do not have the repo root on sys.path.
importable() { (cd / && "$PYTHON" -c "import biofx") 2>/dev/null; }
if ! importable; then
    echo "biofx is not importable: pip install -e ."
    if ! "$PYTHON" -m pip install -e . || ! importable; then
        echo "pip install -e . did not work (offline?): using PYTHONPATH=$PWD"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
(cd / && "$PYTHON" -c "import biofx; print('biofx', biofx.__version__, 'from', biofx.__file__)") || exit 2

section "CUDA tests: pytest -m cuda"
"$PYTHON" -m pytest -q -m cuda tests
tests_status=$?

section "CUDA benchmark: tools/bench.py --device cuda $*"
has_out=0
for arg in "$@"; do
    case "$arg" in --out|--out=*) has_out=1 ;; esac
done
out_args=()
[ "$has_out" -eq 0 ] && out_args=(--out bench-results/bench-cuda.json)
"$PYTHON" tools/bench.py --device cuda ${out_args[@]+"${out_args[@]}"} "$@"
bench_status=$?

section "fixed cost per bio layer: tools/layer_overhead.py --device cuda"
"$PYTHON" tools/layer_overhead.py --device cuda
overhead_status=$?

section "summary"
echo "CUDA tests: $([ "$tests_status" -eq 0 ] && echo passed || echo "FAILED (exit $tests_status)")"
echo "benchmark:  $([ "$bench_status" -eq 0 ] && echo done || echo "FAILED (exit $bench_status)")"
echo "per layer:  $([ "$overhead_status" -eq 0 ] && echo done || echo "FAILED (exit $overhead_status)")"
[ "$tests_status" -eq 0 ] && [ "$bench_status" -eq 0 ] && [ "$overhead_status" -eq 0 ]
