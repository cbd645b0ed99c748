"""Fine-tuning reports: evaluation results as JSON-able dicts, fold means, tables and plots.

One evaluation is a plain dict (numbers, strings and lists only), so that it is written to
`metrics.json` as it is, read back with any JSON reader, and passed back to `combine_folds`,
`print_table` and the plots:

    {
      "task": "detection",                   # or "intensity"
      "au_names": [1, 2, 4, ...],            # as given (ints or strings)
      "setting": "BP4D, linear probe, 10%",  # optional: whatever the caller passed as setting=
      "n_frames": 5012,
      "support": {"known": [...], "positive": [...]},   # per AU; intensity: {"known": [...]}
      "per_au": {"f1": [...]},               # intensity: {"icc": [...], "mae": [...], "pearson": [...]}
      "mean": {"f1": 0.61},                  # the mean over AUs, AUs with nothing to measure skipped
      "threshold": 0.5,                      # detection only
      # detection with train_prob/train_labels only:
      "thresholds": [0.3, 0.45, ...],        # per AU, tuned on the TRAINING data
      "threshold_grid": [0.05, 0.1, ..., 0.95],
      # and per_au["f1_tuned"], mean["f1_tuned"]: the test F1 at those thresholds
    }

Conventions (see `finetune.metrics` and REFERENCE.md, Protocols):

* Detection: "f1" is always the protocol's number: F1 per AU at probability 0.5 over the frames
  whose label is known (-1 or NaN unknown). The per-AU thresholds tuned on training data, and the
  test F1 at them, only ever appear under their own keys ("thresholds", "f1_tuned"); they never
  change "f1" or mean["f1"].
* Intensity: ICC(3,1), MAE and Pearson's r per AU over the frames whose target is not NaN.
* A value with nothing to measure (an AU with no known label, say) is NaN in memory and `null` in
  `metrics.json`; every function here reads `None` back as NaN. Means skip NaN.

Fold results (`combine_folds`) keep every fold under "per_fold" and put the mean over folds in
"per_au" and "mean", so a combined result is read the same way as a single one.

Plots use matplotlib's Agg canvas directly (no pyplot, no display, no global state).
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from finetune.metrics import au_table, f1_per_au, icc31, mae, pearson
from shards.atomic import atomic_open

__all__ = [
    "THRESHOLD_GRID",
    "evaluate",
    "combine_folds",
    "write_metrics",
    "print_table",
    "plot_per_au",
    "plot_label_fraction",
]

TASKS = ("detection", "intensity")
THRESHOLD = 0.5
# 0.05, 0.10, ..., 0.95: the per-AU thresholds that tuning on training data may choose
THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
# the metric a table puts per fold and a per-AU plot draws
HEADLINE = {"detection": "f1", "intensity": "icc"}
METRIC_TITLES = {
    "f1": "F1",
    "f1_tuned": "F1 at train-tuned thresholds",
    "icc": "ICC(3,1)",
    "mae": "MAE",
    "pearson": "Pearson r",
}


# ------------------------------------------------------------------------------------ helpers


def _host(x: Any) -> np.ndarray:
    """`x` as float64 numpy [N, A] (torch tensors are detached and moved to host)."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").numpy()
    a = np.asarray(x, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _arr(values: Any) -> np.ndarray:
    """A list read from a result (possibly back from JSON, `None` for NaN) as float64 numpy."""
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _nanmean(v: Any) -> float:
    a = _arr(v) if isinstance(v, list) else np.asarray(v, dtype=np.float64)
    finite = a[~np.isnan(a)]
    return float(finite.mean()) if finite.size else math.nan


def _names(au_names: Any) -> list[int | str]:
    out: list[int | str] = []
    for n in list(au_names):
        if isinstance(n, np.generic):
            n = n.item()
        out.append(n if isinstance(n, (int, str)) and not isinstance(n, bool) else str(n))
    return out


def _au_label(name: Any) -> str:
    """`1` or `"1"` -> "AU1"; other names as they are."""
    s = str(name)
    return f"AU{s}" if s.isdigit() else s


def _setting_text(setting: Any) -> str:
    if setting is None or setting == "":
        return ""
    if isinstance(setting, dict):
        return ", ".join(f"{k}={v}" for k, v in setting.items())
    return str(setting)


def _check_columns(name: str, a: int, names: list) -> None:
    if a != len(names):
        raise ValueError(f"evaluate: {name} has {a} AU columns but au_names lists {len(names)}: {names}")


# ----------------------------------------------------------------------------------- evaluate


def _tune_thresholds(train_prob: Any, train_labels: Any) -> np.ndarray:
    """Per AU, the grid threshold with the highest F1 on the training data.

    Ties (common: F1 is flat between two training scores) go to the threshold closest to 0.5, so
    a threshold moves away from the protocol's 0.5 only where the training data says it helps.
    An AU with no known training label, or no training positive (F1 0 everywhere), keeps 0.5.
    """
    grid = np.array(THRESHOLD_GRID)
    scores = np.stack([f1_per_au(train_prob, train_labels, t) for t in grid])  # [G, A]
    scores = np.where(np.isnan(scores), -1.0, scores)
    best = scores.max(axis=0)
    distance = np.abs(grid - THRESHOLD)
    out = np.empty(scores.shape[1])
    for a in range(scores.shape[1]):
        tied = np.flatnonzero(scores[:, a] >= best[a] - 1e-12)
        out[a] = grid[tied[np.argmin(distance[tied])]]
    return out


def evaluate(task: str, au_names: Any, prob_or_pred: Any, labels: Any, *, train_prob: Any = None,
             train_labels: Any = None, setting: Any = None) -> dict:
    """Evaluate one test set; returns the JSON-able result dict described in the module docstring.

    `task` "detection": `prob_or_pred` [N, A] probabilities (or hard 0/1), `labels` [N, A] 0/1
    with -1 (or NaN) unknown. Reports F1 per AU at 0.5 and its mean. With `train_prob` and
    `train_labels` (the model's outputs and the labels on the TRAINING frames), each AU's threshold
    is also tuned on them (the grid `THRESHOLD_GRID`, maximising train F1) and the test F1 at
    those thresholds is reported under "f1_tuned", the thresholds under "thresholds".

    `task` "intensity": `prob_or_pred` [N, A] predicted intensities, `labels` [N, A] targets with
    NaN unknown. Reports ICC(3,1), MAE and Pearson's r per AU and their means.

    `setting` (optional, a string or a dict of JSON-able values) describes the run, for example
    `{"dataset": "BP4D", "protocol": "linear probe", "labels": 0.1}`; it is kept in the result
    and shown in the table header and plot titles. Arrays may be numpy or torch.
    """
    if task not in TASKS:
        raise ValueError(f"evaluate: task must be one of {TASKS}, got {task!r}")
    names = _names(au_names)
    result: dict[str, Any] = {"task": task, "au_names": names}
    if setting is not None:
        result["setting"] = setting
    y = _host(labels)
    result["n_frames"] = int(y.shape[0])

    if task == "intensity":
        if train_prob is not None or train_labels is not None:
            raise ValueError("evaluate: train_prob/train_labels tune detection thresholds; "
                             "they mean nothing for task 'intensity'")
        per_au = {"icc": icc31(prob_or_pred, labels), "mae": mae(prob_or_pred, labels),
                  "pearson": pearson(prob_or_pred, labels)}
        _check_columns("labels", y.shape[1], names)
        result["support"] = {"known": [int(v) for v in (~np.isnan(y)).sum(0)]}
        result["per_au"] = {k: _floats(v) for k, v in per_au.items()}
        result["mean"] = {k: _nanmean(v) for k, v in per_au.items()}
        return result

    if (train_prob is None) != (train_labels is None):
        raise ValueError("evaluate: give both train_prob and train_labels (to tune thresholds) or neither")
    f1 = f1_per_au(prob_or_pred, labels, THRESHOLD)
    _check_columns("labels", y.shape[1], names)
    known = ~np.isnan(y) & (y >= 0)
    result["threshold"] = THRESHOLD
    result["support"] = {"known": [int(v) for v in known.sum(0)],
                         "positive": [int(v) for v in (known & (y == 1)).sum(0)]}
    result["per_au"] = {"f1": _floats(f1)}
    result["mean"] = {"f1": _nanmean(f1)}

    if train_prob is not None:
        ty = _host(train_labels)
        if ty.shape[1] != y.shape[1]:
            raise ValueError(f"evaluate: train_labels has {ty.shape[1]} AU columns, labels {y.shape[1]}")
        thresholds = _tune_thresholds(train_prob, train_labels)
        p = _host(prob_or_pred)
        tuned = np.array([f1_per_au(p[:, a], y[:, a], float(t))[0] for a, t in enumerate(thresholds)])
        result["thresholds"] = _floats(thresholds)
        result["threshold_grid"] = list(THRESHOLD_GRID)
        result["per_au"]["f1_tuned"] = _floats(tuned)
        result["mean"]["f1_tuned"] = _nanmean(tuned)
    return result


# ------------------------------------------------------------------------------- fold results


def _is_combined(results: dict) -> bool:
    return "per_fold" in results


def combine_folds(results: dict[int, dict]) -> dict:
    """The folds of one setting: every fold kept, and the mean over folds per AU and overall.

    `results`: fold -> result of `evaluate` (for example {1: r1, 2: r2, 3: r3}); all of one task,
    with the same AUs and the same metrics. Returns a result dict of the same shape as `evaluate`'s
    plus:

    * "folds": the fold keys, sorted; "per_fold": {str(fold): that fold's result};
    * "per_au"[metric]: per AU, the mean over the folds where that AU has a value;
    * "fold_mean"[metric]: each fold's own mean (over its AUs), in fold order;
    * "mean"[metric]: the mean over folds of "fold_mean" (folds with NaN skipped), and
      "fold_std"[metric] their standard deviation over folds (population, ddof 0). Where every AU
      has a value in every fold, "mean" is also the mean over AUs of "per_au" (the Avg column of
      the literature's 3-fold tables, and the mean row of `print_table`'s mean column); where an
      AU has nothing to measure in some fold the two differ, and `print_table` says which is which.
    * "support": per AU counts summed over folds; "setting" where all folds agree on it.
    """
    if not results:
        raise ValueError("combine_folds: no fold results")
    folds = sorted(results)
    first = results[folds[0]]
    if _is_combined(first):
        raise ValueError("combine_folds: fold results must be single evaluations, not combined ones")
    task, names, metrics = first["task"], list(first["au_names"]), list(first["per_au"])
    for k in folds:
        r = results[k]
        if r["task"] != task:
            raise ValueError(f"combine_folds: fold {k} is {r['task']!r}, fold {folds[0]} is {task!r}")
        if [str(n) for n in r["au_names"]] != [str(n) for n in names]:
            raise ValueError(f"combine_folds: fold {k} has AUs {r['au_names']}, fold {folds[0]} has {names}")
        if sorted(r["per_au"]) != sorted(metrics):
            raise ValueError(f"combine_folds: fold {k} reports {sorted(r['per_au'])}, "
                             f"fold {folds[0]} reports {sorted(metrics)} (tuned and untuned folds mixed?)")

    out: dict[str, Any] = {"task": task, "au_names": names, "folds": [_fold_key(k) for k in folds]}
    settings = [results[k].get("setting") for k in folds]
    if all(s == settings[0] for s in settings) and settings[0] is not None:
        out["setting"] = settings[0]
    if task == "detection":
        out["threshold"] = first.get("threshold", THRESHOLD)
    out["n_frames"] = sum(int(results[k].get("n_frames", 0)) for k in folds)
    if all("support" in results[k] for k in folds):
        out["support"] = {c: [int(sum(v)) for v in zip(*(results[k]["support"][c] for k in folds))]
                          for c in first["support"]}
    per_au: dict[str, list[float]] = {}
    for m in metrics:
        stack = np.stack([_arr(results[k]["per_au"][m]) for k in folds])  # [F, A]
        per_au[m] = [_nanmean(stack[:, a]) for a in range(stack.shape[1])]
    out["per_au"] = per_au
    fold_mean = {m: [_fold_mean(results[k], m) for k in folds] for m in metrics}
    out["mean"] = {m: _nanmean(v) for m, v in fold_mean.items()}
    out["fold_mean"] = fold_mean
    out["fold_std"] = {m: _nanstd(v) for m, v in fold_mean.items()}
    out["per_fold"] = {str(k): results[k] for k in folds}
    return out


def _fold_key(k: Any) -> Any:
    return k.item() if isinstance(k, np.generic) else k


def _fold_mean(r: dict, metric: str) -> float:
    v = r.get("mean", {}).get(metric)
    return _nanmean(r["per_au"][metric]) if v is None else float(v)


def _nanstd(v: list[float]) -> float:
    a = _arr(v)
    a = a[~np.isnan(a)]
    return float(a.std()) if a.size else math.nan


# ---------------------------------------------------------------------------------------- JSON


def _jsonable(x: Any, where: str) -> Any:
    """`x` with numpy/torch values made plain, NaN and inf as None; TypeError naming `where` else."""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").numpy()
    if isinstance(x, np.ndarray):
        x = x.tolist()
    elif isinstance(x, np.generic):
        x = x.item()
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(x)]
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"write_metrics: {where} is a {type(x).__name__}, which JSON cannot hold")


def write_metrics(path: str | os.PathLike, results: dict) -> None:
    """Write `results` (one evaluation or combined folds) to `path` (e.g. RUN_DIR/metrics.json).

    Strict JSON (NaN and inf written as null), indented, UTF-8. Atomic: the text is serialised
    first, then written to a temporary file beside `path` that is fsynced and renamed over it, so
    a reader sees the previous file or the complete new one, and a failure leaves no temporary
    file. Parent folders are created.
    """
    text = json.dumps(_jsonable(results, "results"), indent=2, allow_nan=False) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; a report is for others to read
        f.write(text)


# --------------------------------------------------------------------------------------- table


def _header(results: dict) -> str:
    task = results["task"]
    parts = [f"AU {task}"]
    if task == "detection":
        parts.append(f"F1 at threshold {results.get('threshold', THRESHOLD):g}")
        if "f1_tuned" in results["per_au"]:
            parts.append("f1_tuned: per-AU thresholds tuned on training data")
    setting = _setting_text(results.get("setting"))
    if setting:
        parts.append(setting)
    if _is_combined(results):
        parts.append(f"{len(results['folds'])} folds, mean over folds")
    return "; ".join(parts)


def print_table(results: dict) -> str:
    """The per-AU table (via `metrics.au_table`) with a mean row, under a one-line header.

    One evaluation: a column per metric (detection with tuned thresholds adds "f1_tuned" and
    "threshold"). Combined folds: the headline metric (F1, or ICC for intensity) per fold and its
    mean over folds, then the mean over folds of the other metrics, and a last line with each
    metric's mean over folds and its standard deviation over folds (results["mean"],
    results["fold_std"]). Returns the text; it prints nothing (call `print` on rank 0, or log it).
    """
    names = [_au_label(n) for n in results["au_names"]]
    per_au = results["per_au"]
    columns: dict[str, np.ndarray] = {}
    if _is_combined(results):
        head = HEADLINE[results["task"]]
        for k in results["folds"]:
            columns[f"{head} fold{k}"] = _arr(results["per_fold"][str(k)]["per_au"][head])
        columns[f"{head} mean"] = _arr(per_au[head])
        for m, v in per_au.items():
            if m != head:
                columns[f"{m} mean"] = _arr(v)
    else:
        for m, v in per_au.items():
            columns[m] = _arr(v)
        if "thresholds" in results:
            columns["threshold"] = _arr(results["thresholds"])
    text = _header(results) + "\n" + au_table(names, **columns)
    if _is_combined(results):
        parts = [f"{m} {_cell(results['mean'][m])} (sd {_cell(results['fold_std'][m])})" for m in per_au]
        text += f"\nover {len(results['folds'])} folds, mean of the fold means: " + ", ".join(parts)
    return text


def _cell(v: Any) -> str:
    return "nan" if v is None or math.isnan(float(v)) else f"{float(v):.3f}"


# --------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; a report is for others to read
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
    names = [_au_label(n) for n in results["au_names"]]
    values = _arr(results["per_au"][metric])
    combined = _is_combined(results)
    folds = results["folds"] if combined else []
    fold_values = [_arr(results["per_fold"][str(k)]["per_au"][metric]) for k in folds]
    stored = results.get("mean", {}).get(metric)  # for folds: the mean of the fold means
    mean = _nanmean(values) if stored is None else float(stored)

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
        setting = _setting_text(results.get("setting"))
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
