"""The study driver without Ray: when a study counts as existing (marker or MLflow parent run),
what --resume accepts, concurrency and storage checks on stubbed cluster resources, how runs end
when the driver fails or receives SIGTERM, and the checkpoint loader. Ray is replaced by stubs;
MLflow is real (a SQLite store copied from one made per module)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ray
import torch
import yaml

from ncstudy import study as st
from ncstudy import tracking
from ncstudy.config import expand, parse_study
from ncstudy.context import LocalContext, load_state_file
from ncstudy.run import install_sigterm_handler, main


def spec(tmp_path: Path, **over: Any) -> dict:
    study = {
        "name": "t",
        "output_dir": str(tmp_path / "runs"),
        "losses": [{"name": "ce"}],
        "grid": {"batch_size": [64], "seed": [0]},
    }
    study.update(over)
    return study


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made (the slow part), copied by each test."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    tracking.client(f"sqlite:///{path}").search_experiments()
    return path


def store_in(out: Path, template: Path) -> Any:
    """A fresh copy of the empty store at `out/mlflow.db`, where a study in `out` logs."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, out / "mlflow.db")
    return tracking.client(tracking.default_tracking_uri(out))


def record_study(mlf: Any, raw: dict, artifacts: Path) -> tuple[str, str]:
    """What a started study leaves in MLflow: its experiment and parent run with the YAML."""
    study = parse_study(raw)
    experiment_id = tracking.ensure_experiment(mlf, study.name, artifacts)
    text = yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)
    return experiment_id, tracking.ensure_parent_run(mlf, experiment_id, study.name, text)


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch):
    """Ray replaced by a stub cluster: set `.resources` and `.nodes` in the test."""
    cluster = SimpleNamespace(resources={"CPU": 2.0}, nodes=1)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(cluster.resources))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}] * cluster.nodes)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("NCSTUDY_STORAGE_PATH", raising=False)
    monkeypatch.delenv("NCSTUDY_SHARED_FS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return cluster


# ------------------------------------------------------------------ when a study exists


def test_parent_run_in_the_store_makes_the_study_exist(
    tmp_path: Path, empty_store: Path, capsys: pytest.CaptureFixture
) -> None:
    """The study folder is gone (or is another one), the MLflow record is not: refused."""
    raw = spec(tmp_path)
    out = tmp_path / "runs"
    record_study(store_in(out, empty_store), raw, out / "mlartifacts")
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "MLflow store" in err and "--resume" in err
    assert not (out / "t").exists()  # no study folder written


def test_new_output_folder_sharing_the_store_is_refused(
    tmp_path: Path, empty_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A same-named study in a new folder, runs going to the same server/store: refused."""
    shared = tmp_path / "shared"
    mlf = store_in(shared, empty_store)
    record_study(mlf, spec(tmp_path), shared / "mlartifacts")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{shared / 'mlflow.db'}")
    other = parse_study(spec(tmp_path, output_dir=str(tmp_path / "new")))
    with pytest.raises(st.StudyError, match="already exists"):
        st.check_can_start(other, False, st.StudyPaths.of(other))
    assert not (tmp_path / "new").exists()


def test_existence_check_creates_no_store(tmp_path: Path, no_ray) -> None:
    """Asking whether a study exists never creates the local MLflow store."""
    study = parse_study(spec(tmp_path))
    st.check_can_start(study, False, st.StudyPaths.of(study))
    with pytest.raises(st.StudyError, match="no previous run"):
        st.check_can_start(study, True, st.StudyPaths.of(study))
    assert not (tmp_path / "runs").exists()


def test_marker_without_mlflow_record_cannot_resume(tmp_path: Path) -> None:
    """The folder says the study ran, the store does not know it: point at the right store."""
    study = parse_study(spec(tmp_path))
    study.study_dir.mkdir(parents=True)
    (study.study_dir / st.MARKER).write_text("name: t\n")
    with pytest.raises(st.StudyError, match="MLFLOW_TRACKING_URI"):
        st.check_can_start(study, True, st.StudyPaths.of(study))


# ------------------------------------------------------------------------ what --resume takes


def test_resume_refuses_an_edited_study_and_names_the_fields(
    tmp_path: Path, empty_store: Path
) -> None:
    raw = spec(tmp_path)
    out = tmp_path / "runs"
    record_study(store_in(out, empty_store), raw, out / "mlartifacts")
    edited = parse_study(
        spec(
            tmp_path,
            grid={"batch_size": [64, 128], "seed": [0]},
            resources={"max_concurrent_trials": 2},
        )
    )
    with pytest.raises(st.StudyError) as info:
        st.check_can_start(edited, True, st.StudyPaths.of(edited), expand(edited))
    message = str(info.value)
    assert "grid.batch_size: [64] -> [64, 128]" in message
    assert "resources.max_concurrent_trials: null -> 2" in message
    assert "only description and output_dir may change" in message
    # where it is written and what it says about itself may change
    same = parse_study(spec(tmp_path, description="second try"))
    st.check_can_start(same, True, st.StudyPaths.of(same), expand(same))


def test_resume_refuses_runs_made_from_another_configuration(
    tmp_path: Path, empty_store: Path
) -> None:
    """Same key, different config hash (e.g. another ncstudy version's defaults): never reused,
    neither by the driver's check nor by a trial process that looks its run up."""
    raw = spec(tmp_path)
    out = tmp_path / "runs"
    mlf = store_in(out, empty_store)
    experiment_id, parent_id = record_study(mlf, raw, out / "mlartifacts")
    study = parse_study(raw)
    (trial,) = expand(study)
    run_id = tracking.ensure_child_run(mlf, experiment_id, parent_id, trial)
    assert tracking.ensure_child_run(mlf, experiment_id, parent_id, trial) == run_id
    mlf.set_tag(run_id, "config_hash", "0123456789ab")
    with pytest.raises(st.StudyError, match="another configuration"):
        st.check_can_start(study, True, st.StudyPaths.of(study), [trial])
    with pytest.raises(tracking.ConfigMismatch, match="never reused"):
        tracking.ensure_child_run(mlf, experiment_id, parent_id, trial)


# ------------------------------------------------------------- concurrency and storage


def test_grid_that_does_not_fit_is_refused_before_anything_is_written(
    tmp_path: Path, no_ray
) -> None:
    """4 workers x 1 CPU on a 2-CPU local Ray: exit-2 error, no marker, no MLflow store."""
    study = parse_study(spec(tmp_path, resources={"workers_per_trial": 4, "cpus_per_worker": 1}))
    with pytest.raises(st.StudyError, match="this machine's Ray has"):
        st.run_study(study)
    assert not (tmp_path / "runs").exists()
    # and a rerun is not told to --resume
    with pytest.raises(st.StudyError, match="this machine's Ray has"):
        st.run_study(study)


def test_autoscaling_cluster_uses_the_yaml_cap(tmp_path: Path, no_ray, monkeypatch) -> None:
    """The shipped clusters: a 0-CPU head alone, GPU workers at zero. With the YAML's cap the
    study starts (the autoscaler adds GPU nodes); without it, a clear error, nothing written."""
    no_ray.resources = {"CPU": 0.0, "memory": 1e10}
    gpu = {"workers_per_trial": 1, "cpus_per_worker": 4, "gpus_per_worker": 1}
    study = parse_study(spec(tmp_path, resources=gpu))
    with pytest.raises(st.StudyError, match="set resources.max_concurrent_trials"):
        st.run_study(study, address="auto", storage_path="s3://bucket/ncstudy")
    assert not (tmp_path / "runs").exists()

    capped = parse_study(spec(tmp_path, resources={**gpu, "max_concurrent_trials": 6}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    paths = st.StudyPaths.of(capped, "s3://bucket/ncstudy")
    assert st._check_cluster(capped, paths, expand(capped), existing_cluster=True) == 6
    # once GPU nodes are up and no cap is set: what fits now (2 GPUs -> 2 trials)
    no_ray.resources = {"CPU": 16.0, "GPU": 2.0}
    assert st._check_cluster(study, paths, expand(study), existing_cluster=True) == 2


def test_existing_cluster_needs_shared_storage_and_mlflow(
    tmp_path: Path, no_ray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connected to a cluster that has one node now: local results or a local MLflow file are
    refused all the same (nodes that join later have their own disks)."""
    study = parse_study(spec(tmp_path, resources={"max_concurrent_trials": 2}))
    with pytest.raises(st.StudyError, match="existing Ray cluster"):
        st.run_study(study, address="10.0.0.1:6379")
    with pytest.raises(st.StudyError, match="MLFLOW_TRACKING_URI"):
        st.run_study(study, address="10.0.0.1:6379", storage_path="gs://bucket/x")
    assert not (tmp_path / "runs").exists()
    monkeypatch.setenv("NCSTUDY_SHARED_FS", "1")  # an NFS mount every node has
    paths = st.StudyPaths.of(study)
    assert st._check_cluster(study, paths, expand(study), existing_cluster=True) == 2


# ------------------------------------------------------ how runs end: crash and SIGTERM


def _child_then(action):
    """A stand-in for the grid run: opens the trial's child run (as a trial process would),
    then does `action`."""

    def run_grid(study, trials, env, paths, resume, mlf, experiment_id, tune_status, n):
        tracking.ensure_child_run(mlf, experiment_id, env["parent_run_id"], trials[0])
        action()
        return False

    return run_grid


def _runs(out: Path) -> tuple[Any, Any]:
    mlf = tracking.client(tracking.default_tracking_uri(out))
    exp = mlf.get_experiment_by_name("t")
    runs = mlf.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags[tracking.ROLE_TAG] == "study")
    child = next(r for r in runs if r.data.tags[tracking.ROLE_TAG] == "trial")
    return parent, child


def test_driver_error_ends_the_parent_run_failed(
    tmp_path: Path, empty_store: Path, no_ray, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "runs"
    store_in(out, empty_store)

    def boom() -> None:
        raise RuntimeError("scheduler exploded")

    monkeypatch.setattr(st, "_run_grid", _child_then(boom))
    with pytest.raises(RuntimeError, match="scheduler exploded"):
        st.run_study(parse_study(spec(tmp_path)))
    parent, child = _runs(out)
    assert parent.info.status == "FAILED" and child.info.status == "FAILED"
    assert "RuntimeError: scheduler exploded" in parent.data.tags[tracking.REASON_TAG]
    assert "study driver failed" in child.data.tags[tracking.REASON_TAG]


def test_sigterm_stops_the_study_like_ctrl_c(
    tmp_path: Path, empty_store: Path, no_ray, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """SIGTERM through the CLI: runs KILLED (not FAILED, not left RUNNING), exit 143, and the
    study resumes."""
    out = tmp_path / "runs"
    store_in(out, empty_store)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec(tmp_path)))
    monkeypatch.setattr(st, "_run_grid", _child_then(lambda: os.kill(os.getpid(), signal.SIGTERM)))
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    # Python's own Ctrl-C, whatever an earlier in-process Tune run of this pytest left behind
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main([str(path)]) == 143
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    assert "--resume" in capsys.readouterr().err
    parent, child = _runs(out)
    assert (parent.info.status, child.info.status) == ("KILLED", "KILLED")
    assert child.data.tags[tracking.REASON_TAG] == "study interrupted"
    study = parse_study(spec(tmp_path))
    st.check_can_start(study, True, st.StudyPaths.of(study), expand(study))  # resumable


def test_tune_s_sigint_handler_lives_only_while_its_run_runs() -> None:
    """Tune installs a SIGINT handler in fit() and keeps it after a normal end; a later Ctrl-C
    or SIGTERM must reach the CLI's handler, not a finished run's (which would swallow it)."""

    class Tuner:
        def fit(self) -> None:
            signal.signal(signal.SIGINT, lambda *a: None)  # what Tune's fit() leaves behind

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        st._fit(Tuner())
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_handler_survives_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """ray.init installs its own SIGTERM handler (an exit that skips cleanup); the CLI's is
    put back, and it raises KeyboardInterrupt outside a Tune run."""

    def fake_init(**kwargs: Any) -> None:
        signal.signal(signal.SIGTERM, lambda *a: os._exit(15))

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        install_sigterm_handler()
        ours = signal.getsignal(signal.SIGTERM)
        st._start_ray(None, {"num_cpus": 1})
        assert signal.getsignal(signal.SIGTERM) is ours
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts the sleep
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_crashed_search_trial_is_not_called_pruned(tmp_path: Path, empty_store: Path) -> None:
    """A RUNNING run whose Tune trial ended in ERROR died; only TERMINATED ones were pruned."""
    out = tmp_path / "runs"
    mlf = store_in(out, empty_store)
    experiment_id, parent_id = record_study(mlf, spec(tmp_path), out / "mlartifacts")
    ids = {}
    for key in ("crashed", "pruned"):
        run = mlf.create_run(
            experiment_id, run_name=key, tags={tracking.TRIAL_KEY_TAG: key, "ncstudy.role": "trial"}
        )
        ids[key] = run.info.run_id
    search = SimpleNamespace(pruner="asha")
    status = {"crashed": "ERROR", "pruned": "TERMINATED"}
    st._close_open_runs(mlf, experiment_id, None, False, search, status)
    crashed, pruned = (mlf.get_run(ids[k]) for k in ("crashed", "pruned"))
    assert crashed.info.status == "FAILED" and pruned.info.status == "KILLED"
    assert pruned.data.tags[tracking.REASON_TAG].startswith("pruned by asha")


# ----------------------------------------------------------------- checkpoints, git commit


def test_checkpoints_load_tensors_only(tmp_path: Path) -> None:
    """State dicts round-trip; a pickled object (code on load) is refused."""
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "history": {"nc1": [(1, 0.5)]}}
    ctx = LocalContext(tmp_path)
    ctx.report({"epoch": 2}, state=state)
    loaded = ctx.load_state()
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["history"] == {"nc1": [(1, 0.5)]} and loaded["epoch"] == 2
    torch.save({"x": SimpleNamespace(a=1)}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="weights_only"):
        load_state_file(tmp_path / "evil.pt")


def test_git_commit_comes_from_the_environment_in_an_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(tracking.GIT_COMMIT_ENV, "abc123")
    tracking.git_commit.cache_clear()
    try:
        assert tracking.git_commit() == "abc123"
    finally:
        tracking.git_commit.cache_clear()
