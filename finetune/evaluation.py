"""Evaluating one test set: a task's predictions against its labels, as a result dict.

`evaluate` returns the JSON-able dict that `finetune.results` describes, with the metrics of
`finetune.metrics`. Detection reports the protocol's F1 at 0.5; given the model's outputs on the
training frames it also tunes a threshold per AU on them (`THRESHOLD_GRID`) and reports the test
F1 at those thresholds under keys of their own, never in place of "f1".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from finetune.metrics import as_2d, f1_per_au, icc31, mae, nanmean, pearson
from finetune.results import THRESHOLD

__all__ = ["THRESHOLD_GRID", "evaluate"]

TASKS = ("detection", "intensity")
# 0.05, 0.10, ..., 0.95: the per-AU thresholds that tuning on training data may choose
THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _names(au_names: Any) -> list[int | str]:
    out: list[int | str] = []
    for n in list(au_names):
        if isinstance(n, np.generic):
            n = n.item()
        out.append(n if isinstance(n, (int, str)) and not isinstance(n, bool) else str(n))
    return out


def _check_columns(name: str, a: int, names: list) -> None:
    if a != len(names):
        raise ValueError(f"evaluate: {name} has {a} AU columns but au_names lists {len(names)}: {names}")


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
    """Evaluate one test set; returns the JSON-able result dict described in `finetune.results`.

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
    y = as_2d(labels, "labels")
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
        result["mean"] = {k: nanmean(v) for k, v in per_au.items()}
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
    result["mean"] = {"f1": nanmean(f1)}

    if train_prob is not None:
        ty = as_2d(train_labels, "train_labels")
        if ty.shape[1] != y.shape[1]:
            raise ValueError(f"evaluate: train_labels has {ty.shape[1]} AU columns, labels {y.shape[1]}")
        thresholds = _tune_thresholds(train_prob, train_labels)
        p = as_2d(prob_or_pred, "prob_or_pred")
        tuned = np.array([f1_per_au(p[:, a], y[:, a], float(t))[0] for a, t in enumerate(thresholds)])
        result["thresholds"] = _floats(thresholds)
        result["threshold_grid"] = list(THRESHOLD_GRID)
        result["per_au"]["f1_tuned"] = _floats(tuned)
        result["mean"]["f1_tuned"] = nanmean(tuned)
    return result
