"""The report on a fake MLflow store written with the real client: a partial study with finished,
failed, unfinished and never-started trials, with values chosen so that every expected table
cell follows from the inputs by hand (means, stds, the best temperature by validation, the
convergence steps)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from ncstudy import tracking
from ncstudy.config import expand, parse_study
from ncstudy.convergence_ref import REFERENCE_TAG, choose_reference, log_steps_to_ref
from ncstudy.report import load_study_data, write_report
from ncstudy.report.build import all_tables
from ncstudy.report.cli import main as report_main
from ncstudy.report.cli import resolve_target
from ncstudy.report.clock import fill_steps_to_ref
from ncstudy.report.markdown import markdown_table
from ncstudy.report.tables import MISSING

STUDY = {
    "name": "fake",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "train": {"epochs": 4, "warmup_epochs": 1},
    "losses": [{"name": "ce"}, {"name": "normface"}],
    "grid": {"temperature": [0.1, 0.5], "batch_size": [32, 64], "seed": [0, 1]},
    "evaluation": {"convergence": {"ewma_alpha": 1.0}},  # no smoothing: steps by hand
}
STEPS = [1, 2, 3, 4]
# (val, test) per trial; normface b32: tau 0.1 has the better validation accuracy, tau 0.5 the
# better test accuracy, so a selection by test would show up.
ACC = {
    "ce-b32-s0": (0.80, 0.78),
    "ce-b32-s1": (0.82, 0.76),
    "ce-b64-s0": (0.70, 0.90),
    "ce-b64-s1": (0.72, 0.92),
    "normface-t0.1-b32-s0": (0.90, 0.80),
    "normface-t0.1-b32-s1": (0.92, 0.84),
    "normface-t0.5-b32-s0": (0.85, 0.95),
    "normface-t0.5-b32-s1": (0.86, 0.97),
    "normface-t0.1-b64-s0": (0.60, 0.60),
    "normface-t0.1-b64-s1": (0.62, 0.62),
    # normface-t0.5-b64-s0: FAILED; normface-t0.5-b64-s1: RUNNING (never finished)
}
FAILED, RUNNING = "normface-t0.5-b64-s0", "normface-t0.5-b64-s1"
NOT_STARTED = {"ce-b64-s1"}  # listed in the study, no run at all
# erank_inter histories (target K-1 = 9 for digits): ce (the reference) converges to 8 and first
# reaches it at step 3; normface reaches |v - 9| <= 1 at step 2.
ERANK_CE = [4.0, 7.0, 8.0, 8.0]
ERANK_NF = [5.0, 8.5, 9.0, 9.0]


def _log_trial(mlf, exp_id: str, parent: str, trial) -> None:
    run_id = tracking.ensure_child_run(mlf, exp_id, parent, trial)
    erank = ERANK_CE if trial.loss == "ce" else ERANK_NF
    if trial.key == FAILED:
        tracking.log_metrics(mlf, run_id, {"train/loss": 1.0}, step=1)
        tracking.finish_run(mlf, run_id, "FAILED", "Traceback\nNonFiniteLoss: loss is nan at 2")
        return
    last = 2 if trial.key == RUNNING else len(STEPS)
    for step, e in zip(STEPS[:last], erank[:last], strict=True):
        nc = {"nc/erank_inter": e, "nc/nc1": 1.0 / step, "nc/mir": 0.9}
        tracking.log_metrics(mlf, run_id, {**nc, "val/acc1": 0.5, "test/acc1": 0.5}, step=step)
    if trial.key == RUNNING:
        return
    val, test = ACC[trial.key]
    summary = {"best/val_acc1": val, "final/val_acc1": val, "final/test_acc1": test}
    tracking.log_metrics(mlf, run_id, summary, step=last)
    tracking.finish_run(mlf, run_id, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("runs")
    spec = parse_study({**STUDY, "output_dir": str(out)})
    (out / "fake").mkdir()
    study_yaml = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    (out / "fake" / "study.yaml").write_text(study_yaml)
    uri = f"sqlite:///{out}/mlflow.db"
    mlf = tracking.client(uri)
    exp_id = tracking.ensure_experiment(mlf, "fake", out / "mlartifacts")
    parent = tracking.ensure_parent_run(mlf, exp_id, "fake", study_yaml)
    trials = expand(spec)
    for trial in trials:
        if trial.key not in NOT_STARTED:
            _log_trial(mlf, exp_id, parent, trial)
    log_steps_to_ref(mlf, exp_id, [t.key for t in trials], alpha=1.0)
    data = load_study_data("fake", uri, out / "fake" / "study.yaml")
    return SimpleNamespace(out=out, uri=uri, mlf=mlf, exp_id=exp_id, parent=parent, data=data)


def _tables(store: SimpleNamespace) -> dict:
    return {t.name: t for t in all_tables(store.data.trials)}


def test_every_expected_trial_is_a_row_with_its_status(store: SimpleNamespace) -> None:
    trials = store.data.trials.set_index("key")
    assert len(trials) == 12
    assert trials.loc[FAILED, "status"] == "FAILED"
    assert trials.loc[RUNNING, "status"] == "RUNNING"
    assert trials.loc["ce-b64-s1", "status"] == "NOT STARTED"
    assert trials.loc["ce-b32-s0", "final/test_acc1"] == pytest.approx(0.78)
    assert math.isnan(trials.loc["ce-b32-s0", "temperature"])
    assert trials.loc["normface-t0.5-b32-s0", "num_classes"] == 10


def test_failures_list_reasons(store: SimpleNamespace) -> None:
    failures = _tables(store)["failures"].display.set_index("trial")
    assert set(failures.index) == {FAILED, RUNNING, "ce-b64-s1"}
    assert failures.loc[FAILED, "reason"] == "NonFiniteLoss: loss is nan at 2"
    assert "never started" in failures.loc["ce-b64-s1", "reason"]


def test_accuracy_by_temperature_means_and_missing_cells(store: SimpleNamespace) -> None:
    table = _tables(store)["accuracy_temperature"]
    data = table.data.set_index(["loss", "batch size"])
    shown = table.display.set_index(["loss", "batch size"])
    # mean over the two seeds of the test accuracy
    assert data.loc[("normface", 32), "0.5"] == pytest.approx(96.0)
    assert data.loc[("normface", 32), "0.1"] == pytest.approx(82.0)
    # the best temperature by validation (0.1) is bold, not the best by test (0.5)
    assert shown.loc[("normface", 32), "0.1"] == "**82.00**"
    assert shown.loc[("normface", 32), "0.5"] == "96.00"
    # both b64 tau 0.5 trials failed or did not finish: missing; ce has no temperature: empty
    assert shown.loc[("normface", 64), "0.5"] == MISSING
    assert shown.loc[("ce", 32), "0.1"] == ""
    # ce b64: one finished seed of two
    assert data.loc[("ce", 64), "none"] == pytest.approx(90.0)
    assert shown.loc[("ce", 64), "none"] == "**90.00** (1/2 seeds)"


def test_best_temperature_is_chosen_by_validation(store: SimpleNamespace) -> None:
    table = _tables(store)["best_temperature"]
    data = table.data.set_index("loss")
    # normface: mean val 0.91 at (0.1, b32) beats 0.855 (0.5, b32) and 0.61 (0.1, b64)
    assert data.loc["normface", "digits"] == pytest.approx(82.0)
    assert data.loc["normface", "digits temperature"] == "0.1"
    assert data.loc["normface", "digits batch size"] == 32
    # ce: b32 mean val 0.81 beats b64 (0.70, one seed) although b64 tests better
    assert data.loc["ce", "digits"] == pytest.approx(77.0)


def test_seed_table_is_mean_and_sample_std(store: SimpleNamespace) -> None:
    table = _tables(store)["seeds"]
    data = table.data.set_index("loss")
    assert data.loc["normface", "digits mean"] == pytest.approx(82.0)
    assert data.loc["normface", "digits std"] == pytest.approx(np.std([80, 84], ddof=1))
    assert table.display.set_index("loss").loc["ce", "digits"] == "77.00 ± 1.41 (n=2)"


def test_nc_table_has_targets_and_final_values(store: SimpleNamespace) -> None:
    table = _tables(store)["nc_final"]
    data = table.data.set_index("loss")
    assert data.loc["perfect NC", "erank_inter"] == 9.0  # K - 1, digits has 10 classes
    assert data.loc["perfect NC", "nc1"] == 0.0
    assert math.isnan(data.loc["perfect NC", "mir"])  # no target under this definition
    assert data.loc["normface", "erank_inter"] == pytest.approx(ERANK_NF[-1])
    assert data.loc["normface", "nc1"] == pytest.approx(1.0 / STEPS[-1])
    assert table.display.set_index("loss").loc["normface", "erank_intra"] == MISSING


def test_steps_to_ref_against_the_hand_computed_steps(store: SimpleNamespace) -> None:
    runs = {
        r.data.tags.get(tracking.TRIAL_KEY_TAG): r for r in store.mlf.search_runs([store.exp_id])
    }
    nf = runs["normface-t0.1-b32-s1"]
    assert nf.data.tags[REFERENCE_TAG] == "ce-b32-s1"  # same seed and batch size
    assert nf.data.metrics["steps_to_ref/erank_inter"] == 2
    assert runs["ce-b32-s1"].data.metrics["steps_to_ref/erank_inter"] == 3
    # ce-b64-s1 never ran: the b64 seed-1 trials fall back to the same-seed ce trial (b32)
    assert runs["normface-t0.1-b64-s1"].data.tags[REFERENCE_TAG] == "ce-b32-s1"
    # unfinished and failed trials get nothing
    assert "steps_to_ref/erank_inter" not in runs[RUNNING].data.metrics
    assert REFERENCE_TAG not in runs[FAILED].data.tags
    conv = _tables(store)["convergence"].data.set_index(["part", "loss"])
    part2 = [p for p in conv.index.get_level_values(0) if p.startswith("(II)")][0]
    assert conv.loc[(part2, "normface"), "erank_inter %"] == pytest.approx(100 * 2 / 3)
    assert conv.loc[(part2, "ce"), "erank_inter %"] == pytest.approx(100.0)


def test_the_report_computes_steps_to_ref_a_partial_study_did_not_log(
    store: SimpleNamespace,
) -> None:
    """An interrupted study logs no steps_to_ref (the study logs them when it completes): the
    report computes them from the histories, with the same reference rule and clock."""
    logged = store.data.trials.set_index("key")
    columns = [c for c in logged.columns if c.startswith("steps_to_ref/")]
    assert "steps_to_ref/erank_inter" in columns
    partial = store.data.trials.drop(columns=columns).assign(reference=None, steps_to_ref_by=None)
    filled = fill_steps_to_ref(partial, store.data.histories).set_index("key")
    for key, row in logged.iterrows():
        if not isinstance(row["reference"], str):  # unfinished, failed, or no reference
            assert not isinstance(filled.loc[key, "reference"], str), key
            continue
        assert filled.loc[key, "reference"] == row["reference"]
        assert filled.loc[key, "steps_to_ref_by"] == "report"
        for c in columns:  # what log_steps_to_ref logged (NaN: never reached)
            assert filled.loc[key, c] == pytest.approx(row[c], nan_ok=True), (key, c)
    assert filled.loc["normface-t0.1-b32-s1", "steps_to_ref/erank_inter"] == 2  # by hand
    table = {t.name: t for t in all_tables(filled.reset_index())}["convergence"]
    conv = table.data.set_index(["part", "loss"])
    part2 = [p for p in conv.index.get_level_values(0) if p.startswith("(II)")][0]
    assert conv.loc[(part2, "normface"), "erank_inter %"] == pytest.approx(100 * 2 / 3)
    assert "computed by the report" in table.caption


def test_an_unreadable_study_yaml_is_a_visible_warning(
    store: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch
) -> None:
    bad = tmp_path / "study.yaml"
    bad.write_text(yaml.safe_dump({**STUDY, "grid": {"temperature": [-1.0]}}))
    data = load_study_data("fake", store.uri, bad)
    assert len(data.trials) == 11  # ce-b64-s1 never started and cannot be listed
    (warning,) = data.warnings
    assert "does not validate" in warning and "11 trials with an MLflow run" in warning
    report = write_report(data, tmp_path / "report", log_to_mlflow=False)
    assert warning in (tmp_path / "report" / "report.md").read_text()
    assert 'class="warning"' in report.index.read_text()
    # the command line says it on stderr too
    import ncstudy.report.load as load

    monkeypatch.setattr(load, "load_study_data", lambda *a, **k: data)
    out = tmp_path / "cli-report"
    assert report_main(["fake", "--output", str(store.out), "--out", str(out), "--no-mlflow"]) == 0
    assert f"warning: {warning}" in capsys.readouterr().err


def test_choose_reference_prefers_the_same_grid_point() -> None:
    def t(key: str, seed: int, batch: int, axes: dict | None = None) -> SimpleNamespace:
        return SimpleNamespace(key=key, seed=seed, batch_size=batch, axes=axes or {})

    refs = [t("ce-b32-s0", 0, 32), t("ce-b64-s0", 0, 64), t("ce-b64-s1", 1, 64)]
    assert choose_reference(t("x", 0, 64), refs).key == "ce-b64-s0"
    assert choose_reference(t("x", 1, 32), refs).key == "ce-b64-s1"
    assert choose_reference(t("x", 0, 64, {"train.lr": 1}), refs).key == "ce-b32-s0"
    assert choose_reference(t("x", 2, 32), refs) is None


def test_written_report_and_artifacts(store: SimpleNamespace, tmp_path: Path) -> None:
    report = write_report(store.data, tmp_path / "report")
    names = {p.name for p in report.files}
    assert {"index.html", "report.md", "best_temperature.csv", "convergence.md"} <= names
    for fig in report.figures:
        assert fig.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {f.name for f in report.figures} == {
        "heatmap_digits",
        "nc_curves_digits",
        "nc_by_temperature_digits_ce",  # two batch sizes
        "nc_by_temperature_digits_normface",  # two temperatures x two batch sizes
        "seeds_digits",
    }
    page = report.index.read_text()
    assert page.count("data:image/png;base64,") == len(report.figures)
    assert FAILED in page and "NonFiniteLoss" in page
    logged = store.mlf.list_artifacts(store.parent, "report/tables")
    assert "report/tables/best_temperature.csv" in {a.path for a in logged}


def test_markdown_escapes_pipes() -> None:
    import pandas as pd

    text = markdown_table(pd.DataFrame({"a": ["x|y"], "b": [None]}))
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y |  |"]


def test_cli_resolves_folder_name_and_refuses_a_missing_store(
    store: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    by_folder = resolve_target(str(store.out / "fake"))
    assert (by_folder.name, by_folder.output_dir) == ("fake", store.out.resolve())
    assert resolve_target("fake", str(store.out)).tracking_uri == by_folder.tracking_uri
    assert report_main(["fake", "--output", str(tmp_path / "nothing")]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "nothing" / "mlflow.db").exists()
    assert report_main(["nope", "--output", str(store.out)]) == 2
    assert "studies there: fake" in capsys.readouterr().err
