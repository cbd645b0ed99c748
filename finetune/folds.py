"""Combining the folds of one setting: every fold kept, and the mean and spread over folds.

`combine_folds` takes the results of `finetune.evaluation.evaluate` (one per fold) and returns a
result dict of the same shape (`finetune.results`), so a combined result is written, printed and
plotted the same way as a single one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from finetune.metrics import nanmean
from finetune.results import THRESHOLD, as_array, is_combined

__all__ = ["combine_folds"]


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
    if is_combined(first):
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
        stack = np.stack([as_array(results[k]["per_au"][m]) for k in folds])  # [F, A]
        per_au[m] = [nanmean(stack[:, a]) for a in range(stack.shape[1])]
    out["per_au"] = per_au
    fold_mean = {m: [_fold_mean(results[k], m) for k in folds] for m in metrics}
    out["mean"] = {m: nanmean(v) for m, v in fold_mean.items()}
    out["fold_mean"] = fold_mean
    out["fold_std"] = {m: _nanstd(v) for m, v in fold_mean.items()}
    out["per_fold"] = {str(k): results[k] for k in folds}
    return out


def _fold_key(k: Any) -> Any:
    return k.item() if isinstance(k, np.generic) else k


def _fold_mean(r: dict, metric: str) -> float:
    v = r.get("mean", {}).get(metric)
    return nanmean(r["per_au"][metric]) if v is None else float(v)


def _nanstd(v: list[float]) -> float:
    a = as_array(v)
    a = a[~np.isnan(a)]
    return float(a.std()) if a.size else math.nan
