"""The figures of Yaras et al. 2022 ("Neural Collapse with Normalized Features"), drawn from
MLflow alone for the studies that have their shape (studies/paper003_*.yaml): Table 1 and Figure
1 (UFM, d = 2: with and without normalisation, the 2-D picture), Figure 3 (spherical UFM loss
against K and against tau with Theorem 1's line), Figure 4 (NC metrics and training accuracy
against the network's width) and Figures 5-6 (normalised vs penalised features: training
accuracy and NC1 against iterations or epochs, mean over seeds with the spread shaded).
Each caption says what the paper shows at full scale beside what this run measured."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ncstudy.report.figures import DPI, FigureFile
from ncstudy.report.load import open_client

PAPER = "Yaras et al. 2022"
FINISHED = "FINISHED"


def figures(data: Any, out_dir: Path) -> list[FigureFile]:
    """Every paper-003 figure this study has the shape for (none for other studies)."""
    spec = data.spec
    if spec is None:
        return []
    done = data.trials[data.trials.status == FINISHED]
    if done.empty:
        return []
    out: list[FigureFile] = []
    if spec.ufm is not None:
        if spec.ufm.d == 2 and "ufm.d" not in spec.grid.axes and len(set(done.loss)) == 2:
            out += table1_figure1(data, done, out_dir)
        if "ufm.K" in spec.grid.axes and len(spec.grid.temperature) > 1:
            out.append(figure3(done, spec, out_dir))
        if spec.ufm.d > 2 and _formulations(spec) == {"spherical", "regularized"}:
            out.append(learning_curves(done, data.histories, out_dir, "iteration", "figure5"))
    else:
        if "model.width" in spec.grid.axes:
            out.append(figure4(done, out_dir))
        if any(loss.train.get("feature_decay") for loss in spec.losses):
            out.append(learning_curves(done, data.histories, out_dir, "epoch", "figure6"))
    return out


def _formulations(spec: Any) -> set[str]:
    """The UFM variants the study's losses run in (a loss's own `ufm:` over the study's)."""
    return {loss.ufm.get("variant", spec.ufm.variant) for loss in spec.losses}


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def normface_bound(k: int, temperature: float) -> float:
    """Theorem 1: log(1 + (K-1) exp(-K tau/(K-1))) with the paper's tau = 1/temperature."""
    return math.log1p((k - 1) * math.exp(-k / ((k - 1) * temperature)))


def _mean_std(values: pd.Series, scale: float = 1.0) -> str:
    v = scale * values.astype(float)
    return f"{v.mean():.2f} ± {v.std(ddof=0):.2f}"


def table1_figure1(data: Any, done: pd.DataFrame, out_dir: Path) -> list[FigureFile]:
    """Table 1 (mean ± std over trials of the final loss and training accuracy) and Figure 1
    (the final 2-D features and classifier rows of the first seed, per formulation)."""
    order = sorted(set(done.loss), key=lambda x: x != "ce")  # (a) no normalisation first
    rows = []
    for loss in order:
        lt = done[done.loss == loss]
        name = "Normalization" if loss != "ce" else "No Normalization"
        rows.append((name, _mean_std(lt["train/loss"]), _mean_std(lt["train/acc1"], 100), len(lt)))
    table = "; ".join(f"{n}: loss {a}, accuracy {b} % ({c} trials)" for n, a, b, c in rows)
    fig = Figure(figsize=(9, 4.6), layout="constrained")
    axes = fig.subplots(1, len(order))
    for ax, loss, label in zip(axes, order, "ab", strict=False):
        key = done[done.loss == loss].sort_values("seed").iloc[0]
        _draw_plane(ax, _geometry(data.tracking_uri, key["run_id"]), loss != "ce")
        ax.set_title(f"({label}) {'normalised' if loss != 'ce' else 'no normalisation'} ({loss})")
    path = _save(fig, out_dir / "paper003_figure1.png")
    caption = (
        f"{PAPER}, Table 1 and Figure 1 (UFM, d = 2, K = 100, n = 5, 10 trials): no "
        "normalisation 1.63 ± 0.03 CE loss and 49.9 % ± 2.39 % training accuracy; "
        "normalisation 3.84 ± 0.00 and 100.0 % ± 0.00 %, the features spread uniformly over "
        f"the circle. This run: {table}. Pictures: the first seed's final features (dots, "
        "coloured by class) and classifier rows (lines from the origin)."
    )
    return [FigureFile(path.stem, "Paper 003: Table 1 and Figure 1", caption, path)]


def _geometry(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """The run's `ufm/geometry.json` (features, labels, weights)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = open_client(tracking_uri).download_artifacts(run_id, "ufm/geometry.json", tmp)
        return json.loads(Path(local).read_text())


def _draw_plane(ax: Any, geo: dict[str, Any], normalised: bool) -> None:
    """Features as dots coloured by class, classifier rows as segments (scaled as the paper's
    panel (b): features on the unit circle, weights drawn at radius 1.3)."""
    h, y = np.asarray(geo["features"]), np.asarray(geo["labels"])
    ax.scatter(h[:, 0], h[:, 1], c=y, cmap="hsv", s=8, zorder=2)
    if geo["weights"] is not None:
        w = np.asarray(geo["weights"])
        if normalised:
            w = 1.3 * w / np.linalg.norm(w, axis=1, keepdims=True)
        for k, row in enumerate(w):
            color = _hsv(k, len(w))
            ax.plot([0, row[0]], [0, row[1]], color=color, lw=0.6, zorder=1)
    ax.set_aspect("equal")


def _hsv(k: int, n: int) -> Any:
    from matplotlib import colormaps  # the colour map of the scatter, per class

    return colormaps["hsv"](k / max(1, n - 1))


def figure3(done: pd.DataFrame, spec: Any, out_dir: Path) -> FigureFile:
    """Final loss against K (at the temperature nearest 1) and against the paper's tau (at
    the K nearest 10), dots for the runs and Theorem 1's line."""
    t = done.assign(K=[int(a["ufm.K"]) for a in done["axes"]], temp=done.temperature.astype(float))
    t1 = min(set(t["temp"]), key=lambda v: abs(math.log(v)))
    k10 = min(set(t["K"]), key=lambda v: abs(v - 10))
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    by_k = t[t["temp"] == t1].groupby("K")["train/loss"].mean()
    ks = np.arange(2, max(by_k.index) + 1)
    left.plot(ks, [normface_bound(k, t1) for k in ks], color="grey", label="Theorem 1")
    left.plot(by_k.index, by_k.values, "o", label="this run")
    left.set(xlabel="number of classes K", ylabel="final CE loss", title=f"τ = {1 / t1:g}")
    by_tau = t[t["K"] == k10].groupby("temp")["train/loss"].mean()
    taus = np.linspace(min(1 / by_tau.index), max(1 / by_tau.index), 100)
    right.plot(taus, [normface_bound(k10, 1 / x) for x in taus], color="grey", label="Theorem 1")
    right.plot(1 / by_tau.index, by_tau.values, "o", label="this run")
    right.set(xlabel="τ (the paper's: logits × τ)", ylabel="final CE loss", title=f"K = {k10}")
    left.legend()
    gaps = [abs(r["train/loss"] - normface_bound(r["K"], r["temp"])) for _, r in t.iterrows()]
    path = _save(fig, out_dir / "paper003_figure3.png")
    caption = (
        f"{PAPER}, Figure 3 (d = 100, n = 5): gradient descent from random starts reaches "
        "Theorem 1's minimum log(1 + (K-1) exp(-Kτ/(K-1))) for every K and τ, the same in "
        f"every trial. This run (d = {spec.ufm.d}): {len(t)} trials, largest |loss - bound| "
        f"{max(gaps):.2e}. The paper's τ multiplies the logits: τ = 1/temperature."
    )
    return FigureFile(path.stem, "Paper 003: Figure 3", caption, path)


def figure4(done: pd.DataFrame, out_dir: Path) -> FigureFile:
    """NC1, NC2, NC3 (uncentred, the paper's form) and training accuracy against width."""
    t = done.assign(width=[int(a["model.width"]) for a in done["axes"]]).sort_values("width")
    panels = [
        ("nc/nc1", "NC1"),
        ("nc/nc2_uncentred_means", "NC2 (uncentred)"),
        ("nc/nc3_uncentred", "NC3 (uncentred)"),
        ("train/acc1", "training accuracy %"),
    ]
    fig = Figure(figsize=(12, 3.0), layout="constrained")
    axes = fig.subplots(1, len(panels))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        if metric in t:
            g = t.groupby("width")[metric].mean() * (100 if metric == "train/acc1" else 1)
            ax.plot(g.index, g.values, "o-")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="width (first conv's channels)", title=title)
    path = _save(fig, out_dir / "paper003_figure4.png")
    acc = t.groupby("width")["train/acc1"].mean() * 100 if "train/acc1" in t else pd.Series()
    measured = ", ".join(f"width {w}: {a:.1f} %" for w, a in acc.items())
    caption = (
        f"{PAPER}, Figure 4 (ResNet-18 on CIFAR-10, n = 200, random labels, 200 epochs): the "
        "wider networks reach 100 % training accuracy on random labels and every NC metric "
        f"falls with width. This run's final training accuracy: {measured}."
    )
    return FigureFile(path.stem, "Paper 003: Figure 4", caption, path)


def learning_curves(
    done: pd.DataFrame, histories: pd.DataFrame, out_dir: Path, step: str, name: str
) -> FigureFile:
    """Training accuracy and NC1 against iterations (UFM) or epochs, per loss and setting:
    mean over seeds, min-max spread shaded (Figures 5 and 6)."""
    panels = [("train/acc1", "training accuracy %", 100.0), ("nc/nc1", "NC1", 1.0)]
    settings = list(dict.fromkeys(done.setting))
    fig = Figure(figsize=(8, 3.0 * len(settings)), layout="constrained")
    axes = fig.subplots(len(settings), 2, squeeze=False)
    reached: list[str] = []
    final_nc1: list[str] = []
    for row, setting in zip(axes, settings, strict=True):
        sel = done[done.setting == setting]
        for ax, (metric, title, scale) in zip(row, panels, strict=True):
            for loss in dict.fromkeys(sel.loss):
                keys = list(sel.loc[sel.loss == loss, "key"])
                h = histories[(histories.metric == metric) & histories.key.isin(keys)]
                if h.empty:
                    continue
                wide = h.pivot_table(index="step", columns="key", values="value") * scale
                (line,) = ax.plot(wide.index, wide.mean(axis=1), label=loss)
                ax.fill_between(
                    wide.index,
                    wide.min(axis=1),
                    wide.max(axis=1),
                    alpha=0.25,
                    color=line.get_color(),
                )
                where = f" ({setting})" if len(settings) > 1 else ""  # UFM: one setting
                if metric == "train/acc1":
                    reached.append(_first_full(wide.mean(axis=1), loss + where))
                else:
                    final_nc1.append(f"{loss}{where} {wide.mean(axis=1).iloc[-1]:.3g}")
            ax.set(xlabel=step, title=title if len(settings) == 1 else f"{title} ({setting})")
            if metric == "nc/nc1":
                ax.set_yscale("log")
        row[0].legend()
    path = _save(fig, out_dir / f"paper003_{name}.png")
    return FigureFile(
        path.stem, f"Paper 003: Figure {name[-1]}", _curve_caption(name, reached, final_nc1), path
    )


def _first_full(mean_acc: pd.Series, label: str) -> str:
    """`label: 100 % at step s` or its final mean accuracy."""
    full = mean_acc[mean_acc >= 99.999]
    if len(full):
        return f"{label}: 100 % at step {int(full.index[0])}"
    return f"{label}: {mean_acc.iloc[-1]:.1f} % at the end"


def _curve_caption(name: str, reached: list[str], final_nc1: list[str]) -> str:
    paper = {
        "figure5": f"{PAPER}, Figure 5 (UFM, K = 100, n = 30, 10 trials of gradient descent): "
        "normalised features reach 100 % training accuracy and a smaller NC1 sooner than "
        "penalised ones.",
        "figure6": f"{PAPER}, Figure 6 (CIFAR-100, n = 30, 100 epochs): with normalisation "
        "ResNet-18 fits the training set 10-20 epochs sooner and ResNet-50 exceeds 90 % "
        "training accuracy where the penalised one trains slowly; NC1 is smaller.",
    }[name]
    nc1 = f"; NC1 at the end: {', '.join(final_nc1)}" if final_nc1 else ""
    return f"{paper} This run (mean over seeds, min-max shaded): {'; '.join(reached)}{nc1}."
