"""The figures of Jiang et al., "Generalized Neural Collapse for a Large Number of Classes"
(papers/002), drawn from MLflow alone, each where the study has what it needs:

- Figure 2: GNC1-3 and test accuracy against the temperature, with the optimal rho_ovr(d, K);
- Figure 3: rho_ovr (measured, optimal where known, Theorem 3.9's bounds) and train/test
  accuracy against the feature dimension d;
- Figure 4: the 2-D test features and classifier arrows of each d = 2 trial (its
  `features/test_2d.npz` artifact, ncstudy/feature_log.py);
- Figure 5: train and test accuracy against epochs, learned classifier vs CMF;
- Section 5's fine-tuning (CIFAR-10 -> STL-10): a table, ID and OOD accuracy per loss
  (ncstudy/report/paper002_finetune.py, listed with the report's tables).

Figures 2-3 only for a study with a trial in the K > d + 1 regime (the paper's subject). Each
caption puts what the paper shows at full scale beside what this run measured.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ncstudy.feature_log import FEATURES_DIR, FEATURES_FILE
from ncstudy.losses.codes import margin_bounds, optimal_margin
from ncstudy.report.figures import DPI, FigureFile, slug
from ncstudy.report.load import open_client

GNC = ("nc/gnc1", "nc/gnc2", "nc/gnc3")
LEARNED = ("normface", "ce")  # the learned-classifier losses Figure 5 compares CMF with


def figures(data: Any, out_dir: Path) -> list[FigureFile]:
    """Every paper-002 figure the study can draw (none for a study of other losses)."""
    trials = with_dims(data)
    if trials.empty:
        return []
    # Figures 2-3 are about K > d + 1: drawn for a study with such a trial (not for every grid)
    many = bool((trials["num_classes"] > trials["d"] + 1).any())
    return [
        *(temperature_figure(trials, out_dir) if many else []),
        *(dimension_figure(trials, out_dir) if many else []),
        *scatter_figures(data, trials, out_dir),
        *cmf_figure(trials, data.histories, out_dir),
    ]


def with_dims(data: Any) -> pd.DataFrame:
    """The finished trials with their feature dimension `d` (a grid axis, else the study's)."""
    t = data.trials
    t = t[t["status"] == "FINISHED"].copy()
    default = getattr(getattr(data.spec, "model", None), "feature_dim", None)
    dims = [axes.get("model.feature_dim", default) for axes in t["axes"]]
    t["d"] = pd.to_numeric(pd.Series(dims, index=t.index, dtype=object), errors="coerce")
    t["num_classes"] = pd.to_numeric(t["num_classes"], errors="coerce")
    return t[t["d"].notna() & t["num_classes"].notna()]


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series(np.nan, index=frame.index)


def _save(fig: Figure, path: Path, title: str, caption: str) -> FigureFile:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return FigureFile(path.stem, title, caption, path)


def optimum_text(d: int, k: int) -> str:
    """`rho* = 1.000` where the optimal margin is known, else Theorem 3.9's bracket."""
    best = optimal_margin(d, k)
    if best is not None:
        return f"optimal rho_ovr({d}, {k}) = {best:.3f}"
    lower, upper = margin_bounds(d, k)
    return f"optimal rho_ovr({d}, {k}) in [{lower:.3f}, {upper:.3f}] (Theorem 3.9)"


def temperature_figure(trials: pd.DataFrame, out_dir: Path) -> list[FigureFile]:
    """Figure 2: per loss and d with several temperatures, GNC1-3 and test accuracy vs tau."""
    files = []
    groups = trials[trials["temperature"].notna()].groupby(["loss", "d"], sort=False)
    for (loss, d), sel in groups:
        if sel["temperature"].nunique() < 2 or not any(m in sel for m in GNC):
            continue
        k = int(sel["num_classes"].iloc[0])
        mean = sel.groupby("temperature").agg({c: "mean" for c in (*GNC, "test/acc1") if c in sel})
        fig = Figure(figsize=(13, 2.8), layout="constrained")
        axes = fig.subplots(1, 4)
        for ax, col in zip(axes, (*GNC, "test/acc1"), strict=True):
            if col in mean:
                scale = 100.0 if col == "test/acc1" else 1.0
                ax.plot(mean.index, mean[col] * scale, marker="o", label="measured")
            if col == "nc/gnc2" and optimal_margin(int(d), k) is not None:
                ax.axhline(optimal_margin(int(d), k), ls="--", color="k", label="optimal")
                ax.legend(fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel("temperature tau")
            ax.set_title(col.removeprefix("nc/").upper().replace("TEST/ACC1", "test acc (%)"))
        fig.suptitle(f"GNC against temperature: {loss}, d = {int(d)}, K = {k}")
        best = mean["test/acc1"].idxmax() if "test/acc1" in mean else None
        caption = (
            "Paper (Figure 2; ResNet-18, CIFAR-100, d = 10, K = 100): GNC1 and GNC3 fall to 0 and "
            "GNC2 rises to the optimal one-vs-rest distance as tau decreases, and test accuracy "
            f"is highest at small tau. This run ({loss}, d = {int(d)}, K = {k}): "
            f"{optimum_text(int(d), k)}; measured GNC2 {_span(mean, 'nc/gnc2')}, GNC3 "
            f"{_span(mean, 'nc/gnc3')} over tau; best test accuracy at tau = {best}."
        )
        path = out_dir / f"gnc_temperature_{slug(f'{loss}_d{int(d)}')}.png"
        files.append(_save(fig, path, f"GNC against temperature ({loss}, d = {int(d)})", caption))
    return files


def _span(mean: pd.DataFrame, col: str) -> str:
    """`a (tau x) to b (tau y)`: the metric at the smallest and the largest temperature."""
    if col not in mean or mean[col].isna().all():
        return "not logged"
    values = mean[col].dropna()
    lo, hi = values.index.min(), values.index.max()
    return f"{values[lo]:.3f} at tau = {lo:g} to {values[hi]:.3f} at tau = {hi:g}"


def dimension_figure(trials: pd.DataFrame, out_dir: Path) -> list[FigureFile]:
    """Figure 3: per loss and temperature with several d, rho_ovr (measured, optimal, bounds)
    on the left axis and train/test accuracy on the right, against d."""
    files = []
    for (loss, tau), sel in trials.groupby(["loss", "temperature"], sort=False, dropna=False):
        if sel["d"].nunique() < 2:
            continue
        k = int(sel["num_classes"].iloc[0])
        mean = sel.groupby("d").agg({c: "mean" for c in ("nc/gnc2", "train/acc1", "test/acc1")
                                     if c in sel})  # fmt: skip
        dims = [int(d) for d in mean.index]
        bounds = np.array([margin_bounds(d, k) for d in dims])
        best = [optimal_margin(d, k) for d in dims]
        fig = Figure(figsize=(6.5, 4), layout="constrained")
        ax = fig.subplots()
        ax.plot(dims, bounds[:, 1], ls=":", color="grey", label="upper bound (Thm 3.9)")
        ax.plot(dims, bounds[:, 0], ls="--", color="grey", label="lower bound (Thm 3.9)")
        ax.plot(dims, [np.nan if b is None else b for b in best], "k-", label="optimal (known)")
        ax.plot(dims, _col(mean, "nc/gnc2"), "o-", label="measured rho_ovr (gnc2)")
        ax.set_xlabel("feature dimension d")
        ax.set_xticks(dims)
        ax.set_ylabel("one-vs-rest distance")
        right = ax.twinx()
        for col, style in (("train/acc1", "s--"), ("test/acc1", "^--")):
            right.plot(dims, 100 * _col(mean, col), style, color="tab:red", label=col)
        right.set_ylabel("accuracy (%)", color="tab:red")
        ax.legend(fontsize=7, loc="lower right")
        right.legend(fontsize=7, loc="upper left")
        fig.suptitle(f"rho_ovr and accuracy against d: {loss}, K = {k}")
        tests = ", ".join(
            f"d={d}: {100 * a:.1f}%" for d, a in zip(dims, _col(mean, "test/acc1"), strict=True)
        )
        caption = (
            "Paper (Figure 3; ResNet-50, ImageNet, K = 1000): the optimal distance and the test "
            "accuracy follow each other and both fall slowly (exponentially) as d decreases, "
            f"inside Theorem 3.9's bounds. This run ({loss}, K = {k}): test accuracy {tests}. "
            "Train accuracy is the running accuracy of the last epoch (augmented batches)."
        )
        path = out_dir / f"gnc_dimension_{slug(f'{loss}_tau{tau}')}.png"
        files.append(_save(fig, path, f"rho_ovr and accuracy against d ({loss})", caption))
    return files


def scatter_figures(data: Any, trials: pd.DataFrame, out_dir: Path) -> list[FigureFile]:
    """Figure 4: the 2-D test features (dots) and classifier rows (arrows) of the d = 2 trials,
    one panel per trial, test accuracy in the title."""
    sel = trials[(trials["d"] == 2) & trials["run_id"].notna()]
    panels = [(row, _features(data.tracking_uri, row["run_id"])) for _, row in sel.iterrows()]
    panels = [(row, arrays) for row, arrays in panels if arrays is not None]
    if not panels:
        return []
    fig = Figure(figsize=(3.2 * len(panels), 3.4), layout="constrained")
    accs = []
    for ax, (row, arrays) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        z = arrays["features"] / np.linalg.norm(arrays["features"], axis=1, keepdims=True).clip(
            1e-12
        )
        ax.scatter(z[:, 0], z[:, 1], c=arrays["labels"], cmap="tab10", s=4, vmin=0, vmax=9)
        for k, w in enumerate(arrays["weights"]):
            w = 1.2 * w / max(np.linalg.norm(w), 1e-12)
            ax.annotate("", (w[0], w[1]), (0, 0), arrowprops={"arrowstyle": "->", "color": f"C{k}"})
            ax.text(1.1 * w[0], 1.1 * w[1], str(k), fontsize=8)
        label = _trial_label(row)
        acc = 100 * row.get("test/acc1", np.nan)
        accs.append(f"{label}: {acc:.1f}%")
        ax.set_title(f"{label} ({acc:.1f}%)", fontsize=8)
        ax.set_aspect("equal")
        ax.set_xlim(-1.4, 1.4), ax.set_ylim(-1.4, 1.4)
    fig.suptitle("Normalised test features (dots, by class) and classifier rows (arrows)")
    caption = (
        "Paper (Figure 4; ResNet-18, d = 2, CIFAR-10 automobile/cat/dog/truck): the learned "
        "classifier puts cat and dog on neighbouring code points (5 of 5 trials); fixing the "
        "assignment with cat opposite dog gives 89.95% test accuracy against 91.90% and 92.13% "
        f"for the other two. This run (test accuracy): {'; '.join(accs)}."
    )
    return [_save(fig, out_dir / "gnc_features_2d.png", "2-D features and classifiers", caption)]


def _trial_label(row: pd.Series) -> str:
    extra = [f"{k.split('.')[-1]}={v}" for k, v in row["axes"].items() if k != "model.feature_dim"]
    tau = [] if pd.isna(row["temperature"]) else [f"tau={row['temperature']:g}"]
    return " ".join([str(row["loss"]), *tau, *extra])


def _features(tracking_uri: str, run_id: str) -> dict[str, np.ndarray] | None:
    """The run's `features/test_2d.npz` arrays, or None if it logged none."""
    mlf = open_client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlf.download_artifacts(run_id, f"{FEATURES_DIR}/{FEATURES_FILE}", tmp)
        except Exception:  # noqa: BLE001 - a run without the artifact (d != 2, older runs)
            return None
        with np.load(path) as arrays:
            return {k: arrays[k] for k in arrays.files}


def cmf_figure(trials: pd.DataFrame, histories: pd.DataFrame, out_dir: Path) -> list[FigureFile]:
    """Figure 5: train/test accuracy against epochs, learned classifier vs CMF, per d."""
    files = []
    for d, sel in trials.groupby("d"):
        cmf = sel[sel["loss"] == "cmf"]
        learned = sel[sel["loss"].isin(LEARNED)]
        if cmf.empty or learned.empty:
            continue
        taus = set(cmf["temperature"])  # compare at the temperatures CMF ran with
        learned = learned[learned["temperature"].isin(taus) | learned["temperature"].isna()]
        if learned.empty:  # no learned classifier at CMF's temperature: nothing to compare
            continue
        fig = Figure(figsize=(9, 3.2), layout="constrained")
        finals = []
        for ax, metric in zip(fig.subplots(1, 2), ("train/acc1", "test/acc1"), strict=True):
            for name, group in (("learned", learned), ("CMF", cmf)):
                h = histories[(histories.metric == metric) & histories.key.isin(group["key"])]
                if h.empty:
                    continue
                curve = h.groupby("step")["value"].mean() * 100
                ax.plot(curve.index, curve.values, marker=".", label=name)
                if metric == "test/acc1":
                    finals.append(f"{name} {curve.iloc[-1]:.1f}%")
            ax.set_xlabel("epoch")
            ax.set_title(metric.replace("/acc1", " accuracy (%)"))
            ax.legend(fontsize=8)
        fig.suptitle(f"Learned classifier vs CMF, d = {int(d)}")
        caption = (
            "Paper (Figure 5; ResNet-18 and other networks, CIFAR-100, d = 10): CMF reaches "
            "accuracy comparable to a learned classifier throughout training; when fine-tuning "
            "(CIFAR-10 -> STL-10) CMF gets 98.00% ID / 90.67% OOD against 97.00% / 87.42%. "
            f"This run (d = {int(d)}, final test accuracy, mean over seeds): {', '.join(finals)}."
        )
        path = out_dir / f"gnc_cmf_curves_d{int(d)}.png"
        files.append(_save(fig, path, f"Learned vs CMF classifier (d = {int(d)})", caption))
    return files
