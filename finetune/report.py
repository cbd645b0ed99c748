"""Fine-tuning reports: a result dict written as `metrics.json` (`write_metrics`) and as a
printable per-AU table (`print_table`).

The result dicts are those of `finetune.results` (one evaluation, `finetune.evaluation`, or
combined folds, `finetune.folds`). Every file written here (`open_report`; the plots of
`finetune.plots` too) is written atomically, readable by all.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from finetune.metrics import au_table, table_cell
from finetune.results import HEADLINE, THRESHOLD, as_array, au_label, is_combined, setting_text
from shards.atomic import atomic_open

__all__ = ["open_report", "write_metrics", "print_table"]


# ---------------------------------------------------------------------------------------- files


@contextlib.contextmanager
def open_report(path: str | os.PathLike, mode: str = "w"):
    """Open a report file (metrics.json, a plot) to write: parent folders created, the file
    written atomically (`shards.atomic.atomic_open`) and readable by all (0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, mode) as f:
        os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; a report is for others to read
        yield f


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
    with open_report(path, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------------------- table


def _header(results: dict) -> str:
    task = results["task"]
    parts = [f"AU {task}"]
    if task == "detection":
        parts.append(f"F1 at threshold {results.get('threshold', THRESHOLD):g}")
        if "f1_tuned" in results["per_au"]:
            parts.append("f1_tuned: per-AU thresholds tuned on training data")
    setting = setting_text(results.get("setting"))
    if setting:
        parts.append(setting)
    if is_combined(results):
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
    names = [au_label(n) for n in results["au_names"]]
    per_au = results["per_au"]
    columns: dict[str, np.ndarray] = {}
    if is_combined(results):
        head = HEADLINE[results["task"]]
        for k in results["folds"]:
            columns[f"{head} fold{k}"] = as_array(results["per_fold"][str(k)]["per_au"][head])
        columns[f"{head} mean"] = as_array(per_au[head])
        for m, v in per_au.items():
            if m != head:
                columns[f"{m} mean"] = as_array(v)
    else:
        for m, v in per_au.items():
            columns[m] = as_array(v)
        if "thresholds" in results:
            columns["threshold"] = as_array(results["thresholds"])
    text = _header(results) + "\n" + au_table(names, **columns)
    if is_combined(results):
        parts = [f"{m} {table_cell(results['mean'][m])} (sd {table_cell(results['fold_std'][m])})" for m in per_au]
        text += f"\nover {len(results['folds'])} folds, mean of the fold means: " + ", ".join(parts)
    return text
