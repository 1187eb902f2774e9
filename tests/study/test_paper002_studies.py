"""The CPU-sized version of Jiang et al.'s studies (studies/gnc_cpu.yaml, shortened to 2 epochs)
runs end to end through Ray Tune and MLflow, and its report holds Figures 2-5 with captions
that quote the run's own values (read back from MLflow here). The fine-tuning path reloads a
finished trial's encoder from MLflow (model.init_from: runs:/<id>)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ncstudy.finetune import init_encoder
from ncstudy.report.cli import main as report_main
from ncstudy.targets import RunTarget
from ncstudy.trained import load_trial_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def shortened(tmp_path: Path) -> Path:
    """studies/gnc_cpu.yaml with 2 epochs, two temperatures and without the fixed-code trials
    (CI time: 6 trials; fixed_code is tested in tests/losses/test_losses_gnc_classifiers.py)."""
    study = yaml.safe_load((REPO / "studies" / "gnc_cpu.yaml").read_text())
    study["train"] |= {"epochs": 2, "warmup_epochs": 0}
    assert [loss["name"] for loss in study["losses"]] == ["normface", "cmf", "fixed_code"]
    study["losses"] = study["losses"][:2]
    study["losses"][0]["temperatures"] = [0.2, 1.0]  # 0.2: CMF's, for Figure 5
    del study["grid"]["axes"]["loss.assignment"]
    study["evaluation"] = {"every": 1}
    study["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "gnc_cpu.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def run(path: Path) -> list:
    """Run the study in this process on a new local Ray instance (never another cluster)."""
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
        return run_study(load_study(path))
    finally:
        ray.shutdown()


def test_gnc_cpu_study_report_has_the_papers_figures(tmp_path: Path) -> None:
    rows = run(shortened(tmp_path))
    assert [r.status for r in rows] == ["FINISHED"] * len(rows) == ["FINISHED"] * 6, rows
    out = tmp_path / "runs"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    mlf = MlflowClient(uri)
    exp = mlf.get_experiment_by_name("gnc_cpu")
    runs = [r for r in mlf.search_runs([exp.experiment_id]) if "loss" in r.data.tags]
    assert report_main([str(out / "gnc_cpu")]) == 0
    report = (out / "gnc_cpu" / "report" / "report.md").read_text()
    figures = {p.name for p in (out / "gnc_cpu" / "report" / "figures").glob("gnc_*.png")}
    assert {
        "gnc_temperature_normface_d2.png",  # Figure 2 (one per d)
        "gnc_temperature_normface_d3.png",
        "gnc_dimension_cmf_tau0.2.png",  # Figure 3 (one per loss and temperature)
        "gnc_dimension_normface_tau0.2.png",
        "gnc_dimension_normface_tau1.0.png",
        "gnc_features_2d.png",  # Figure 4
        "gnc_cmf_curves_d2.png",  # Figure 5 (one per d)
        "gnc_cmf_curves_d3.png",
    } == figures
    assert "optimal rho_ovr(2, 4) = 1.000" in report  # d = 2: the square, rho = 1 - cos(pi/2)
    assert "89.95%" in report and "98.00%" in report  # the paper's numbers beside this run's
    assert "This run (d = 2, final test accuracy, mean over seeds): learned" in report
    # Figure 4's caption quotes each d = 2 trial's test accuracy, as logged in MLflow
    for r in runs:
        if r.data.params.get("model.feature_dim") == "2":
            assert f"{100 * r.data.metrics['test/acc1']:.1f}%" in report
    # fine-tuning: a cmf trial's encoder reloaded from MLflow equals the logged network's
    cmf = next(r for r in runs if r.data.tags["loss"] == "cmf" and
               r.data.params.get("model.feature_dim") == "2")  # fmt: skip
    net, _ = load_trial_model(cmf.info.run_id, uri)
    learned = next(r for r in runs if r.data.tags["loss"] == "normface" and
                   r.data.params.get("model.feature_dim") == "2")  # fmt: skip
    fresh, _ = load_trial_model(learned.info.run_id, uri)  # same encoder shape (d = 2)
    assert any(
        (fresh.encoder.state_dict()[k] != v).any() for k, v in net.encoder.state_dict().items()
    )
    init_encoder(fresh.encoder, f"runs:/{cmf.info.run_id}", RunTarget(uri, "finetune"))
    state = net.encoder.state_dict()
    # the logged 2-D picture's arrows are the trained CMF rows
    npz = mlf.download_artifacts(cmf.info.run_id, "features/test_2d.npz", str(tmp_path))
    with np.load(npz) as arrays:
        assert np.allclose(arrays["weights"], net.criterion.classifier_weights().numpy())
        assert arrays["features"].shape == (len(arrays["labels"]), 2)
    assert all((fresh.encoder.state_dict()[k] == v).all() for k, v in state.items())
