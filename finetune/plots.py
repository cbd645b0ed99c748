"""Fine-tuning figures: a metric per AU (`plot_per_au`) and a metric against the label fraction
(`plot_label_fraction`), as PNGs.

They draw the result dicts of `finetune.results` (one evaluation or combined folds). Plots use
matplotlib's Agg canvas directly (no pyplot, no display, no global state); a PNG is written
as every report file is (`finetune.report.open_report`: atomically, readable by all).
"""

from __future__ import annotations

import math
import os
import textwrap

import numpy as np

from finetune.metrics import nanmean
from finetune.report import open_report
from finetune.results import HEADLINE, THRESHOLD, as_array, au_label, is_combined, setting_text

__all__ = ["plot_per_au", "plot_label_fraction"]

METRIC_TITLES = {
    "f1": "F1",
    "f1_tuned": "F1 at train-tuned thresholds",
    "icc": "ICC(3,1)",
    "mae": "MAE",
    "pearson": "Pearson r",
}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> None:
    with open_report(path, "wb") as f:
        fig.savefig(f, format="png", dpi=fig.dpi)


def plot_per_au(results: dict, path: str | os.PathLike, *, metric: str | None = None,
                title: str | None = None) -> None:
    """A PNG bar chart of one metric per AU, with results["mean"] (the mean over AUs; for folds, the
    mean of the fold means) as a dashed line.

    `metric`: default F1 (detection) or ICC(3,1) (intensity); any key of results["per_au"]. For
    combined folds the bars are the mean over folds and each fold's value is a marker on its bar.
    The title names the task, metric, threshold, the result's "setting" and the folds; `title`
    replaces it. AUs with nothing to measure show "n/a".
    """
    task = results["task"]
    metric = metric or HEADLINE[task]
    if metric not in results["per_au"]:
        raise ValueError(f"plot_per_au: no metric {metric!r} in results (has {sorted(results['per_au'])})")
    names = [au_label(n) for n in results["au_names"]]
    values = as_array(results["per_au"][metric])
    combined = is_combined(results)
    folds = results["folds"] if combined else []
    fold_values = [as_array(results["per_fold"][str(k)]["per_au"][metric]) for k in folds]
    stored = results.get("mean", {}).get(metric)  # for folds: the mean of the fold means
    mean = nanmean(values) if stored is None else float(stored)

    x = np.arange(len(names))
    fig = _figure(max(6.0, 0.6 * len(names) + 2.0), 4.4)
    ax = fig.add_subplot()
    finite = ~np.isnan(values)
    ax.bar(x[finite], values[finite], width=0.7, color="#4C72B0",
           label=f"{METRIC_TITLES.get(metric, metric)}" + (" (mean over folds)" if combined else ""))
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    offsets = (np.arange(len(folds)) - (len(folds) - 1) / 2) * min(0.18, 0.6 / max(len(folds), 1))
    for i, (k, fv) in enumerate(zip(folds, fold_values)):
        ax.plot(x + offsets[i], fv, linestyle="none", marker=markers[i % len(markers)], markersize=4,
                color="#222222", markerfacecolor="white", label=f"fold {k}", zorder=3)
    if not math.isnan(mean):
        ax.axhline(mean, color="#C44E52", linestyle="--", linewidth=1.5, label=f"mean {mean:.3f}", zorder=2)

    all_values = np.concatenate([values[finite]] + [fv[~np.isnan(fv)] for fv in fold_values])
    vmin = float(all_values.min()) if all_values.size else 0.0
    vmax = float(all_values.max()) if all_values.size else 1.0
    if metric == "mae":
        bottom, top = 0.0, max(vmax, 1e-6) * 1.2
    else:  # F1, ICC, r: on their natural scale up to 1, below 0 only where a value is
        bottom, top = (vmin - 0.15 if vmin < 0 else 0.0), 1.12
    ax.set_ylim(bottom, top)
    span = top - bottom
    box = {"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}
    for a, (xi, v) in enumerate(zip(x, values)):
        if math.isnan(v):
            ax.text(xi, max(bottom, 0.0) + 0.02 * span, "n/a", ha="center", va="bottom", fontsize=7, color="#777777")
            continue
        # above the bar and above its fold markers (below both for a negative value), on a white box
        # so that the mean line does not cross the digits
        around = [v] + [fv[a] for fv in fold_values if not math.isnan(fv[a])]
        up = v >= 0
        y = max(around) + 0.025 * span if up else min(around) - 0.025 * span
        ax.text(xi, y, f"{v:.2f}", ha="center", va="bottom" if up else "top", fontsize=7, bbox=box, zorder=4)
    if metric != "mae":
        ax.set_yticks(np.arange(math.ceil(bottom * 5) / 5, 1.0001, 0.2))
        ax.axhline(0.0, color="black", linewidth=0.6)
    if max(len(n) for n in names) > 5:
        ax.set_xticks(x, names, rotation=30, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(x, names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel(METRIC_TITLES.get(metric, metric))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()

    def rank(i: int) -> tuple[int, int]:  # bars, then the mean line, then the folds
        return (2 if labels[i].startswith("fold ") else 1 if labels[i].startswith("mean ") else 0, i)

    order = sorted(range(len(labels)), key=rank)
    # below the axes, in a strip of its own, so that it never hides a bar near 1
    fig.legend([handles[i] for i in order], [labels[i] for i in order], loc="lower center",
               bbox_to_anchor=(0.5, 0.005), ncol=len(labels), fontsize=8, frameon=False)

    if title is None:
        line1 = f"AU {task}: {METRIC_TITLES.get(metric, metric)} per AU"
        if task == "detection" and metric == "f1":
            line1 += f" at threshold {results.get('threshold', THRESHOLD):g}"
        if combined:
            line1 += f", mean over {len(folds)} folds"
        setting = setting_text(results.get("setting"))
        # a long setting (a training job's dict) wraps to the figure's width (at 10 pt, about 12
        # characters an inch; 11 leaves a margin)
        wrapped = textwrap.fill(setting, width=int(11 * fig.get_figwidth()), break_on_hyphens=False)
        title = line1 + ("\n" + wrapped if setting else "")
    ax.set_title(title, fontsize=10)
    fig.tight_layout(rect=(0.0, 0.3 / fig.get_figheight(), 1.0, 1.0))
    _save(fig, path)


def plot_label_fraction(points: dict[float, float], path: str | os.PathLike, *,
                        baseline: dict[float, float] | None = None, label: str = "pretrained backbone",
                        baseline_label: str = "random init", metric: str = "mean F1",
                        title: str | None = None) -> None:
    """A PNG of a metric (mean F1 by default) against the fraction of training labels, log x axis.

    `points`: label fraction (0 < f <= 1; keys may be strings, as read back from JSON) -> value;
    `baseline`: an optional second curve, e.g. the same protocol from a random initialisation.
    Points whose value is NaN or None are left out. Each point is annotated with its value.
    """
    def clean(d: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
        pairs = []
        for k, v in d.items():
            f = float(k)
            if not 0.0 < f <= 1.0:
                raise ValueError(f"plot_label_fraction: {what} has label fraction {k!r}; fractions are in (0, 1]")
            if v is not None and not math.isnan(float(v)):
                pairs.append((f, float(v)))
        pairs.sort()
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    # (xs, ys), legend, colour, marker, line style, value annotations below the points
    curves = [(clean(points, "points"), label, "#4C72B0", "o", "-", False)]
    if baseline is not None:
        curves.append((clean(baseline, "baseline"), baseline_label, "#DD8452", "s", "--", True))
    if curves[0][0][0].size == 0:
        raise ValueError("plot_label_fraction: no point with a value")

    from matplotlib.ticker import NullLocator

    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    for (xs, ys), name, colour, marker, style, below in curves:
        ax.plot(xs, ys, linestyle=style, marker=marker, color=colour, label=name, linewidth=1.8, markersize=6)
        for xv, yv in zip(xs, ys):
            ax.annotate(f"{yv:.3f}", (xv, yv), textcoords="offset points", xytext=(0, -8 if below else 7),
                        ha="center", va="top" if below else "bottom", fontsize=7, color=colour)
    xs_all = np.unique(np.concatenate([c[0][0] for c in curves]))
    ys_all = np.concatenate([c[0][1] for c in curves])
    ax.set_xlim(xs_all.min() / 1.6, xs_all.max() * 1.6)
    ax.set_xticks(xs_all, [f"{100 * f:.3g}%" for f in xs_all])
    ax.xaxis.set_minor_locator(NullLocator())
    lo, hi = float(ys_all.min()), float(ys_all.max())
    pad = max(0.05, 0.15 * (hi - lo))
    ax.set_ylim(max(0.0, lo - pad), hi + pad)
    ax.set_xlabel("fraction of training labels (log scale)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, frameon=False)
    ax.set_title(title or f"{metric[0].upper() + metric[1:]} against label fraction", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
