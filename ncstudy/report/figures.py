"""The report's figures (matplotlib's object API with the Agg canvas: no display, no global
backend switch): temperature x batch-size heatmaps (the paper's Figure 3), NC metrics against
epochs per loss (Figure 2) and the spread of test accuracy over seeds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ncstudy.metrics import metric_target
from ncstudy.report.tables import TEST, chosen_trials, column, config_means, prepared
from ncstudy.report.tables import best_configs as choose_best

CURVE_METRICS = (
    "erank_intra",
    "erank_inter",
    "erank_weights",
    "align_weight_mean",
    "align_weight_inst",
    "mir",
    "hdr",
    "nc1",
    "nc3",
    "nc4",
)
DPI = 110
CMAP = colormaps["viridis"].with_extremes(bad="#d0d0d0")  # grey: no finished trial


@dataclass(frozen=True)
class FigureFile:
    """A written figure: file stem, title, caption and the PNG's path."""

    name: str
    title: str
    caption: str
    path: Path


def slug(text: str) -> str:
    """A file-name-safe version of a setting label."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "study"


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def heatmaps(trials: pd.DataFrame, out_dir: Path) -> list[FigureFile]:
    """Per setting: test accuracy over temperature x batch size, one panel per loss that has a
    temperature; the best validation configuration is outlined."""
    t = prepared(trials)
    means = config_means(t)
    files = []
    for setting in dict.fromkeys(t["setting"]):
        st = t[t.setting == setting]
        losses = [
            x for x in dict.fromkeys(st["loss"]) if set(st.loc[st.loss == x, "tau"]) != {"none"}
        ]
        if not losses:
            continue
        m = means[means.setting == setting]
        finite = 100 * m["test"].dropna()
        vmin, vmax = (finite.min(), finite.max()) if len(finite) else (0.0, 100.0)
        fig = Figure(figsize=(1.2 + 3.6 * len(losses), 3.4), layout="constrained")
        axes = fig.subplots(1, len(losses), squeeze=False)[0]
        image = None
        for ax, loss in zip(axes, losses, strict=True):
            lt = st[st.loss == loss]
            taus = sorted(set(lt["tau"]), key=float)
            batches = sorted(set(lt["batch_size"]))
            grid = np.full((len(batches), len(taus)), np.nan)
            ml = m[m.loss == loss]
            for _, r in ml.iterrows():
                grid[batches.index(r["batch_size"]), taus.index(r["tau"])] = 100 * r["test"]
            image = ax.imshow(grid, cmap=CMAP, vmin=vmin, vmax=vmax + 1e-9, aspect="auto")
            for i in range(len(batches)):
                for j in range(len(taus)):
                    v = grid[i, j]
                    light = np.isnan(v) or (v - vmin) > 0.6 * (vmax - vmin)  # on yellow or grey
                    text = "—" if np.isnan(v) else f"{v:.1f}"
                    color = "black" if light else "white"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
            if ml["val"].notna().any():
                best = ml.loc[ml["val"].idxmax()]
                j, i = taus.index(best["tau"]), batches.index(best["batch_size"])
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
            ax.set_xticks(range(len(taus)), taus)
            ax.set_yticks(range(len(batches)), [str(b) for b in batches])
            ax.set_xlabel("temperature τ")
            ax.set_ylabel("batch size")
            ax.set_title(loss)
        fig.colorbar(image, ax=list(axes), label="test acc1 %")
        fig.suptitle(f"Test accuracy, temperature x batch size ({setting})")
        path = _save(fig, out_dir / f"heatmap_{slug(setting)}.png")
        caption = (
            "Test top-1 accuracy (%, mean over finished seeds) per loss; red box: the best mean "
            "validation accuracy; grey '—': no finished trial."
        )
        files.append(FigureFile(path.stem, f"Temperature x batch size ({setting})", caption, path))
    return files


def nc_curves(trials: pd.DataFrame, histories: pd.DataFrame, out_dir: Path) -> list[FigureFile]:
    """Per setting: NC metrics and test accuracy against epochs, one line per loss at its best
    configuration (mean over seeds, shaded between the lowest and highest seed)."""
    t = prepared(trials)
    chosen = chosen_trials(t, choose_best(t))
    files = []
    for setting in dict.fromkeys(chosen["setting"]):
        sel = chosen[chosen.setting == setting]
        k = sel["num_classes"].iloc[0]
        panels = [f"nc/{m}" for m in CURVE_METRICS] + ["test/acc1"]
        panels = [p for p in panels if (histories["metric"] == p).any()]
        if not panels:
            continue
        cols = 4
        rows = -(-len(panels) // cols)
        fig = Figure(figsize=(3.3 * cols, 2.6 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, panel in zip(axes, panels, strict=False):
            for loss in dict.fromkeys(sel["loss"]):
                keys = list(sel.loc[sel.loss == loss, "key"])
                h = histories[(histories.metric == panel) & histories.key.isin(keys)]
                if h.empty:
                    continue
                wide = h.pivot_table(index="step", columns="key", values="value")
                wide = wide * scale(panel)
                (line,) = ax.plot(wide.index, wide.mean(axis=1), marker=".", label=loss)
                if wide.shape[1] > 1:
                    ax.fill_between(
                        wide.index,
                        wide.min(axis=1),
                        wide.max(axis=1),
                        alpha=0.2,
                        color=line.get_color(),
                    )
            name = panel.removeprefix("nc/")
            target = _target(name, k)
            if target is not None:
                ax.axhline(target, ls="--", color="grey", lw=1)
            ax.set_title(panel_title(panel), fontsize=10)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=8)
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"NC metrics during training ({setting})")
        path = _save(fig, out_dir / f"nc_curves_{slug(setting)}.png")
        caption = (
            "NC metrics on the training set and test accuracy (%) at each evaluation, per loss "
            "at its best configuration (by validation accuracy); mean over finished seeds, shaded "
            "from the lowest to the highest seed; dashed: the perfect-NC value."
        )
        files.append(FigureFile(path.stem, f"NC metrics against epochs ({setting})", caption, path))
    return files


LINESTYLES = ("-", "--", ":", "-.")


def nc_by_axis(trials: pd.DataFrame, histories: pd.DataFrame, out_dir: Path) -> list[FigureFile]:
    """Per setting and loss with several temperatures or batch sizes: each NC metric (and test
    accuracy) against epochs, one line per temperature (colour) and batch size (line style),
    mean over the seeds that logged it, so the temperature's effect on collapse shows."""
    t = prepared(trials)
    files = []
    for setting in dict.fromkeys(t["setting"]):
        for loss in dict.fromkeys(t.loc[t.setting == setting, "loss"]):
            sel = t[(t.setting == setting) & (t.loss == loss)]
            configs = list(dict.fromkeys(zip(sel["tau"], sel["batch_size"], strict=True)))
            h = histories[histories.key.isin(sel["key"])]
            panels = [f"nc/{m}" for m in CURVE_METRICS] + ["test/acc1"]
            panels = [p for p in panels if (h["metric"] == p).any()]
            if len(configs) < 2 or not panels:
                continue
            fig = axis_figure(sel, h, panels, configs)
            axis = axis_words(configs)
            fig.suptitle(f"{loss}: NC metrics during training by {axis} ({setting})")
            path = _save(fig, out_dir / f"nc_by_temperature_{slug(setting)}_{slug(loss)}.png")
            caption = (
                f"{loss}: NC metrics on the training set and test accuracy (%) at each "
                "evaluation, one line per temperature τ (colour) and batch size b (line style), "
                "mean over the seeds that reached it; dashed grey: the perfect-NC value."
            )
            title = f"{loss}: NC metrics by {axis} ({setting})"
            files.append(FigureFile(path.stem, title, caption, path))
    return files


def axis_words(configs: list[tuple[str, int]]) -> str:
    """`temperature`, `batch size` or `temperature and batch size`: what varies."""
    taus, batches = {c[0] for c in configs}, {c[1] for c in configs}
    words = (["temperature"] if len(taus) > 1 else []) + (
        ["batch size"] if len(batches) > 1 else []
    )
    return " and ".join(words)


def axis_figure(
    sel: pd.DataFrame, h: pd.DataFrame, panels: list[str], configs: list[tuple[str, int]]
) -> Figure:
    """The panels of `nc_by_axis` for one loss: a line per (temperature, batch size)."""
    taus = sorted(
        dict.fromkeys(c[0] for c in configs), key=lambda x: -1 if x == "none" else float(x)
    )
    batches = sorted(dict.fromkeys(c[1] for c in configs))
    colours = colormaps["viridis"](np.linspace(0, 0.9, len(taus)))
    k = sel["num_classes"].iloc[0]
    cols = 4
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.3 * cols, 2.6 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        for tau, batch in configs:
            keys = sel.loc[(sel.tau == tau) & (sel.batch_size == batch), "key"]
            part = h[(h.metric == panel) & h.key.isin(keys)]
            if part.empty:
                continue
            mean = part.groupby("step")["value"].mean() * scale(panel)
            label = ", ".join(
                ([f"τ={tau}"] if len(taus) > 1 else [])
                + ([f"b={batch}"] if len(batches) > 1 else [])
            )
            ax.plot(
                mean.index, mean.to_numpy(), marker=".", label=label,
                color=colours[taus.index(tau)], ls=LINESTYLES[batches.index(batch) % 4],
            )  # fmt: skip
        target = _target(panel.removeprefix("nc/"), k)
        if target is not None:
            ax.axhline(target, ls="--", color="grey", lw=1)
        ax.set_title(panel_title(panel), fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(6, len(labels)), fontsize=8)
    return fig


ACCURACY_PANELS = ("test/acc1", "val/acc1", "train/acc1")


def scale(panel: str) -> float:
    """Accuracies are drawn in % (as the tables show them); NC metrics as logged."""
    return 100.0 if panel in ACCURACY_PANELS else 1.0


def panel_title(panel: str) -> str:
    """`nc1`, or `test acc1 (%)` for an accuracy."""
    if panel in ACCURACY_PANELS:
        return panel.replace("/", " ") + " (%)"
    return panel.removeprefix("nc/")


def _target(name: str, num_classes: float) -> float | None:
    if not np.isfinite(num_classes):
        return None
    try:
        return metric_target(name, int(num_classes))
    except ValueError:
        return None


def seed_spreads(trials: pd.DataFrame, out_dir: Path) -> list[FigureFile]:
    """Per setting: each seed's test accuracy per loss (best configuration), mean ± std bars."""
    t = prepared(trials)
    chosen = chosen_trials(t, choose_best(t))
    files = []
    for setting in dict.fromkeys(chosen["setting"]):
        sel = chosen[chosen.setting == setting]
        losses = list(dict.fromkeys(sel["loss"]))
        fig = Figure(figsize=(1.5 + 1.1 * len(losses), 3.4), layout="constrained")
        ax = fig.subplots()
        for i, loss in enumerate(losses):
            acc = 100 * column(sel[sel.loss == loss], TEST).dropna().to_numpy()
            offsets = np.linspace(-0.15, 0.15, len(acc)) if len(acc) > 1 else np.zeros(len(acc))
            ax.scatter(i + offsets, acc, s=18, alpha=0.8, zorder=3)
            if len(acc):
                std = acc.std(ddof=1) if len(acc) > 1 else 0.0
                ax.errorbar(i + 0.3, acc.mean(), yerr=std, fmt="o", color="black", capsize=4)
        ax.set_xticks(range(len(losses)), losses)
        ax.set_ylabel("test acc1 %")
        ax.set_title(f"Test accuracy over seeds ({setting})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        path = _save(fig, out_dir / f"seeds_{slug(setting)}.png")
        caption = (
            "Test top-1 accuracy of each finished seed (dots) at each loss's best configuration, "
            "with mean ± sample standard deviation (black)."
        )
        files.append(FigureFile(path.stem, f"Seed spread ({setting})", caption, path))
    return files
