"""Reports of studies the first report could not draw: no validation split (the shipped
longtail_cifar has none), long-tailed or balanced training sets, no SCL loss; the NC curves
across temperatures; accuracy in %; tables that scroll. Fake MLflow stores written with the real
client; every expected value follows from what the test logs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from ncstudy import tracking
from ncstudy.config import expand, parse_study
from ncstudy.report import load_study_data, write_report
from ncstudy.report.build import all_tables
from ncstudy.report.cli import main as report_main
from ncstudy.report.figures import axis_figure, nc_by_axis
from ncstudy.report.tables import NO_VALIDATION, prepared

BASE = {
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "train": {"epochs": 3, "warmup_epochs": 1},
}
STEPS = (0, 1, 2, 3)
BALANCED_GROUPS = {"lt/many_classes": 10.0, "lt/medium_classes": 0.0, "lt/few_classes": 0.0}


def nc1(trial) -> list[float]:
    """A per-temperature nc1 history (the quickstart's: collapse weaker at a small tau)."""
    tau = trial.temperature or 1.0
    return [4.0 / (1 + s * tau) for s in STEPS]


def make_store(out: Path, study: dict, metrics: dict | None = None) -> SimpleNamespace:
    """A study folder and MLflow store with every trial FINISHED: nc1 and test/acc1 per step,
    final/test_acc1 = 0.5 + temperature / 10 (ce: 0.55), best/val_acc1 only with a val split,
    plus `metrics` (trial -> dict) at the last step."""
    spec = parse_study({**study, "output_dir": str(out)})
    folder = out / spec.name
    folder.mkdir(parents=True)
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    (folder / "study.yaml").write_text(text)
    uri = f"sqlite:///{out}/mlflow.db"
    mlf = tracking.client(uri)
    exp = tracking.ensure_experiment(mlf, spec.name, out / "mlartifacts")
    parent = tracking.ensure_parent_run(mlf, exp, spec.name, text)
    trials = expand(spec)
    for t in trials:
        run = tracking.ensure_child_run(mlf, exp, parent, t)
        test = 0.55 if t.temperature is None else 0.5 + t.temperature / 10
        for step, v in zip(STEPS, nc1(t), strict=True):
            tracking.log_metrics(mlf, run, {"nc/nc1": v, "test/acc1": test * step / 3}, step)
        last = {"final/test_acc1": test, **(metrics(t) if metrics else {})}
        if spec.dataset.val_fraction > 0:
            last["best/val_acc1"] = test
        tracking.log_metrics(mlf, run, last, STEPS[-1])
        tracking.finish_run(mlf, run, "FINISHED")
    data = load_study_data(spec.name, uri, folder / "study.yaml")
    return SimpleNamespace(out=out, folder=folder, spec=spec, trials=trials, data=data)


def tables_of(data) -> dict:
    return {t.name: t for t in all_tables(data.trials)}


@pytest.fixture(scope="module")
def no_val(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """val_fraction 0, normface at two temperatures, lt/ metrics of a balanced set logged (the
    worker logs them when the split leaves a few images more in some classes)."""
    study = {
        **BASE,
        "name": "noval",
        "dataset": {**BASE["dataset"], "val_fraction": 0},
        "losses": [{"name": "ce"}, {"name": "normface"}],
        "grid": {"temperature": [0.1, 1.0], "batch_size": [64], "seed": [0]},
    }
    return make_store(
        tmp_path_factory.mktemp("noval"),
        study,
        lambda t: {"lt/acc1": 0.5, "lt/many_acc1": 0.5, **BALANCED_GROUPS},
    )


def test_a_study_without_validation_reports_with_exit_0(
    no_val: SimpleNamespace, capsys: pytest.CaptureFixture
) -> None:
    assert report_main([str(no_val.folder), "--no-mlflow"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "note: Best temperature per loss (Table 1): not available because no trial" in err
    page = (no_val.folder / "report" / "index.html").read_text()
    assert "Traceback" not in page and "building it failed" not in page
    assert page.count("Not available because no trial logged a validation accuracy") == 4
    md = (no_val.folder / "report" / "report.md").read_text()
    assert "_Not available because no trial logged a validation accuracy" in md
    assert not (no_val.folder / "report" / "tables" / "best_temperature.csv").exists()


def test_tables_without_validation_say_why_and_keep_what_needs_no_choice(
    no_val: SimpleNamespace,
) -> None:
    tables = tables_of(no_val.data)
    for name in ("best_temperature", "seeds", "nc_final", "convergence"):
        assert tables[name].unavailable is not None, name
        assert tables[name].unavailable.startswith(NO_VALIDATION)
        assert "normface (digits) has several" in tables[name].unavailable
    # the per-configuration tables need no choice: every test accuracy is there
    acc = tables["accuracy_temperature"].data.set_index("loss")
    assert acc.loc["normface", "0.1"] == pytest.approx(51.0)
    assert acc.loc["normface", "1"] == pytest.approx(60.0)
    batch = tables["accuracy_batch"].display.set_index("loss")
    assert batch.loc["ce", "64"] == "55.00"  # one configuration: no choice needed
    assert batch.loc["normface", "64"] == "no val"  # two temperatures, nothing to choose by
    # balanced digits: the long-tail table is not shown although lt/ metrics were logged
    assert "longtail" not in tables
    assert "scl_classifiers" not in tables  # no SCL loss: no empty table


def test_a_longtail_study_without_validation_has_its_tables(tmp_path: Path) -> None:
    """As the shipped longtail_cifar: one configuration per loss, val_fraction 0, an
    imbalance ratio: every table at 'the best configuration' is the only one."""
    study = {
        **BASE,
        "name": "lt",
        "dataset": {**BASE["dataset"], "val_fraction": 0, "imbalance_ratio": 0.1},
        "losses": [{"name": "ce"}, {"name": "normface", "temperatures": [0.2]}],
        "grid": {"batch_size": [64], "seed": [0]},
    }
    lt = {"lt/acc1": 0.6, "lt/many_acc1": 0.8, "lt/medium_acc1": 0.5, "lt/few_acc1": 0.2}
    store = make_store(tmp_path, study, lambda t: {**lt, **BALANCED_GROUPS})
    tables = tables_of(store.data)
    assert all(t.unavailable is None for t in tables.values()), [
        (n, t.unavailable) for n, t in tables.items() if t.unavailable
    ]
    best = tables["best_temperature"].data.set_index("loss")
    assert best.loc["normface", "digits"] == pytest.approx(52.0)  # 0.5 + 0.2 / 10
    longtail = tables["longtail"].data.set_index("loss")
    assert longtail.loc["normface", "few"] == pytest.approx(0.2)
    assert longtail.loc["normface vs ce", "all"] == pytest.approx(0.0)


def test_longtail_is_decided_from_the_config_or_the_class_groups() -> None:
    from ncstudy.report.downstream_tables import longtailed

    frame = pd.DataFrame(
        {
            "imbalance_ratio": [0.01, np.nan, np.nan, 1.0],
            "lt/many_classes": [10, 10, 6, 10],
            "lt/medium_classes": [0, 0, 0, 0],
            "lt/few_classes": [0, 0, 4, 0],
        }
    )
    # asked for a long tail; balanced (one group); groups split without a ratio; ratio 1
    assert list(longtailed(frame)) == [True, False, True, False]


def test_scl_table_shown_only_with_scl_accuracies(no_val: SimpleNamespace) -> None:
    from ncstudy.report.tables import scl_classifiers

    assert scl_classifiers(no_val.data.trials) is None
    trials = no_val.data.trials.copy()
    trials["best/val_acc1"] = 0.5  # a validation split, so a configuration can be chosen
    trials["final/val_fp_acc1"] = 0.7
    trials["final/test_fp_acc1"] = 0.7
    table = scl_classifiers(trials)
    assert table is not None and set(table.data["classifier"]) == {"LP", "NLP", "FP"}


def test_nc_curves_across_temperatures(no_val: SimpleNamespace, tmp_path: Path) -> None:
    """The figure the quickstart's headline needs: one line per temperature, each the logged
    history; accuracy panels in %."""
    data = no_val.data
    files = nc_by_axis(data.trials, data.histories, tmp_path)
    assert [f.name for f in files] == ["nc_by_temperature_digits_normface"]  # ce: one config
    assert files[0].path.read_bytes()[:4] == b"\x89PNG"
    t = prepared(data.trials)
    sel = t[t.loss == "normface"]
    h = data.histories[data.histories.key.isin(sel["key"])]
    fig = axis_figure(sel, h, ["nc/nc1", "test/acc1"], [("0.1", 64), ("1", 64)])
    nc_ax, acc_ax = fig.axes[:2]
    by_tau = {line.get_label(): line for line in nc_ax.get_lines() if "τ" in line.get_label()}
    assert set(by_tau) == {"τ=0.1", "τ=1"}
    trial = {t.temperature: t for t in no_val.trials if t.loss == "normface"}
    for tau in (0.1, 1.0):
        line = by_tau[f"τ={tau:g}"]
        assert list(line.get_xdata()) == list(STEPS)
        assert np.allclose(line.get_ydata(), nc1(trial[tau]))
    acc = {line.get_label(): line.get_ydata() for line in acc_ax.get_lines()}
    assert np.allclose(acc["τ=1"], [100 * 0.6 * s / 3 for s in STEPS])  # in %, not 0-1
    assert acc_ax.get_title() == "test acc1 (%)"


def test_tables_scroll_and_the_metrics_page_ships(no_val: SimpleNamespace, tmp_path: Path) -> None:
    report = write_report(no_val.data, tmp_path / "r", log_to_mlflow=False)
    page = report.index.read_text()
    shown = [t for t in report.tables if t.unavailable is None]
    assert page.count('<div class="scroll"><table>') == len(shown)
    assert '<a href="metrics.md">' in page
    doc = (tmp_path / "r" / "metrics.md").read_text()
    assert doc.startswith("# The metrics ncstudy logs")
    for key in ("`nc1`", "`erank_inter`", "`mir`", "`best/val_acc1`", "`steps_to_95/<metric>`"):
        assert key in doc
