#!/usr/bin/env bash
# Regenerate docs/mlflow_runs.png, the README's screenshot of MLflow's runs table: run the quick
# start (about 1-3 minutes on 2 CPU cores), serve its store with an MLflow server on a free
# 127.0.0.1 port, open the experiment's runs table in headless Chromium (Debian's `chromium`)
# with the study's run expanded to its trials and metric columns shown (view state MLflow keeps
# in the browser's localStorage: ncstudy/report/mlflow_shot.py), and save a small palette PNG.
#   docs/screenshot_mlflow.sh [OUTPUT_DIR]   (default: a new temporary folder; an OUTPUT_DIR
#   that already holds a finished quick start is reused)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-$(mktemp -d)}
if [ ! -f "$OUT/quickstart/study.yaml" ]; then
  "$PY" -m ncstudy.run studies/quickstart.yaml --output "$OUT"
fi
"$PY" -m ncstudy.report.mlflow_shot quickstart --output "$OUT" --width 1400 \
  --screenshot "$OUT/mlflow_full.png"
"$PY" - "$OUT/mlflow_full.png" docs/mlflow_runs.png <<'PY'
import sys

from PIL import Image

full, target = sys.argv[1], sys.argv[2]
page = Image.open(full).convert("RGB")
top = page.crop((0, 0, page.width, min(page.height, 480)))  # the header and the table's rows
small = top.resize((top.width * 3 // 4, top.height * 3 // 4), Image.LANCZOS)
small.quantize(colors=96).save(target, optimize=True)
print(f"{target}: {small.width}x{small.height} from {full} ({page.width}x{page.height})")
PY
