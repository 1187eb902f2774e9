"""Optuna searches: the schema, the per-loss space, and (slow) a pruned search through the real
command, its interruption and resume (no repeated or lost trials), and its dashboard-readable
SQLite storage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ncstudy.search import loss_space, n_trials, trial_from_point
from ncstudy.spec import SpecError, parse_study


def study(**search: object) -> dict:
    return {
        "name": "s",
        "dataset": {"name": "digits", "image_size": 8},
        "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
        "train": {"epochs": 4, "lr": 0.1},
        "losses": [{"name": "ce"}, {"name": "normface"}],
        "grid": {"batch_size": [64], "seed": [7]},
        "search": {"n_trials": 3, "space": {"temperature": {"low": 0.05, "high": 1.0}}, **search},
    }


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"space": {}}, "space is empty"),
        ({"space": {"momentum": [0.9]}}, "space.momentum"),
        ({"sampler": "grid", "space": {"temperature": {"low": 0.1, "high": 1}}}, "grid needs"),
        ({"sampler": "cmaes", "space": {"batch_size": [32, 64]}}, "cmaes"),
        ({"space": {"temperature": {"low": 1.0, "high": 0.1}}}, "smaller than high"),
        ({"space": {"temperature": {"low": 0.0, "high": 1, "log": True}}}, "log range"),
        ({"n_trials": None}, "n_trials"),
        ({"pruner": "hyperband"}, "search.pruner"),
    ],
)
def test_bad_searches_are_rejected(search: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_study(study(**search))
    assert message in str(err.value)


def test_space_per_loss_and_grid_sampler_size() -> None:
    spec = parse_study(
        study(
            sampler="grid",
            n_trials=None,
            space={"temperature": [0.1, 0.5], "batch_size": [32, 64], "train.lr": [0.1]},
        )
    )
    ce, normface = spec.losses
    assert "temperature" not in loss_space(spec.search, ce)  # ce has no temperature
    assert n_trials(spec.search, ce) == 2 and n_trials(spec.search, normface) == 4


def test_a_sampled_point_resolves_to_a_full_trial() -> None:
    spec = parse_study(study(space={"temperature": [0.2], "train.weight_decay": [0.001]}))
    trial = trial_from_point(spec, 1, {"temperature": 0.2, "train.weight_decay": 0.001})
    assert trial.key == "normface-t0.2-b64-wd0.001-s7"
    assert trial.loss_params["temperature"] == 0.2 and trial.train.weight_decay == 0.001
    assert trial.seed == 7 and trial.lr == pytest.approx(0.1 * 64 / 256)


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "grid"])
def test_every_sampler_drives_an_optuna_study(sampler: str) -> None:
    from ncstudy.search import make_sampler

    space = (
        {"temperature": [0.1, 0.2, 0.5], "train.lr": [0.1, 0.3]}
        if sampler == "grid"
        else {"temperature": {"low": 0.05, "high": 1.0, "log": True}, "train.lr": [0.1, 0.3]}
    )
    spec = parse_study(
        study(sampler=sampler, n_trials=None if sampler == "grid" else 6, space=space)
    )
    loss = spec.losses[1]
    ot = optuna.create_study(sampler=make_sampler(spec.search, loss), direction="minimize")

    def objective(trial: optuna.Trial) -> float:
        t = (
            trial.suggest_float("point/temperature", 0.05, 1.0, log=True)
            if sampler != "grid"
            else (trial.suggest_categorical("point/temperature", [0.1, 0.2, 0.5]))
        )
        lr = trial.suggest_categorical("point/train.lr", [0.1, 0.3])
        return (t - 0.2) ** 2 + lr

    ot.optimize(objective, n_trials=n_trials(spec.search, loss))
    assert len(ot.trials) == 6
    if sampler == "grid":  # every grid point exactly once
        points = {(t.params["point/temperature"], t.params["point/train.lr"]) for t in ot.trials}
        assert len(points) == 6


@pytest.mark.slow
def test_pruned_search_interrupt_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    spec = {
        **study(),
        "name": "opt",
        "output_dir": str(out),
        "losses": [{"name": "normface"}],
        "train": {"epochs": 12, "lr": 0.1},
        "evaluation": {"every": 4, "nc_metrics": False},
        "resources": {"max_concurrent_trials": 1},
        "search": {
            "n_trials": 5,
            "sampler": "tpe",
            "seed": 3,
            "pruner": "asha",
            "grace_epochs": 2,
            "space": {"temperature": {"low": 0.02, "high": 2.0, "log": True}},
        },
    }
    path = tmp_path / "opt.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    cmd = [sys.executable, "-m", "ncstudy.run", str(path)]
    storage = f"sqlite:///{out / 'opt' / 'optuna.db'}"

    def optuna_trials() -> list[optuna.trial.FrozenTrial]:
        try:
            return optuna.load_study(study_name="opt-normface", storage=storage).trials
        except (KeyError, Exception):
            return []

    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        if (out / "opt" / "tune-normface").exists():  # stores created by the driver
            done = [t for t in optuna_trials() if t.state.is_finished()]
            if len(done) >= 2:
                break
    assert proc.poll() is None, "the search ended before it could be interrupted: " + (
        proc.stdout.read() if proc.stdout else ""
    )
    proc.send_signal(signal.SIGINT)
    first, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, first

    resumed = subprocess.run(
        [*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "optuna-dashboard sqlite:///" in resumed.stdout

    trials = optuna_trials()
    assert len(trials) == 5  # no repeated and no lost trials
    states = {t.state for t in trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert optuna.trial.TrialState.COMPLETE in states

    mlf = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = mlf.get_experiment_by_name("opt")
    children = [
        r for r in mlf.search_runs([exp.experiment_id]) if r.data.tags["ncstudy.role"] == "trial"
    ]
    keys = [r.data.tags["ncstudy.trial_key"] for r in children]
    # one run per Optuna trial (an interrupted trial resumes its own run; a point sampled
    # twice is two runs, `-o<n>` keys), so exactly as many runs as trials
    assert len(keys) == len(set(keys)) == 5 and all("-o" in k for k in keys)
    assert {r.info.status for r in children} <= {"FINISHED", "KILLED"}
    for run in children:
        if run.info.status == "KILLED":
            epoch = int(run.data.tags["ncstudy.stopped_at_epoch"])
            assert 1 <= epoch < 12 and run.data.metrics["epoch"] == epoch
