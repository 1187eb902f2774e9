"""The CPU-sized paper-003 studies (studies/paper003_*_cpu.yaml), shrunk further, run for real
(Ray Tune, MLflow) and their reports hold Yaras et al.'s figures, with captions whose measured
numbers are the values in MLflow; a random-labels run records its permutation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ncstudy.report.cli import main as report_main
from ncstudy.report.paper003 import normface_bound

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

# study -> overrides that keep the run to seconds (same shape as the shipped one)
SHRINK = {
    "paper003_ufm_sphere_2d_cpu": {
        "ufm": {"K": 100, "d": 2, "n_per_class": 5, "iterations": 150, "memory": 0},
        "grid": {"temperature": [1.0], "seed": [0]},
        "evaluation": {"every": 75},
    },
    "paper003_ufm_landscape_cpu": {
        "ufm": {"K": 10, "d": 12, "n_per_class": 3, "iterations": 200},
        "grid": {"temperature": [1.0, 0.5], "seed": [0], "axes": {"ufm.K": [4, 10]}},
        "evaluation": {"every": 200},
    },
    "paper003_width_random_labels_cpu": {
        "dataset": {"name": "digits", "image_size": 8, "subset_per_class": 12,
                    "val_fraction": 0.0, "augment": False, "random_labels": True},
        "train": {"epochs": 2, "lr": 0.1, "base_batch_size": 64},
        "grid": {"temperature": [0.1], "batch_size": [40], "seed": [0],
                 "axes": {"model.width": [2, 4]}},
    },
    "paper003_ufm_speed_cpu": {
        "ufm": {"K": 6, "d": 6, "n_per_class": 3, "variant": "spherical", "iterations": 40,
                "memory": 0},
        "grid": {"temperature": [1.0], "seed": [0, 1]},
        "evaluation": {"every": 20, "max_intra_classes": 6},
    },
    "paper003_norm_vs_penalty_cpu": {
        "train": {"epochs": 2, "lr": 0.1, "base_batch_size": 64, "weight_decay": 5.0e-4},
        "grid": {"temperature": [0.1], "batch_size": [32], "seed": [0, 1]},
    },
}  # fmt: skip


def _run(paths: list[Path]) -> None:
    """Every study in this process on one new local Ray instance (never another cluster)."""
    import ray

    from ncstudy.config import load_study
    from ncstudy.study import run_study

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="warning",
        runtime_env={"env_vars": {"NCSTUDY_THREADS": "1"}},
    )
    try:
        for path in paths:
            rows = run_study(load_study(path))
            assert {r.status for r in rows} == {"FINISHED"}, (path.name, rows)
    finally:
        ray.shutdown()


def _captions(folder: Path) -> str:
    return (folder / "report" / "report.md").read_text()


def _runs(mlf: MlflowClient, name: str) -> dict:
    exp = mlf.get_experiment_by_name(name)
    runs = mlf.search_runs([exp.experiment_id])
    return {r.data.tags["ncstudy.trial_key"]: r for r in runs if "ncstudy.trial_key" in r.data.tags}


def test_paper003_cpu_studies_report_the_papers_figures(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    paths = []
    for name, shrink in SHRINK.items():
        raw = yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**raw, **shrink, "output_dir": str(out)}))
        paths.append(path)
    _run(paths)
    mlf = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    for name in SHRINK:
        assert report_main([str(out / name)]) == 0

    # Table 1 / Figure 1: the caption's means are MLflow's final values
    runs = _runs(mlf, "paper003_ufm_sphere_2d_cpu")
    nf = [runs["normface-t1-s0"].data.metrics]
    text = _captions(out / "paper003_ufm_sphere_2d_cpu")
    mean = np.mean([m["train/loss"] for m in nf])
    assert f"Normalization: loss {mean:.2f} ±" in text
    assert "![Paper 003: Table 1 and Figure 1](figures/paper003_figure1.png)" in text
    geo = mlf.download_artifacts(runs["ce-s0"].info.run_id, "ufm/geometry.json", str(tmp_path))
    assert np.asarray(json.loads(Path(geo).read_text())["features"]).shape == (500, 2)

    # Figure 3: the largest gap to Theorem 1 in the caption, recomputed here
    runs = _runs(mlf, "paper003_ufm_landscape_cpu")
    gaps = []
    for k in (4, 10):
        for t in (1.0, 0.5):
            loss = runs[f"normface-t{t:g}-K{k}-s0"].data.metrics["train/loss"]
            gaps.append(abs(loss - math.log1p((k - 1) * math.exp(-k / ((k - 1) * t)))))
    assert normface_bound(4, 0.5) == pytest.approx(math.log1p(3 * math.exp(-8 / 3)))
    assert f"largest |loss - bound| {max(gaps):.2e}" in _captions(
        out / "paper003_ufm_landscape_cpu"
    )
    assert max(gaps) < 1e-3  # the optimum is reached

    # Figure 4
    text = _captions(out / "paper003_width_random_labels_cpu")
    assert "(figures/paper003_figure4.png)" in text
    runs = _runs(mlf, "paper003_width_random_labels_cpu")
    acc = runs["normface-t0.1-b40-width2-s0"].data.metrics["train/acc1"]
    assert f"width 2: {100 * acc:.1f} %" in text

    _check_learning_curves(mlf, out, "paper003_ufm_speed_cpu", "figure5")
    _check_learning_curves(mlf, out, "paper003_norm_vs_penalty_cpu", "figure6")

    # random labels: the recorded permutation is the seeded one
    rec = mlf.download_artifacts(
        runs["normface-t0.1-b40-width4-s0"].info.run_id, "data/random_labels.json", str(tmp_path)
    )
    record = json.loads(Path(rec).read_text())
    perm = np.random.default_rng(0).permutation(len(record["labels"]))
    assert record["permutation"] == perm.tolist()
    assert np.array_equal(np.asarray(record["true_labels"])[perm], record["labels"])


def _final_means(runs: dict, loss: str, metric: str) -> float:
    return float(np.mean([r.data.metrics[metric] for k, r in runs.items() if k.startswith(loss)]))


def _check_learning_curves(mlf: MlflowClient, out: Path, name: str, figure: str) -> None:
    """Figures 5 and 6: per loss, the caption's final training accuracy (or the step of 100 %)
    and final NC1 are the means over seeds of MLflow's histories' last points."""
    runs = _runs(mlf, name)
    text = _captions(out / name)
    assert f"(figures/paper003_{figure}.png)" in text
    for loss in ("normface", "ce"):
        acc = 100 * _final_means(runs, loss, "train/acc1")
        nc1 = _final_means(runs, loss, "nc/nc1")
        assert f"{loss}: {acc:.1f} % at the end" in text or f"{loss}: 100 % at step" in text
        assert f"{loss} {nc1:.3g}" in text.split("NC1 at the end:")[1]
