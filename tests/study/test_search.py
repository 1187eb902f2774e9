"""Optuna searches: the schema, the per-loss space, and (slow) a pruned search through the real
command, its interruption and resume (no repeated or lost trials), and its dashboard-readable
SQLite storage."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ncstudy import search as srch
from ncstudy.config import SpecError, parse_study
from ncstudy.convergence_ref import metric_series
from ncstudy.search import loss_space, n_trials, trial_from_point
from ncstudy.study import StudyError
from ncstudy.trial import trial_of

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
FAIL, WAITING = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING


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
        ({"metric": "test/acc1"}, "measured on the test set"),
        ({"metric": "nc/nc1"}, "not in every epoch's report"),
        ({"metric": "best/val_acc1"}, "not in every epoch's report"),
        ({"metric": "final/val_acc1"}, "not in every epoch's report"),
        ({"metric": "train/loss"}, "better lower; set mode: min"),
        ({"metric": "val/acc1", "mode": "min"}, "better higher; set mode: max"),
    ],
)
def test_bad_searches_are_rejected(search: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_study(study(**search))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # prototype classifiers (fp) exist only after an evaluation pass (train.py)
        ({"evaluation": {"every": 2}}, "evaluation.every: losses[1] (supcon)"),
        ({"search": {"metric": "train/acc1"}}, "no per-epoch train/acc1"),
        ({"dataset": {"name": "digits", "val_fraction": 0.0}}, "needs a validation split"),
    ],
)
def test_the_search_metric_must_be_in_every_report(change: dict, message: str) -> None:
    raw = {**study(), "losses": [{"name": "ce"}, {"name": "supcon"}]}
    bad = {**raw, **change, "search": {**raw["search"], **change.get("search", {})}}
    with pytest.raises(SpecError) as err:
        parse_study(bad)
    assert message in str(err.value)
    # what each fix suggests is accepted
    parse_study({**raw, "evaluation": {"every": 1}})
    parse_study({**raw, "search": {**raw["search"], "metric": "train/loss", "mode": "min"}})


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


# --- the Ray Tune <-> Optuna glue, driven the way Tune's controller drives it (no Ray) -------


def searcher(spec: object, study_dir: Path, env: dict | None = None) -> srch.PruningOptunaSearch:
    """The searcher of the study's last loss, given the param space a Tuner would give it."""
    index = len(spec.losses) - 1  # type: ignore[attr-defined]
    loss = spec.losses[index]  # type: ignore[attr-defined]
    s = srch.make_searcher(spec, loss, study_dir)  # type: ignore[arg-type]
    space = {
        "point": srch.tune_space(spec.search, loss),  # type: ignore[attr-defined]
        "study": spec.model_dump(mode="json"),  # type: ignore[attr-defined]
        "loss_index": index,
        **({"env": env} if env else {}),
    }
    assert s.set_search_properties(None, None, space)
    return s


def stored(spec: object, study_dir: Path) -> list[optuna.trial.FrozenTrial]:
    name = srch.optuna_study_name(spec, spec.losses[-1])  # type: ignore[arg-type,attr-defined]
    return optuna.load_study(study_name=name, storage=srch.optuna_storage_url(study_dir)).trials


def grid_study(values: list[float], lrs: list[float] | None = None) -> object:
    space: dict = {"temperature": values, **({"train.lr": lrs} if lrs else {})}
    return parse_study(study(sampler="grid", n_trials=None, pruner="asha", space=space))


def test_suggestions_carry_point_names_and_the_optuna_trial_number(tmp_path: Path) -> None:
    spec = grid_study([0.1, 0.5], [0.1, 0.3])
    s = searcher(spec, tmp_path)
    config = s.suggest("t0")
    assert set(config) == {"point", "optuna_trial"} and config["optuna_trial"] == 0
    (trial,) = stored(spec, tmp_path)
    # Optuna's names are Tune's flattened paths, the names the GridSampler's space uses
    assert trial.params == {f"point/{k}": v for k, v in config["point"].items()}
    key = trial_of({"study": spec.model_dump(mode="json"), "loss_index": 1, **config}).key
    tau, lr = config["point"]["temperature"], config["point"]["train.lr"]
    assert key == f"normface-t{tau:g}-b64-lr{lr:g}-s7-o0"


def test_optuna_steps_are_our_epochs(tmp_path: Path) -> None:
    s = searcher(grid_study([0.1, 0.5]), tmp_path)
    s.suggest("t0")
    s.on_trial_result("t0", {"epoch": 1, "val/acc1": 0.3, "training_iteration": 1})
    s.on_trial_result("t0", {"epoch": 2, "val/acc1": 0.4, "training_iteration": 2})
    # restarted from its epoch-2 checkpoint: Tune's counter restarts, epoch 2 comes again
    s.on_trial_result("t0", {"epoch": 2, "val/acc1": 0.9, "training_iteration": 1})
    s.on_trial_result("t0", {"epoch": 3, "val/acc1": 0.5, "training_iteration": 2})
    s.on_trial_result("t0", {"val/acc1": 0.6})  # the checkpoint report before downstream
    s.on_trial_complete("t0", {"epoch": 4, "val/acc1": 0.6, "status": "finished"})
    (trial,) = stored(grid_study([0.1, 0.5]), tmp_path)
    assert trial.intermediate_values == {1: 0.3, 2: 0.4, 3: 0.5}
    assert trial.state == COMPLETE and trial.value == 0.6


@pytest.mark.parametrize("last", ["pruned", "failed", "error"])
def test_the_last_grid_trial_can_be_pruned_or_fail(tmp_path: Path, last: str) -> None:
    """Once every grid point has started, GridSampler.after_trial calls study.stop(), which
    raises outside Study.optimize(); the searcher must still record the trial and not raise
    (Tune would turn the error into a trial failure and retry the stopped trial)."""
    spec = grid_study([0.1, 0.5])
    s = searcher(spec, tmp_path)
    s.suggest("a"), s.suggest("b")  # both grid points running
    s.on_trial_complete("a", {"status": "finished", "val/acc1": 0.9, "epoch": 4})
    if last == "pruned":  # ASHA stopped it at epoch 2, at its first report after the grace
        s.on_trial_complete("b", {"val/acc1": 0.1, "epoch": 2})
    elif last == "failed":  # NaN loss: the trial reports status failed and returns
        s.on_trial_complete("b", {"status": "failed", "epoch": 2, "reason": "loss is nan"})
    else:  # the trial raised (after Tune's retries)
        s.on_trial_complete("b", error=True)
    states = [t.state for t in stored(spec, tmp_path)]
    assert states == [COMPLETE, {"pruned": PRUNED, "failed": FAIL, "error": FAIL}[last]]
    assert {"a", "b"} <= s._completed_trials
    if last == "pruned":
        assert stored(spec, tmp_path)[1].intermediate_values == {2: 0.1}
        assert stored(spec, tmp_path)[1].value == 0.1  # Optuna: a pruned trial's last value


class FakeMlflow:
    """The few MlflowClient calls the searcher makes, on in-memory runs."""

    def __init__(self, runs: dict[str, str]) -> None:
        self.runs = {
            key: SimpleNamespace(
                info=SimpleNamespace(run_id=f"id-{key}", status="RUNNING"),
                data=SimpleNamespace(tags={"ncstudy.trial_key": key}),
            )
            for key in runs
        }
        self.tags: dict[str, dict[str, str]] = {f"id-{k}": {} for k in runs}
        self.status: dict[str, str] = {f"id-{k}": s for k, s in runs.items()}

    def search_runs(self, experiment_ids: list[str], filter_string: str) -> list:
        key = filter_string.split("= '")[1].rstrip("'")
        return [self.runs[key]] if key in self.runs else []

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.tags[run_id][key] = value

    def set_terminated(self, run_id: str, status: str) -> None:
        self.status[run_id] = status


def test_stopped_trials_close_their_runs_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = grid_study([0.1, 0.5])
    env = {"tracking_uri": "sqlite:///unused", "experiment_id": "1"}
    s = searcher(spec, tmp_path, env)
    configs = {tid: s.suggest(tid) for tid in ("a", "b")}
    key = {
        tid: trial_of({"study": spec.model_dump(mode="json"), "loss_index": 1, **c}).key
        for tid, c in configs.items()
    }
    fake = FakeMlflow({key["a"]: "RUNNING", key["b"]: "RUNNING"})
    monkeypatch.setattr(srch.tracking, "client", lambda uri: fake)
    s.on_trial_complete("b", {"val/acc1": 0.2, "epoch": 3})  # pruned at epoch 3
    s.on_trial_complete("a", {"status": "finished", "val/acc1": 0.9, "epoch": 4})
    pruned, done = f"id-{key['b']}", f"id-{key['a']}"
    assert fake.status == {pruned: "KILLED", done: "FINISHED"}
    assert fake.tags[pruned] == {
        srch.STOPPED_AT_TAG: "3",
        "ncstudy.failure_reason": "pruned by asha at epoch 3",
    }
    assert fake.tags[done] == {}


def test_an_mlflow_outage_does_not_fail_the_stopped_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing the run is bookkeeping: if MLflow cannot be reached, the searcher still records
    the trial and raises nothing (Tune would retry the stopped trial); the study closes the
    run at its end."""
    from mlflow.exceptions import MlflowException

    spec = grid_study([0.1, 0.5])
    s = searcher(spec, tmp_path, {"tracking_uri": "sqlite:///unused", "experiment_id": "1"})
    s.suggest("a")

    def unreachable(uri: str) -> object:
        raise MlflowException("connection refused")

    monkeypatch.setattr(srch.tracking, "client", unreachable)
    s.on_trial_complete("a", {"val/acc1": 0.2, "epoch": 3})
    assert [t.state for t in stored(spec, tmp_path)] == [PRUNED]
    assert "closed at the end of the study" in caplog.text


def test_resume_without_tune_state_counts_outcomes_and_reruns_stale_trials(
    tmp_path: Path,
) -> None:
    """A resume that cannot restore Tune's state: COMPLETE, PRUNED and FAIL trials count as
    done; a trial the dead run left RUNNING is marked FAIL and its point runs again, so the
    grid ends with every point done exactly once and n_trials outcomes."""
    spec = grid_study([0.1, 0.2, 0.5], [0.1, 0.3])  # 6 grid points
    loss = spec.losses[1]
    first = searcher(spec, tmp_path)
    for tid in ("a", "b", "c", "d"):
        first.suggest(tid)
    first.on_trial_complete("a", {"status": "finished", "val/acc1": 0.5, "epoch": 4})
    first.on_trial_complete("b", {"val/acc1": 0.3, "epoch": 2})
    first.on_trial_complete("c", {"status": "failed", "epoch": 1})
    # the run dies here: "d" stays RUNNING in the storage
    assert srch.finished_optuna_trials(spec, loss, tmp_path) == 3
    left = n_trials(spec.search, loss) - 3

    second = searcher(spec, tmp_path)  # a new Tuner: stale trials are retired first
    trials = stored(spec, tmp_path)
    assert [t.state for t in trials] == [COMPLETE, PRUNED, FAIL, FAIL, WAITING]
    assert srch.finished_optuna_trials(spec, loss, tmp_path) == 3
    points = [second.suggest(f"r{i}")["point"] for i in range(left)]
    rerun = {f"point/{k}": v for k, v in points[0].items()}
    assert rerun == trials[3].params  # the lost point first
    for i in range(left):
        second.on_trial_complete(f"r{i}", {"status": "finished", "val/acc1": 0.4, "epoch": 4})
    trials = stored(spec, tmp_path)
    assert srch.finished_optuna_trials(spec, loss, tmp_path) == n_trials(spec.search, loss)
    assert trials[4].user_attrs[srch.RETRY_OF_ATTR] == 3
    outcomes = [t for t in trials if t.number != 3]  # all but the retired one
    assert len(outcomes) == 6 and all(t.state.is_finished() for t in outcomes)
    assert len({tuple(sorted(t.params.items())) for t in outcomes}) == 6  # the whole grid


def test_optuna_storage_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'shared' / 'optuna.db'}"
    (tmp_path / "shared").mkdir()
    monkeypatch.setenv(srch.STORAGE_ENV, url)
    spec = grid_study([0.1, 0.5])
    study_dir = tmp_path / "runs" / "s"
    s = searcher(spec, study_dir)
    s.suggest("a")
    s.on_trial_complete("a", {"status": "finished", "val/acc1": 0.7, "epoch": 4})
    assert srch.optuna_storage_url(study_dir) == url
    assert srch.dashboard_command(study_dir) == f"optuna-dashboard {url}"
    assert not (study_dir / "optuna.db").exists()
    name = srch.optuna_study_name(spec, spec.losses[1])
    assert optuna.load_study(study_name=name, storage=url).trials[0].value == 0.7
    assert srch.finished_optuna_trials(spec, spec.losses[1], study_dir) == 1

    monkeypatch.setenv(srch.STORAGE_ENV, "postgresql://ncstudy:s3cret@db.internal:5432/optuna")
    shown = srch.dashboard_command(study_dir)
    assert "s3cret" not in shown and "db.internal:5432/optuna" in shown
    monkeypatch.setenv(srch.STORAGE_ENV, "/shared/optuna.db")
    with pytest.raises(StudyError, match=srch.STORAGE_ENV):
        srch.optuna_storage_url(study_dir)


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
    states = [t.state for t in trials]
    assert set(states) == {COMPLETE, PRUNED}, states  # some trials finished, some were pruned

    mlf = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = mlf.get_experiment_by_name("opt")
    children = [
        r for r in mlf.search_runs([exp.experiment_id]) if r.data.tags["ncstudy.role"] == "trial"
    ]
    # one run per Optuna trial (an interrupted trial resumes its own run; a point sampled
    # twice is two runs, `-o<n>` keys), so exactly as many runs as trials
    runs = {int(r.data.tags["ncstudy.trial_key"].rsplit("-o", 1)[1]): r for r in children}
    assert len(children) == 5 and sorted(runs) == [t.number for t in trials]
    for trial in trials:
        run = runs[trial.number]
        epochs, _ = metric_series(mlf, run.info.run_id, "epoch")
        if trial.state == COMPLETE:
            assert run.info.status == "FINISHED"
            assert epochs == list(range(1, 13)) and srch.STOPPED_AT_TAG not in run.data.tags
            continue
        assert run.info.status == "KILLED"
        stop = int(run.data.tags[srch.STOPPED_AT_TAG])
        # ASHA (grace 2, reduction factor 2) decides at epochs 2, 4 and 8; the run logged
        # exactly the epochs it trained, and Optuna's last step is the same epoch
        assert stop in (2, 4, 8) and epochs == list(range(1, stop + 1))
        assert max(trial.intermediate_values) == stop
        assert run.data.tags["ncstudy.failure_reason"] == f"pruned by asha at epoch {stop}"
    # one trial at a time: every run was closed when its trial stopped, before the next began
    # (not at the end of the study)
    ordered = sorted(children, key=lambda r: r.info.start_time)
    for before, after in itertools.pairwise(ordered):
        assert before.info.end_time <= after.info.start_time, (before.info, after.info)
