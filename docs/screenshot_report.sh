#!/usr/bin/env bash
# Regenerate docs/report.png, the README's screenshot of a report: run the quick start (about
# 1-3 minutes on 2 CPU cores), write its report, load it in headless Chromium (Debian's
# `chromium`), and keep the page's top (header, trials, accuracy by temperature) above the
# figure of NormFace's NC metrics across temperatures, downscaled to a small palette PNG.
#   docs/screenshot_report.sh [OUTPUT_DIR]   (default: a new temporary folder; an OUTPUT_DIR
#   that already holds a finished quick start is reused)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-$(mktemp -d)}
if [ ! -f "$OUT/quickstart/study.yaml" ]; then
  "$PY" -m ncstudy.run studies/quickstart.yaml --output "$OUT"
fi
"$PY" -m ncstudy.report quickstart --output "$OUT" --no-mlflow
"$PY" -m ncstudy.report.browser "$OUT/quickstart/report/index.html" --width 1100 \
  --screenshot "$OUT/report_full.png" --sections "$OUT/sections.json"
"$PY" - "$OUT/report_full.png" "$OUT/sections.json" docs/report.png <<'PY'
import json
import sys

from PIL import Image

full, sections, target = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
page = Image.open(full).convert("RGB")
tops = sorted(sections.values())


def section(name: str) -> Image.Image:
    """The section from its heading to the next one."""
    top = sections[name]
    end = next((t for t in tops if t > top), page.height)
    return page.crop((0, top - 10, page.width, end - 10))


parts = [page.crop((0, 0, page.width, sections["failures"] - 10))]  # header and trials
parts += [section("accuracy_temperature"), section("nc_by_temperature_digits_normface")]
sheet = Image.new("RGB", (page.width, sum(p.height for p in parts)), "white")
y = 0
for p in parts:
    sheet.paste(p, (0, y))
    y += p.height
small = sheet.resize((sheet.width * 2 // 3, sheet.height * 2 // 3), Image.LANCZOS)
small.quantize(colors=96).save(target, optimize=True)
print(f"{target}: {small.width}x{small.height} from {full} ({page.width}x{page.height})")
PY
