"""The report of a `search:` study: Optuna sampled its trials, so there is no grid to tabulate.
Per loss: the best trial, every trial with its sampled values (pruned ones as pruned), the
objective against each searched parameter, the optimisation history, the learning curves and
Optuna's parameter importances.

Everything builds from MLflow: each loss's trials become an in-memory Optuna study (Optuna's
own importance and plotting functions then apply). Where the study's Optuna storage can be
read (`<study>/optuna.db`, or NCSTUDY_OPTUNA_STORAGE), its trials' states, objective values and
per-epoch reports are used instead, matched to the MLflow runs by Optuna trial number.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from ncstudy.report.figures import DPI, FigureFile, slug
from ncstudy.report.nc_tables import nc_trials
from ncstudy.report.tables import MISSING, TEST, Table, failures, guarded, pct, unavailable

NUMBER = re.compile(r"-o(\d+)$")  # a search trial's key ends with its Optuna trial number
STATES = {"FINISHED": "COMPLETE", "FAILED": "FAIL", "RUNNING": "RUNNING"}
STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
PRUNED_COLOUR, COMPLETE_COLOUR = "#aaaaaa", "#1f77b4"


def trial_number(key: str) -> int | None:
    """The Optuna trial number in a search trial's key (`...-o12`), or None."""
    m = NUMBER.search(key)
    return int(m.group(1)) if m else None


def run_number(row: pd.Series) -> int | None:
    """A search trial's Optuna number: its run's `optuna.trial_number` tag, else its key's."""
    tagged = row.get("optuna_trial")
    if tagged is not None and not pd.isna(tagged):
        return int(tagged)
    return trial_number(row["key"])


def state_of(status: str, reason: object) -> str:
    """The Optuna state of a trial from its MLflow run: a KILLED run whose reason says it was
    pruned (tracking.finish_pruned) is PRUNED."""
    if status == "KILLED" and isinstance(reason, str) and reason.startswith("pruned"):
        return "PRUNED"
    return STATES.get(status, status)


def param_value(row: pd.Series, name: str) -> Any:
    """The value a trial used for a searched parameter (from its tags and axes params)."""
    if name == "temperature":
        return row["temperature"]
    if name == "batch_size":
        return row["batch_size"]
    value = row["axes"].get(name) if isinstance(row["axes"], dict) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def search_frame(trials: pd.DataFrame, spec: Any) -> pd.DataFrame:
    """One row per search trial: loss, Optuna number, state, each searched parameter, the
    objective (the last logged value of search.metric), test accuracy, the epoch it stopped."""
    space = list(spec.search.space)
    rows = []
    for _, r in trials.iterrows():
        row = {
            "key": r["key"],
            "loss": r["loss"],
            "number": run_number(r),
            "state": state_of(r["status"], r["reason"]),
            **{p: param_value(r, p) for p in space},
            "objective": r.get(spec.search.metric, np.nan),
            "test": r.get(TEST, np.nan),
        }
        rows.append(row)
    cols = ["key", "loss", "number", "state", *space, "objective", "test"]
    frame = pd.DataFrame(rows, columns=cols)
    return frame.sort_values(["loss", "number"], kind="stable").reset_index(drop=True)


def distributions(spec: Any, loss_frame: pd.DataFrame) -> dict[str, Any]:
    """Optuna distributions of the parameters this loss searched (a loss without a temperature
    has none for it)."""
    out = {}
    for name, dim in spec.search.space.items():
        values = loss_frame[name]
        if values.isna().all():
            continue
        if isinstance(dim, list):
            out[name] = CategoricalDistribution(dim)
        else:
            out[name] = FloatDistribution(dim.low, dim.high, log=dim.log)
    return out


def optuna_study(
    spec: Any, loss_frame: pd.DataFrame, histories: pd.DataFrame, stored: dict[int, Any]
) -> optuna.Study:
    """An in-memory Optuna study of one loss's trials, from MLflow (objective: the last value
    of search.metric; reports: its history), or from the stored Optuna trials where given."""
    direction = "maximize" if spec.search.mode == "max" else "minimize"
    study = optuna.create_study(direction=direction)
    dists = distributions(spec, loss_frame)
    metric = spec.search.metric
    for _, r in loss_frame.iterrows():
        params = {p: r[p] for p in dists}
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in params.values()):
            continue
        params = {p: _in(dists[p], v) for p, v in params.items()}
        ot = stored.get(r["number"])
        if ot is not None:
            state, value, reports = ot.state, ot.value, dict(ot.intermediate_values)
        else:
            state = TrialState[r["state"]] if r["state"] in TrialState.__members__ else None
            value = r["objective"] if np.isfinite(r["objective"]) else None
            h = histories[(histories.key == r["key"]) & (histories.metric == metric)]
            reports = {int(s): float(v) for s, v in zip(h["step"], h["value"], strict=True)}
        if state is None or state == TrialState.RUNNING:
            continue
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value if state == TrialState.COMPLETE else None,
                params=params,
                distributions=dists,
                intermediate_values=reports,
                user_attrs={"key": r["key"]},
            )
        )
    return study


def _in(dist: Any, value: Any) -> Any:
    """`value` as the distribution holds it (categorical choices keep their own type)."""
    if hasattr(dist, "choices"):
        for choice in dist.choices:
            if str(choice) == str(value) or (
                isinstance(choice, int | float) and float(choice) == float(value)
            ):
                return choice
    return float(value)


def stored_trials(storage: str | None, name: str) -> dict[int, Any]:
    """The Optuna trials of one loss's search in the study's storage, by number ({} if none)."""
    if storage is None:
        return {}
    try:
        ot = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return {}
    return {t.number: t for t in ot.get_trials(deepcopy=False)}


def studies_by_loss(data: Any) -> dict[str, optuna.Study]:
    """The in-memory Optuna study of each loss of a search study."""
    frame = search_frame(data.trials, data.spec)
    out = {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for loss in dict.fromkeys(frame["loss"]):
        stored = stored_trials(getattr(data, "optuna_storage", None), f"{data.name}-{loss}")
        out[loss] = optuna_study(data.spec, frame[frame.loss == loss], data.histories, stored)
    return out


def fmt(v: Any) -> str:
    """A sampled value with 4 significant digits (not Optuna's 17)."""
    if isinstance(v, float):
        return MISSING if math.isnan(v) else f"{v:.4g}"
    return MISSING if v is None else str(v)


def objective_text(spec: Any, v: float) -> str:
    """The objective as shown: accuracies in %, other metrics with 4 significant digits."""
    return pct(v) if "acc" in spec.search.metric else fmt(float(v))


def is_search(spec: Any) -> bool:
    """Whether the study is a `search:` study (its report is this view)."""
    return getattr(spec, "search", None) is not None


def search_tables(data: Any) -> list[Table]:
    """The tables of a search study (a StudyData): best trial per loss, every trial, failed
    trials (pruned ones are not failures), parameter importances, NC metrics of every trial."""
    trials, spec = data.trials, data.spec
    frame = search_frame(trials, spec)
    if frame.empty:
        reason = "no search trial has an MLflow run yet"
        return [unavailable("search_best", "Best trial per loss", reason)]
    pruned = set(frame.loc[frame.state == "PRUNED", "key"])
    parts = [
        ("search_best", "Best trial per loss", lambda: best_table(frame, spec)),
        ("search_trials", "Search trials", lambda: trials_table(frame, spec)),
        ("failures", "Failed and unfinished trials",
         lambda: failures(trials[~trials["key"].isin(pruned)])),
        ("search_importance", "Parameter importances",
         lambda: importance_table(studies_by_loss(data))),
        ("nc_trials", "NC metrics of every trial", lambda: nc_trials(trials)),
    ]  # fmt: skip
    return [t for name, title, build in parts for t in guarded(name, title, build)]


def best_table(frame: pd.DataFrame, spec: Any) -> Table:
    """Per loss: the complete trial with the best objective, and the loss's trial counts."""
    space = list(spec.search.space)
    better = spec.search.mode == "max"
    rows, shown = [], []
    for loss, part in frame.groupby("loss", sort=False):
        counts = part["state"].value_counts()
        seen = set(counts.index)
        order = [s for s in STATE_ORDER if s in seen] + sorted(seen - set(STATE_ORDER))
        tally = ", ".join(f"{counts[s]} {s.lower()}" for s in order)
        done = part[(part.state == "COMPLETE") & part["objective"].notna()]
        if done.empty:
            rows.append({"loss": loss, "trials": tally})
            shown.append({"loss": loss, "best trial": MISSING, "trials": tally})
            continue
        best = done.loc[done["objective"].idxmax() if better else done["objective"].idxmin()]
        row = {"loss": loss, "best trial": best["key"], **{p: best[p] for p in space}}
        row |= {"objective": best["objective"], "test acc1 %": 100 * best["test"]}
        rows.append({**row, "trials": tally})
        show = {"loss": loss, "best trial": best["key"], **{p: fmt(best[p]) for p in space}}
        show[spec.search.metric] = objective_text(spec, best["objective"])
        shown.append({**show, "test acc1 %": pct(best["test"]), "trials": tally})
    return Table(
        "search_best",
        "Best trial per loss",
        f"The complete trial with the best {spec.search.metric} ({spec.search.mode}imised by "
        f"the search, the last value logged; accuracies in %) per loss, its sampled values, its "
        f"test top-1 accuracy (%) and how the loss's trials ended ({spec.search.sampler} "
        f"sampler, {spec.search.pruner} pruner). Never chosen by test accuracy.",
        pd.DataFrame(rows),
        pd.DataFrame(shown),
    )


def trials_table(frame: pd.DataFrame, spec: Any) -> Table:
    """Every search trial with its state, sampled values, objective and test accuracy."""
    space = list(spec.search.space)
    data = frame.drop(columns=["key"]).rename(columns={"number": "optuna trial"})
    data.insert(0, "trial", frame["key"])
    shown = data.astype(object)
    for p in space:
        shown[p] = [fmt(v) for v in data[p]]
    shown["optuna trial"] = [fmt(v) if v is not None else MISSING for v in data["optuna trial"]]
    shown["objective"] = [objective_text(spec, v) for v in data["objective"]]
    shown["test"] = [pct(v) for v in data["test"]]
    shown = shown.rename(columns={"objective": spec.search.metric, "test": "test acc1 %"})
    return Table(
        "search_trials",
        "Search trials",
        f"Every trial of the search in Optuna's order per loss: its state (PRUNED: stopped by the "
        f"{spec.search.pruner} pruner, its {spec.search.metric} is the last value before it "
        f"stopped), the sampled values, {spec.search.metric} and test top-1 accuracy (%). "
        f"{MISSING}: not logged, or not searched for this loss.",
        data,
        shown,
    )


def importance_table(studies: dict[str, optuna.Study]) -> Table:
    """Optuna's parameter importances (fANOVA) per loss, or why there are none."""
    rows = []
    for loss, study in studies.items():
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) < 2 or len(study.best_trial.params) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study)
        rows += [{"loss": loss, "parameter": p, "importance": v} for p, v in imp.items()]
    if not rows:
        return unavailable(
            "search_importance",
            "Parameter importances",
            "no loss has two complete trials (Optuna's importances need them)",
        )
    data = pd.DataFrame(rows)
    shown = data.astype(object)
    shown["importance"] = [f"{v:.3f}" for v in data["importance"]]
    return Table(
        "search_importance",
        "Parameter importances",
        "Optuna's fANOVA importance of each searched parameter for the objective (complete "
        "trials only; normalised to sum to 1 per loss). With few trials these are rough.",
        data,
        shown,
    )


def _has_complete(study: optuna.Study, n: int = 1) -> bool:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= n


def search_figures(data: Any, out_dir: Path) -> list[FigureFile]:
    """Per loss: objective against each parameter, Optuna's optimisation history, learning
    curves (intermediate values) and parameter importances, where the trials allow them."""
    from optuna.visualization import matplotlib as om  # imports pyplot: only when drawing

    frame = search_frame(data.trials, data.spec)
    metric = data.spec.search.metric
    files: list[FigureFile] = []
    for loss, study in studies_by_loss(data).items():
        if len(study.trials) == 0:
            continue
        files.append(objective_vs_params(frame[frame.loss == loss], data.spec, loss, out_dir))
        plots = [
            (om.plot_optimization_history, "history", _has_complete(study),
             f"{loss}: optimisation history",
             f"{metric} of each complete trial in the order Optuna ran them, and the best so "
             "far (Optuna's plot_optimization_history)."),
            (om.plot_intermediate_values, "curves",
             any(t.intermediate_values for t in study.trials),
             f"{loss}: {metric} per epoch",
             f"{metric} at each epoch of every trial, as reported to the pruner; pruned trials "
             "end early (Optuna's plot_intermediate_values)."),
            (om.plot_param_importances, "importance",
             _has_complete(study, 2) and bool(study.best_trial.params),
             f"{loss}: parameter importances",
             "Optuna's fANOVA importance of each searched parameter for the objective "
             "(plot_param_importances)."),
        ]  # fmt: skip
        for plot, stem, possible, title, caption in plots:
            if possible:
                path = out_dir / f"search_{stem}_{slug(loss)}.png"
                ylabel = None if stem == "importance" else f"{metric} (as logged: 0-1 for accuracy)"
                files.append(_optuna_figure(plot, study, path, title, caption, ylabel))
    return files


def _optuna_figure(
    plot: Any, study: optuna.Study, path: Path, title: str, caption: str, ylabel: str | None
) -> FigureFile:
    """Save one of Optuna's matplotlib plots (they draw through pyplot: closed once saved)."""
    import matplotlib.pyplot as plt  # Optuna draws through pyplot; headless it picks Agg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = plot(study)
    first = ax.flat[0] if isinstance(ax, np.ndarray) else ax
    if ylabel is not None:
        first.set_ylabel(ylabel)
    fig = first.get_figure()
    fig.set_size_inches(6.4, 3.8)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return FigureFile(path.stem, title, caption, path)


def objective_vs_params(part: pd.DataFrame, spec: Any, loss: str, out_dir: Path) -> FigureFile:
    """The objective against each searched parameter: complete trials as dots, pruned ones as
    grey crosses at their last value before they stopped."""
    metric = spec.search.metric
    params = [p for p in spec.search.space if part[p].notna().any()]
    k = 100.0 if "acc" in metric else 1.0
    fig = Figure(figsize=(1 + 3.3 * max(1, len(params)), 3.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(params)), squeeze=False)[0]
    for ax, p in zip(axes, params, strict=False):
        for state, style in (
            ("COMPLETE", {"marker": "o", "color": COMPLETE_COLOUR}),
            ("PRUNED", {"marker": "x", "color": PRUNED_COLOUR}),
        ):
            sel = part[(part.state == state) & part["objective"].notna()]
            x = [str(v) for v in sel[p]] if isinstance(spec.search.space[p], list) else sel[p]
            ax.scatter(x, k * sel["objective"], label=state.lower(), s=22, **style)
        dim = spec.search.space[p]
        if not isinstance(dim, list) and dim.log:
            ax.set_xscale("log")
        ax.set_xlabel(p)
        ax.set_ylabel(metric + (" (%)" if k == 100 else ""))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{loss}: {metric} against each searched parameter")
    path = out_dir / f"search_params_{slug(loss)}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    caption = (
        f"{metric} (last logged value) of each trial against each sampled parameter; dots: "
        "complete trials, grey crosses: trials the pruner stopped (their value when stopped)."
    )
    return FigureFile(path.stem, f"{loss}: objective against parameters", caption, path)
