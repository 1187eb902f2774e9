"""UFM studies: the YAML section (validation, grid axes, keys), the trial loop's reports and
checkpoints, and (slow) a whole UFM study through the real command with MLflow runs checked."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ncstudy.config import SpecError, TrialSpec, expand, load_study, parse_study
from ncstudy.context import LocalContext
from ncstudy.trial import uses_train
from ncstudy.ufm import theory
from ncstudy.ufm.runner import ufm_loop

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def ufm_study(**over: object) -> dict:
    study: dict = {
        "name": "u",
        "model": {"name": "ufm"},
        "ufm": {"K": 3, "d": 4, "n_per_class": 2, "iterations": 40},
        "losses": [{"name": "normface"}, {"name": "nonl"}],
        "grid": {"temperature": [0.5], "seed": [0, 1]},
        "evaluation": {"every": 10},
    }
    study.update(over)
    return study


# ----------------------------------------------------------------------------- the spec


def test_ufm_study_expands_with_k_and_d_in_the_keys() -> None:
    study = ufm_study(grid={"temperature": [0.5], "seed": [0], "axes": {"ufm.d": [2, 4]}})
    trials = expand(parse_study(study))
    assert [t.key for t in trials] == [
        "normface-t0.5-d2-s0",
        "normface-t0.5-d4-s0",
        "nonl-t0.5-d2-s0",
        "nonl-t0.5-d4-s0",
    ]
    t = trials[0]
    assert t.ufm is not None and t.ufm.d == 2 and t.ufm.K == 3
    assert t.batch_size == 6  # the whole sample set is the batch
    assert not uses_train(t)
    assert TrialSpec.model_validate(t.model_dump(mode="json")) == t  # Tune round trip


def test_regularized_variant_and_its_penalties_round_trip() -> None:
    study = ufm_study(
        ufm={"K": 3, "d": 5, "variant": "regularized", "lambda_w": 0.1, "iterations": 20},
        losses=[{"name": "ce"}, {"name": "mse"}],
        grid={"seed": [0]},
    )
    trials = expand(parse_study(study))
    assert [t.key for t in trials] == ["ce-s0", "mse-s0"]
    assert trials[0].ufm.lambda_w == 0.1
    assert TrialSpec.model_validate(trials[0].model_dump(mode="json")) == trials[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ufm": None}, "needs a `ufm:` section"),
        ({"model": {"name": "small_cnn"}}, "set model.name: ufm"),
        ({"losses": [{"name": "ce"}]}, "use ufm.variant: regularized"),
        (
            {"ufm": {"variant": "regularized"}, "losses": [{"name": "normface"}]},
            "use ufm.variant: spherical",
        ),
        ({"ufm": {"lambda_w": 0.1}}, "lambda_w applies to variant: regularized"),
        ({"ufm": {"log_loss": True}}, "log_loss needs a positive loss"),
        ({"dataset": {"name": "digits"}}, "UFM trials have no dataset"),
        ({"grid": {"batch_size": [8]}}, "grid.batch_size"),
        ({"resources": {"workers_per_trial": 2}}, "workers_per_trial"),
        ({"evaluation": {"every": 1}, "ufm": {"iterations": 5000}}, "evaluation.every"),
        ({"grid": {"axes": {"ufm.K": [1]}}}, "K"),
        ({"grid": {"axes": {"ufm.depth": [1]}}}, "unknown axis"),
        ({"losses": [{"name": "ntce", "params": {"queue_size": 8}}]}, "queue_size: the UFM"),
        (  # a queue from a grid axis, or from a search space, is caught the same way
            {"losses": [{"name": "ntce"}], "grid": {"axes": {"loss.queue_size": [0, 8]}}},
            "grid.axes.loss.queue_size=8: losses[0] (ntce): queue_size: the UFM",
        ),
        (
            {
                "losses": [{"name": "supcon", "params": {"projection": "none"}}],
                "search": {"n_trials": 2, "space": {"loss.queue_size": [0, 16]}},
            },
            "search.space.loss.queue_size=16",
        ),
        (
            {
                "losses": [{"name": "normface", "params": {"classifier": "etf"}}],
                "grid": {"axes": {"ufm.d": [1, 4]}},
            },
            "d",
        ),
        (
            {
                "losses": [{"name": "normface", "params": {"classifier": "etf"}}],
                "grid": {"axes": {"ufm.K": [3, 9]}},
            },
            "losses[0]",
        ),
    ],
)
def test_bad_ufm_studies_name_the_field(change: dict, message: str) -> None:
    study = ufm_study(**change)
    if study.get("ufm") is None:
        study.pop("ufm")
    with pytest.raises(SpecError) as err:
        parse_study(study)
    assert message in str(err.value)


def test_a_queue_is_refused_by_the_ufm_problem_itself() -> None:
    from ncstudy.losses import build_loss
    from ncstudy.ufm import SphericalUFM, balanced_labels

    crit = build_loss("nonl", {"queue_size": 4}, feature_dim=3, num_classes=2)
    with pytest.raises(ValueError, match="queue_size 4"):
        SphericalUFM(crit, balanced_labels(2, 2), 3)


def test_shipped_ufm_theory_study_covers_both_regimes() -> None:
    study = load_study(REPO / "studies" / "ufm_theory.yaml")
    trials = expand(study)
    regimes = {(t.ufm.K, t.ufm.d) for t in trials}
    assert any(k <= d + 1 for k, d in regimes) and any(k > d + 1 for k, d in regimes)
    assert {t.loss for t in trials} >= {"normface", "ntce", "nonl"}
    assert len({t.key for t in trials}) == len(trials)


# ----------------------------------------------------------------------------- the loop


def test_loop_reports_every_few_iterations_with_nc_metrics() -> None:
    trial = expand(parse_study(ufm_study()))[0]
    ctx = LocalContext()
    ufm_loop(trial, ctx)
    assert [r["epoch"] for r in ctx.reports] == [10, 20, 30, 40]
    last = ctx.reports[-1]
    assert last["status"] == "finished"
    assert last["val/acc1"] == last["train/acc1"] == last["final/val_acc1"] == 1.0
    bound = theory.normface_bound(3, 0.5)
    assert last["ufm/theory_loss"] == pytest.approx(bound)
    assert last["train/loss"] == pytest.approx(bound, abs=1e-4)
    assert not any(k.startswith("nc/") for k in last)  # Tune sees scalars only
    # finite, also once converged (a converged problem reports its last step's gradient)
    assert last["ufm/converged"] == 1.0
    assert all(math.isfinite(v) for r in ctx.reports for v in r.values() if isinstance(v, float))


def test_ufm_memory_zero_runs_riemannian_gradient_descent() -> None:
    """`ufm.memory: 0` reaches the problem: no curvature pair is ever kept (plain Riemannian
    gradient descent), and at a mild temperature it still reaches the NormFace bound."""
    from ncstudy.ufm.runner import build_problem

    ufm = {"K": 3, "d": 4, "n_per_class": 2, "iterations": 300, "memory": 0}
    trial = expand(parse_study(ufm_study(ufm=ufm)))[0]
    problem = build_problem(trial)
    assert problem.memory == 0
    problem.run(300)
    assert problem._s is None  # no L-BFGS pair stored
    assert problem.loss().item() == pytest.approx(theory.normface_bound(3, 0.5), abs=1e-6)


def test_loop_logs_nc_metrics_and_resumes_exactly(tmp_path: Path, monkeypatch) -> None:
    logged: list[dict] = []
    monkeypatch.setattr(
        "ncstudy.runlog.RunLogger.log", lambda logger, metrics, step: logged.append(metrics)
    )
    trial = expand(parse_study(ufm_study()))[2]  # nonl, seed 0
    ctx = LocalContext()
    ufm_loop(trial, ctx)
    assert {"nc/nc1", "nc/erank_inter", "nc/align_weight_mean", "train/loss"} <= set(logged[-1])

    class Interrupted(LocalContext):
        def _report(self, metrics, checkpoint_dir) -> None:
            super()._report(metrics, checkpoint_dir)
            if metrics["epoch"] == 20:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ufm_loop(trial, Interrupted(tmp_path))
    resumed = LocalContext(tmp_path)
    ufm_loop(trial, resumed)
    assert [r["epoch"] for r in resumed.reports] == [30, 40]
    timing = "perf/iteration_seconds"
    assert {k: v for k, v in resumed.reports[-1].items() if k != timing} == {
        k: v for k, v in ctx.reports[-1].items() if k != timing
    }


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_ufm_study_runs_through_the_cli_and_logs_to_mlflow(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    study = ufm_study(
        name="ufm-e2e",
        output_dir=str(tmp_path / "runs"),
        grid={"temperature": [0.5], "seed": [0], "axes": {"ufm.K": [3, 6]}},
        ufm={"K": 3, "d": 3, "n_per_class": 2, "iterations": 30},
        resources={"cpus_per_worker": 1},
    )
    path = tmp_path / "ufm.yaml"
    path.write_text(yaml.safe_dump(study))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "", "NCSTUDY_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ncstudy.run", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mlf = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = mlf.get_experiment_by_name("ufm-e2e")
    runs = mlf.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("ncstudy.role") == "trial"]
    assert sorted(r.info.run_name for r in children) == [
        "nonl-t0.5-K3-s0",
        "nonl-t0.5-K6-s0",
        "normface-t0.5-K3-s0",
        "normface-t0.5-K6-s0",
    ]
    for run in children:
        assert run.info.status == "FINISHED"
        assert {"nc/nc1", "nc/erank_inter", "train/loss", "final/val_acc1"} <= set(run.data.metrics)
        history = mlf.get_metric_history(run.info.run_id, "nc/nc1")
        assert sorted(m.step for m in history) == [0, 10, 20, 30]  # 0: at initialisation
        assert run.data.params["ufm.K"] in {"3", "6"}
