"""The figures of "Are All Losses Created Equal" (Zhou et al. 2022), drawn from MLflow alone
(a StudyData): NC1-NC3 against epochs per loss (its Figure 1), training / validation / test
accuracy against epochs (Figure 2), the width x epochs heat map of test accuracy per loss
(Figure 3), and the regularised UFM's objective against iterations with Theorem 1's optimum.

Network figures appear for studies that log `test/acc1_at_best_val` (evaluation.
test_at_best_val, the paper's model selection); the UFM figure for regularised UFM studies
(`ufm/theory_objective`). Curves are means over seeds. Each caption puts what the paper reports
at full scale beside what this run measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ncstudy.recipe import TEST_AT_BEST_VAL
from ncstudy.report.figures import CMAP, FigureFile, _save
from ncstudy.report.tables import finished

NC_PANELS = (
    ("nc/nc1", "NC1"),
    ("nc/nc2_zhou", "NC2 (paper 004)"),
    ("nc/nc3_zhou", "NC3 (paper 004)"),
)
ACC_PANELS = (("train/acc1", "training"), ("val/acc1", "validation"), ("test/acc1", "test"))
WIDTH, EPOCHS = "model.width", "train.epochs"
PAPER_SETUP = "the paper: WideResNet50-2 on CIFAR-10, 800 epochs, 3 seeds"


def figures(data: Any, out_dir: Path) -> list[FigureFile]:
    """Every paper-004 figure the study's data allows (none for other studies)."""
    trials, hist = finished(data.trials), data.histories
    out: list[FigureFile] = []
    if "ufm/theory_objective" in trials:
        out += ufm_objective(trials, hist, out_dir)
    if TEST_AT_BEST_VAL in trials and len(trials):
        paper = paper_setting(trials)
        out += [nc_figure(paper, hist, out_dir), accuracy_figure(paper, hist, out_dir)]
        out += width_epoch_heatmap(trials, out_dir)
    return out


def width_of(row: pd.Series) -> float:
    """The trial's model.width (its grid axis), NaN when the grid does not vary it."""
    return float(row["axes"].get(WIDTH, np.nan))


def paper_setting(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials of Figures 1-2: the longest training at the widest network."""
    t = trials.assign(width=[width_of(r) for _, r in trials.iterrows()])
    t = t[t["epochs"] == t["epochs"].max()]
    if t["width"].notna().any():
        t = t[t["width"] == t["width"].max()]
    return t


def mean_curve(hist: pd.DataFrame, keys: list[str], metric: str) -> pd.Series:
    """The metric against step, averaged over the trials `keys` (each step's mean over the
    trials that logged it)."""
    h = hist[(hist.metric == metric) & hist.key.isin(keys)]
    if h.empty:
        return pd.Series(dtype=float)
    return h.pivot_table(index="step", columns="key", values="value").mean(axis=1)


def _curves(
    trials: pd.DataFrame, hist: pd.DataFrame, panels: tuple, scale: float, log: bool
) -> tuple[Figure, dict[str, dict[str, float]]]:
    """One panel per metric, one line per loss (mean over seeds); the last value of each."""
    fig = Figure(figsize=(3.6 * len(panels), 3.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    last: dict[str, dict[str, float]] = {}
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for loss in dict.fromkeys(trials["loss"]):
            curve = mean_curve(hist, list(trials.loc[trials.loss == loss, "key"]), metric)
            if curve.empty:
                continue
            ax.plot(curve.index, scale * curve.values, marker=".", label=loss)
            last.setdefault(metric, {})[loss] = float(scale * curve.values[-1])
        if log and metric in last and min(last[metric].values()) > 0:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=8)
    return fig, last


def _run_words(trials: pd.DataFrame) -> str:
    row = trials.iloc[0]
    width = width_of(row)
    w = "" if np.isnan(width) else f" width {width:g}"
    return (
        f"This run: {row['model']}{w} on {row['dataset']}, {int(row['epochs'])} epochs, "
        f"{trials['seed'].nunique()} seed(s)"
    )


def _values(last: dict[str, float], fmt: str) -> str:
    return ", ".join(f"{loss} {v:{fmt}}" for loss, v in last.items()) or "none logged"


def nc_figure(trials: pd.DataFrame, hist: pd.DataFrame, out_dir: Path) -> FigureFile:
    """Figure 1: NC1, NC2, NC3 (the paper's definitions) against epochs, per loss."""
    fig, last = _curves(trials, hist, NC_PANELS, 1.0, log=True)
    fig.suptitle("NC metrics across losses (paper 004, Figure 1)")
    path = _save(fig, out_dir / "paper004_fig1_nc.png")
    caption = (
        f"NC1, NC2 and NC3 as Zhou et al. define them (nc1, nc2_zhou, nc3_zhou), mean over "
        f"seeds. At full scale ({PAPER_SETUP}) all three fall towards 0 for CE, LS, FL and MSE "
        f"alike. {_run_words(trials)}: final NC1 {_values(last.get('nc/nc1', {}), '.3g')}; "
        f"NC2 {_values(last.get('nc/nc2_zhou', {}), '.3g')}; "
        f"NC3 {_values(last.get('nc/nc3_zhou', {}), '.3g')}."
    )
    return FigureFile(path.stem, "Paper 004, Figure 1: NC1-NC3 against epochs", caption, path)


def accuracy_figure(trials: pd.DataFrame, hist: pd.DataFrame, out_dir: Path) -> FigureFile:
    """Figure 2: training, validation and test accuracy against epochs, per loss."""
    fig, last = _curves(trials, hist, ACC_PANELS, 100.0, log=False)
    fig.suptitle("Accuracy across losses (paper 004, Figure 2)")
    path = _save(fig, out_dir / "paper004_fig2_accuracy.png")
    best = trials.groupby("loss", sort=False)[TEST_AT_BEST_VAL].mean() * 100
    caption = (
        f"Accuracy (%) at each evaluation, mean over seeds. At full scale ({PAPER_SETUP}) the "
        "training accuracy of every loss reaches 100 % and the validation and test accuracies "
        f"are largely the same across losses. {_run_words(trials)}: final training "
        f"accuracy {_values(last.get('train/acc1', {}), '.1f')}; test accuracy of the "
        f"best-validation epoch {_values(best.to_dict(), '.1f')}."
    )
    return FigureFile(path.stem, "Paper 004, Figure 2: accuracy against epochs", caption, path)


def heat_grid(t: pd.DataFrame) -> tuple[list[float], list[int], pd.DataFrame]:
    """(widths, epochs, mean test accuracy at the best-val epoch in % per loss x cell)."""
    t = t.assign(width=[width_of(r) for _, r in t.iterrows()], acc=100 * t[TEST_AT_BEST_VAL])
    means = t.groupby(["loss", "width", "epochs"], sort=False)["acc"].mean().reset_index()
    return sorted(set(t["width"])), sorted(set(t["epochs"])), means


def width_epoch_heatmap(trials: pd.DataFrame, out_dir: Path) -> list[FigureFile]:
    """Figure 3: test accuracy (best-val epoch, mean over seeds) over width x epochs, one panel
    per loss; needs a grid over both model.width and train.epochs."""
    widths, epochs, means = heat_grid(trials)
    if len(widths) < 2 or len(epochs) < 2 or any(np.isnan(widths)):
        return []
    losses = list(dict.fromkeys(means["loss"]))
    vmin, vmax = means["acc"].min(), means["acc"].max()
    fig = Figure(figsize=(1.2 + 3.4 * len(losses), 3.2), layout="constrained")
    axes = fig.subplots(1, len(losses), squeeze=False)[0]
    image = None
    for ax, loss in zip(axes, losses, strict=True):
        grid = np.full((len(widths), len(epochs)), np.nan)
        for _, r in means[means.loss == loss].iterrows():
            grid[widths.index(r["width"]), epochs.index(r["epochs"])] = r["acc"]
        image = ax.imshow(grid, cmap=CMAP, vmin=vmin, vmax=vmax + 1e-9, origin="lower")
        for (i, j), v in np.ndenumerate(grid):
            dark = not np.isnan(v) and v - vmin < 0.4 * (vmax - vmin)  # on purple: white text
            text = "—" if np.isnan(v) else f"{v:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, c="white" if dark else "k")
        ax.set_xticks(range(len(epochs)), [str(e) for e in epochs])
        ax.set_yticks(range(len(widths)), [f"{w:g}" for w in widths])
        ax.set(xlabel="epochs", ylabel="model.width", title=loss)
    fig.colorbar(image, ax=list(axes), label="test acc1 % (best val)")
    fig.suptitle("Test accuracy over width x epochs (paper 004, Figure 3)")
    path = _save(fig, out_dir / "paper004_fig3_width_epochs.png")
    corner = means[(means.width == widths[-1]) & (means.epochs == epochs[-1])]
    spread = corner["acc"].max() - corner["acc"].min()
    caption = (
        "Test accuracy (%) of the best-validation epoch, mean over seeds, per loss. At full "
        "scale (CIFAR-10, WideResNet50 widths 0.25/0.5/1/2, 3 seeds) accuracy grows with width "
        "and with epochs for every loss, and the losses agree at width 2 and 800 epochs. This "
        f"run (widths {', '.join(f'{w:g}' for w in widths)}; epochs "
        f"{', '.join(map(str, epochs))}): at the widest and longest cell "
        f"{_values(corner.set_index('loss')['acc'].to_dict(), '.1f')} "
        f"(spread {spread:.1f} points); accuracy range over all cells {vmin:.1f}-{vmax:.1f} %."
    )
    return [FigureFile(path.stem, "Paper 004, Figure 3: width x epochs", caption, path)]


def ufm_objective(trials: pd.DataFrame, hist: pd.DataFrame, out_dir: Path) -> list[FigureFile]:
    """The regularised UFM: objective against iterations per loss (mean over seeds), with
    Theorem 1's optimum (the reduced one-dimensional problem) as a dashed line."""
    t = trials[trials["ufm/theory_objective"].notna()]
    losses = list(dict.fromkeys(t["loss"]))
    fig = Figure(figsize=(3.2 * len(losses), 3.0), layout="constrained")
    axes = fig.subplots(1, len(losses), squeeze=False)[0]
    gaps = {}
    for ax, loss in zip(axes, losses, strict=True):
        lt = t[t.loss == loss]
        curve = mean_curve(hist, list(lt["key"]), "train/objective")
        optimum = float(lt["ufm/theory_objective"].iloc[0])
        if not curve.empty:
            ax.plot(curve.index, curve.values, label="reached")
        ax.axhline(optimum, ls="--", color="black", lw=1, label="theory")
        gaps[loss] = float(lt["ufm/objective_gap"].abs().max())
        ax.set(xlabel="iteration", title=loss, xscale="log")
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle("Regularised UFM: objective against its predicted optimum (paper 004, Thm 1)")
    path = _save(fig, out_dir / "paper004_ufm_objective.png")
    caption = (
        "Objective (loss + weight decay on W, H, b) of the regularised unconstrained feature "
        "model, mean over seeds; dashed: the optimum Theorem 1 predicts (a simplex ETF with "
        "h = sqrt(lambda_W/(lambda_H n)) w, solved in its one free scale). The paper proves the "
        "ETF is the only global minimiser for CE, LS and FL (and MSE) when K < d. This run: "
        f"largest |reached - predicted| per loss {_values(gaps, '.2e')}."
    )
    return [FigureFile(path.stem, "Paper 004: regularised UFM optimum", caption, path)]
