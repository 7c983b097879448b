#!/usr/bin/env bash
# Everything distmix runs on a CUDA device, in one command, on a machine with an NVIDIA GPU:
#
#   1. checks that a GPU is there (nvidia-smi, then CuPy's device count) and stops with
#      status 2, saying what is missing, where there is none;
#   2. makes (or reuses) a virtual environment with distmix's test and gpu extras
#      (cupy-cuda12x, dask-cuda), unless DISTMIX_GPU_PYTHON names a ready interpreter;
#   3. runs the gpu-marked tests of this checkout (pytest -m gpu: the kernel conformance
#      kit on CuPy float64/float32, the estimator on CuPy rows and CuPy dask chunks, the
#      local-cuda cluster config reading Zarr blocks onto the GPUs); a gpu test that is
#      skipped fails the check, since on a GPU machine it stopped testing anything;
#   4. times one EM iteration, CuPy against NumPy (benchmarks/bench_gpu.py; --quick
#      unless --full), which also checks that both give the same parameters.
#
# Usage: bash benchmarks/gpu_check.sh [--full] [-- extra pytest arguments]
# Environment: DISTMIX_GPU_VENV (default .gpu-venv), DISTMIX_GPU_PYTHON (skip the venv:
# an interpreter that has the extras; the tests and the benchmark run from this checkout
# either way), PYTHON (the interpreter the venv is made from).
# Exit status: 0 all passed; 1 a test or the benchmark's comparison failed; 2 no GPU, or
# the environment could not be made.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_ARGS=(--quick)
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --full) BENCH_ARGS=(); shift ;;
        --) shift; PYTEST_ARGS=("$@"); break ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

no_gpu() {
    echo "gpu_check: $1" >&2
    echo "gpu_check: this check needs an NVIDIA GPU with its driver; nothing was run." >&2
    exit 2
}

# -- 1. a GPU, before anything is installed -----------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
    if ! gpus=$(nvidia-smi -L 2>&1) || ! grep -q '^GPU ' <<<"$gpus"; then
        no_gpu "nvidia-smi finds no GPU: ${gpus:-no output}"
    fi
    echo "$gpus"
elif [ ! -e /dev/nvidia0 ] && [ ! -e /dev/nvidiactl ]; then
    no_gpu "no NVIDIA driver here (no nvidia-smi, no /dev/nvidia*)."
fi

# -- 2. the environment ---------------------------------------------------------------
if [ -n "${DISTMIX_GPU_PYTHON:-}" ]; then
    PY=$DISTMIX_GPU_PYTHON
else
    VENV=${DISTMIX_GPU_VENV:-.gpu-venv}
    if [ ! -x "$VENV/bin/python" ]; then
        BASE=${PYTHON:-$(command -v python3.11 || command -v python3)}
        echo "gpu_check: making $VENV with distmix[test,gpu] (from $BASE)"
        "$BASE" -m venv "$VENV" || { echo "gpu_check: cannot make $VENV" >&2; exit 2; }
        if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ".[test,gpu]"
        then
            rm -rf "$VENV"
            echo "gpu_check: installing .[test,gpu] failed (no package index reachable? give" \
                "DISTMIX_GPU_PYTHON=an interpreter that has them)" >&2
            exit 2
        fi
    fi
    PY=$VENV/bin/python
fi
# this checkout's distmix, whatever the environment has installed
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'EOF' || exit 2
import sys

try:
    import cupy
except ImportError as error:
    sys.exit(f"gpu_check: CuPy does not import ({error}): pip install 'distmix[gpu]'")
try:
    n = cupy.cuda.runtime.getDeviceCount()
except Exception as error:
    sys.exit(f"gpu_check: CuPy sees no CUDA device ({type(error).__name__}: {error})")
if n < 1:
    sys.exit("gpu_check: CuPy sees no CUDA device")
import distmix

print(f"gpu_check: CuPy {cupy.__version__} sees {n} device(s); distmix from {distmix.__file__}")
try:
    import dask_cuda  # noqa: F401
except ImportError as error:
    sys.exit(f"gpu_check: dask-cuda does not import ({error}): the local-cuda test needs it")
EOF

# -- 3. the gpu-marked tests -------------------------------------------------------------
status=0
report=$(mktemp -d)
trap 'rm -rf "$report"' EXIT
set +e
"$PY" -m pytest -p no:cacheprovider -m gpu -q --junitxml="$report/gpu.xml" \
    ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"}
tests=$?
set -e
if [ "$tests" -eq 5 ]; then
    echo "gpu_check: pytest collected no gpu test" >&2
    tests=1
fi
if [ -f "$report/gpu.xml" ] && ! "$PY" - "$report/gpu.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

skipped = [
    f"{case.get('classname')}::{case.get('name')}: {skip.get('message')}"
    for case in ET.parse(sys.argv[1]).iter("testcase")
    for skip in case.iter("skipped")
]
for line in skipped:
    print(f"gpu_check: skipped on a GPU machine: {line}", file=sys.stderr)
sys.exit(1 if skipped else 0)
EOF
then
    tests=1
fi
[ "$tests" -eq 0 ] || status=1

# -- 4. the speed benchmark ---------------------------------------------------------------
set +e
"$PY" benchmarks/bench_gpu.py ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}
bench=$?
set -e
[ "$bench" -eq 0 ] || status=1

echo "gpu_check: tests $([ "$tests" -eq 0 ] && echo passed || echo FAILED)," \
    "benchmark $([ "$bench" -eq 0 ] && echo agreed with NumPy || echo FAILED)"
exit "$status"
