#!/usr/bin/env bash
# Regenerate docs/results/evidence_cifar10_cpu/: run the CPU-sized evidence study
# (studies/evidence_cifar10_cpu.yaml) and build its report into this folder.
#
#   docs/results/regenerate.sh [--output DIR] [--report-only] [--study YAML] [--out DIR]
#
#   --output DIR    where the study's runs and MLflow store go (default ./ncstudy-runs)
#   --report-only   skip the run; rebuild the report from the MLflow store under --output
#   --study YAML    another study (default studies/evidence_cifar10_cpu.yaml)
#   --out DIR       the report folder (default docs/results/<study name>)
#
# Data: torchvision downloads CIFAR-10 by default. Offline, set EVIDENCE_CIFAR10_ROOT to an
# extracted CIFAR-10 JPEG copy (train/<class>/*.jpg, test/<class>/*.jpg) or NCSTUDY_CIFAR10_ZIP
# to a zip of one: a CIFAR-10 study then runs from a copy of the YAML (in a temporary folder) with
# `dataset.name: cifar10_jpeg` and that root. The run is niced (nice -n 10): it takes the
# cores other work leaves. Python: $PYTHON, else python.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python}"
study="$repo/studies/evidence_cifar10_cpu.yaml"
output="ncstudy-runs"
out=""
run=1
while [ $# -gt 0 ]; do
  case "$1" in
    --output) output="$2"; shift 2 ;;
    --study) study="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --report-only) run=0; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "regenerate.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

name="$("$py" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' "$study")"
out="${out:-$here/$name}"

if [ "$run" = 1 ]; then
  if [ -n "${EVIDENCE_CIFAR10_ROOT:-}${NCSTUDY_CIFAR10_ZIP:-}" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$py" - "$study" "$tmp/$name.yaml" "${EVIDENCE_CIFAR10_ROOT:-}" <<'PYEOF'
import sys, yaml
src, dst, root = sys.argv[1:]
study = yaml.safe_load(open(src))
if study["dataset"]["name"] == "cifar10":  # other datasets run as they are
    study["dataset"].update(name="cifar10_jpeg", download=False, root=root or None)
yaml.safe_dump(study, open(dst, "w"), sort_keys=False)
PYEOF
    study="$tmp/$name.yaml"
  fi
  nice -n 10 "$py" -m ncstudy.run "$study" --output "$output"
fi
"$py" -m ncstudy.report "$name" --output "$output" --out "$out"
