"""The report page in a real browser: headless Chromium (Debian's `chromium`, installed by
.ci/run) loads index.html through the DevTools protocol; the test fails on any console error,
uncaught exception or failed load, and on any image that does not decode. The checker itself
is shown to catch each of those on a page made to have them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ncstudy import tracking
from ncstudy.config import expand, parse_study
from ncstudy.report import load_study_data, write_report
from ncstudy.report.browser import check_page, chromium_binary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        chromium_binary() is None, reason="needs Chromium: apt-get install chromium (.ci/run)"
    ),
]

STUDY = {
    "name": "web",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "train": {"epochs": 3, "warmup_epochs": 1},
    "losses": [{"name": "ce"}, {"name": "normface"}],
    "grid": {"temperature": [0.1, 1.0], "batch_size": [64], "seed": [0, 1]},
}


def _report(out: Path) -> Path:
    spec = parse_study({**STUDY, "output_dir": str(out)})
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    (out / "web").mkdir()
    (out / "web" / "study.yaml").write_text(text)
    uri = f"sqlite:///{out}/mlflow.db"
    mlf = tracking.client(uri)
    exp = tracking.ensure_experiment(mlf, "web", out / "mlartifacts")
    parent = tracking.ensure_parent_run(mlf, exp, "web", text)
    for i, t in enumerate(expand(spec)):
        run = tracking.ensure_child_run(mlf, exp, parent, t)
        for step in range(4):
            nc = {"nc/nc1": 3.0 / (1 + step), "nc/erank_inter": 2.0 + step, "test/acc1": 0.2 * step}
            tracking.log_metrics(mlf, run, nc, step)
        acc = 0.6 + 0.01 * i
        tracking.log_metrics(mlf, run, {"best/val_acc1": acc, "final/test_acc1": acc}, 3)
        tracking.finish_run(mlf, run, "FINISHED")
    data = load_study_data("web", uri, out / "web" / "study.yaml")
    return write_report(data, out / "report", log_to_mlflow=False).index


def test_the_report_renders_in_chromium_without_errors(tmp_path: Path) -> None:
    index = _report(tmp_path)
    shot = tmp_path / "page.png"
    check = check_page(index, screenshot=shot)
    assert check.errors == []
    figures = index.read_text().count('<img src="data:image/png;base64,')
    assert figures >= 4 and len(check.images) == figures
    assert check.broken_images == []
    assert check.height > 2000  # tables and figures laid out, not an empty page
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_checker_catches_errors_and_broken_images(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><body><img src="missing.png" alt="gone">'
        '<img src="data:image/png;base64,AAAA" alt="corrupt">'
        '<script>console.error("boom"); null.x</script></body></html>'
    )
    check = check_page(page)
    assert sorted(check.broken_images) == ["corrupt", "gone"]
    text = "\n".join(check.errors)
    assert "console.error: boom" in text
    assert "uncaught exception: TypeError" in text
    assert "missing.png" in text  # the failed load
