#!/usr/bin/env bash
# The first-GPU check (issue 18): on a machine with one CUDA GPU, in under 8 minutes,
#   1. the GPU-marked tests (tests/gpu: every loss and the NC metrics on CUDA against the CPU,
#      AMP steps finite, the worker loop with AMP, a 1-GPU NCCL Ray Train trial end to end);
#   2. benchmarks/gpu_bench.py: CIFAR ResNet-18 worker loop vs bare loop, FFCV vs torchvision
#      feeding the GPU, metrics pass vs inference pass;
# then one table, each number against its goal.
#
#   benchmarks/gpu_check.sh [--dry-run]     (or GPU_CHECK_DRY=1)
#
# --dry-run: on the CPU with tiny sizes (the tests with NCSTUDY_GPU_DRY=1, the benchmark with
# --dry-run): proves the script starts and every stage runs. Needs the offline CIFAR-10 zip:
# $NCSTUDY_CIFAR10_ZIP, else ../shared/data/cifar10-jpeg.zip beside the repository.
# PYTHON picks the interpreter (default: python3). Exit status 1 if a test or a stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY:-0}
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    *) echo "gpu_check.sh: unknown argument $arg (only --dry-run)" >&2; exit 2 ;;
  esac
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
ZIP=${NCSTUDY_CIFAR10_ZIP:-$PWD/../shared/data/cifar10-jpeg.zip}
if [ ! -f "$ZIP" ]; then
  echo "gpu_check.sh: CIFAR-10 zip not found at $ZIP; set NCSTUDY_CIFAR10_ZIP" >&2
  exit 2
fi
export NCSTUDY_CIFAR10_ZIP=$ZIP
WORK=$(mktemp -d -t ncstudy-gpu-check-XXXXXX)
START=$(date +%s)
status=0
bench_args=()
if [ "$DRY" = 1 ]; then
  export NCSTUDY_GPU_DRY=1
  bench_args+=(--dry-run)
  echo "== gpu_check: DRY RUN on the CPU"
else
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: torch sees no CUDA device; use --dry-run on a CPU machine" >&2
    exit 2
  fi
fi
"$PY" -c "import importlib.util as u, torch; ray = u.find_spec('ray') and __import__('ray'); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'ray', ray.__version__ if ray else 'not installed')"

echo "== stage 1: GPU-marked tests"
timeout 300 "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider --junitxml="$WORK/gpu-tests.xml" \
  || status=1
echo "   ($(( $(date +%s) - START )) s so far)"

echo "== stage 2: measurements"
junit=()
[ -f "$WORK/gpu-tests.xml" ] && junit=(--junit "$WORK/gpu-tests.xml")
timeout 330 "$PY" benchmarks/gpu_bench.py "${bench_args[@]}" "${junit[@]}" || status=1
echo "== gpu_check: $(( $(date +%s) - START )) s in all, status $status (goal: under 480 s)"
exit $status
