"""AU metrics: occurrence F1 per AU, intensity ICC(3,1), MAE and Pearson's r, and a printable table.

Conventions (every evaluation of the fine-tuning protocols follows them):

* Inputs are arrays `[N, A]` (frames by AUs), numpy or torch (any device; they are copied to
  host numpy float64). A 1-D input `[N]` is taken as one AU, `[N, 1]`. Every function returns a
  numpy array `[A]`, one value per AU, in the column order of the input.
* Occurrence labels are integers with `-1` for unknown (NaN is accepted as unknown as well).
  A frame whose label is unknown for an AU is left out of that AU only. Known labels must be 0
  or 1; anything else raises `ValueError` (BP4D's raw `9` must be mapped to `-1` by the loader).
* Occurrence is predicted where `prob_or_pred >= threshold` (default 0.5), so hard 0/1
  predictions can be passed as they are, and the kNN probe's majority vote (`>= 0.5`) agrees.
* Intensity targets use NaN for unknown: a frame with a NaN target is left out of that AU. A NaN
  prediction where the target is known is a bug upstream and is not hidden: the AU's value
  comes out NaN.
* An AU with nothing to measure (no known label, fewer than two known intensity frames, zero
  variance where the statistic divides by it) gets NaN, and the means (`mean_f1`, the mean row
  of `au_table`) skip NaN.

F1 follows scikit-learn's `f1_score(..., zero_division=0)`: F1 = 2 TP / (2 TP + FP + FN), and
0 when that denominator is 0, i.e. when an AU has known labels but neither a true nor a
predicted positive among them. (This is the convention of the AU literature's tables, which
count such an AU as a failure rather than dropping it.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["as_2d", "nanmean", "f1_per_au", "mean_f1", "icc31", "mae", "pearson", "table_cell", "au_table"]


def as_2d(x: Any, name: str) -> np.ndarray:
    """`x` as a float64 numpy array `[N, A]` (torch tensors are detached and moved to host).

    A 1-D `x` `[N]` is one AU, `[N, 1]`; any other shape raises `ValueError` naming `name`.
    """
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().to("cpu").numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected shape [N, A] or [N], got {a.shape}")
    return a


def _pair(a: Any, b: Any, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_2d(a, names[0]), as_2d(b, names[1])
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} and {names[1]} differ in shape: {x.shape} vs {y.shape}")
    return x, y


def nanmean(v: Any) -> float:
    """The mean of the values of `v` that are not NaN (`None` in a list counts as NaN); NaN if none is."""
    v = np.asarray(v, dtype=np.float64)
    finite = v[~np.isnan(v)]
    return float(finite.mean()) if finite.size else math.nan


def f1_per_au(prob_or_pred: Any, labels: Any, threshold: float = 0.5) -> np.ndarray:
    """F1 of each AU over the frames whose label for that AU is known.

    `prob_or_pred` [N, A]: probabilities or hard 0/1 predictions, positive where `>= threshold`.
    `labels` [N, A]: 0/1, with -1 (or NaN) for unknown. Returns float64 [A]: NaN for an AU
    with no known label, 0 for an AU with known labels but no true and no predicted positive
    (scikit-learn's `zero_division=0`).
    """
    p, y = _pair(prob_or_pred, labels, ("prob_or_pred", "labels"))
    known = ~np.isnan(y) & (y >= 0)
    bad = known & (y != 0) & (y != 1)
    if bad.any():
        values = np.unique(y[bad])[:5].tolist()
        raise ValueError(f"labels: known labels must be 0 or 1 (-1 for unknown); found {values}")
    if np.isnan(p[known]).any():
        raise ValueError("prob_or_pred: NaN where the label is known")
    pred = p >= threshold
    true = known & (y == 1)
    tp = (pred & true).sum(0)
    fp = (pred & known & ~true).sum(0)
    fn = (~pred & true).sum(0)
    denom = 2 * tp + fp + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    f1 = f1.astype(np.float64)
    f1[known.sum(0) == 0] = np.nan
    return f1


def mean_f1(prob_or_pred: Any, labels: Any, threshold: float = 0.5) -> float:
    """Mean over AUs of `f1_per_au`, AUs with no known label (NaN) skipped; NaN if all are."""
    return nanmean(f1_per_au(prob_or_pred, labels, threshold))


def _known_target(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, t = _pair(pred, target, ("pred", "target"))
    return p, t, ~np.isnan(t)


def icc31(pred: Any, target: Any) -> np.ndarray:
    """ICC(3,1) per AU: two-way mixed model, consistency, single rater (Shrout and Fleiss 1979).

    The frames of an AU whose target is known are the n targets (rows) and the prediction and
    the target are the k = 2 raters (columns). With the two-way ANOVA mean squares of rows (MSR)
    and of error (MSE), ICC(3,1) = (MSR - MSE) / (MSR + (k - 1) MSE). The column (rater) effect
    is removed, so a constant offset between prediction and target does not lower it (MAE
    reports that). Returns float64 [A]: NaN for an AU with fewer than two known frames, or where
    both raters are constant over its frames (0/0); NaN also where a prediction is NaN.
    """
    p, t, known = _known_target(pred, target)
    out = np.full(p.shape[1], np.nan)
    k = 2
    for a in range(p.shape[1]):
        m = known[:, a]
        n = int(m.sum())
        if n < 2:
            continue
        r = np.stack([p[m, a], t[m, a]], axis=1)  # [n, k]
        grand = r.mean()
        ss_rows = k * ((r.mean(1) - grand) ** 2).sum()
        ss_cols = n * ((r.mean(0) - grand) ** 2).sum()
        ss_total = ((r - grand) ** 2).sum()
        ss_err = ss_total - ss_rows - ss_cols
        msr = ss_rows / (n - 1)
        mse = max(ss_err, 0.0) / ((n - 1) * (k - 1))  # guard against -1e-17 from rounding
        denom = msr + (k - 1) * mse
        if denom > 0:
            out[a] = (msr - mse) / denom
        elif np.isnan(denom):
            out[a] = np.nan
    return out


def mae(pred: Any, target: Any) -> np.ndarray:
    """Mean absolute error per AU over the frames whose target is known (NaN target left out).

    Returns float64 [A]: NaN for an AU with no known target, or with a NaN prediction where the
    target is known.
    """
    p, t, known = _known_target(pred, target)
    err = np.where(known, np.abs(p - np.where(known, t, 0.0)), 0.0)
    n = known.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, err.sum(0) / np.maximum(n, 1), np.nan)


def pearson(pred: Any, target: Any) -> np.ndarray:
    """Pearson's correlation per AU over the frames whose target is known (NaN target left out).

    Returns float64 [A]: NaN for an AU with fewer than two known frames or where either side is
    constant over them, and where a prediction is NaN.
    """
    p, t, known = _known_target(pred, target)
    out = np.full(p.shape[1], np.nan)
    for a in range(p.shape[1]):
        m = known[:, a]
        if m.sum() < 2:
            continue
        x, y = p[m, a], t[m, a]
        dx, dy = x - x.mean(), y - y.mean()
        denom = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
        if denom > 0:
            out[a] = float(np.clip((dx * dy).sum() / denom, -1.0, 1.0))
        elif math.isnan(denom):
            out[a] = np.nan
    return out


def table_cell(value: Any, std: Any = None, *, missing: str = "nan") -> str:
    """A number as a table cell: three decimals, `missing` for None or NaN.

    With `std` (a number that is not NaN), "value ± std", e.g. a mean over folds and its
    standard deviation over them.
    """
    if value is None or math.isnan(float(value)):
        return missing
    text = f"{float(value):.3f}"
    return text if std is None or math.isnan(float(std)) else f"{text} ± {float(std):.3f}"


def au_table(names: Any, **columns: Any) -> str:
    """A printable per-AU table: one row per AU, one column per keyword, and a `mean` row.

    `names`: the AU names (for example `[1, 2, 4]` or `["AU1", "AU2"]`; printed with `str`).
    Each keyword is a column title and an array [A] of numbers (numpy, torch or a list). Values
    print with three decimals, NaN as `nan`; the mean row is the mean over AUs skipping NaN.

        >>> print(au_table(["AU1", "AU2"], f1=[0.5, 0.7], icc=[0.25, float("nan")]))
        AU       f1    icc
        AU1   0.500  0.250
        AU2   0.700    nan
        mean  0.600  0.250
    """
    labels = [str(n) for n in names]
    cols: dict[str, np.ndarray] = {}
    for title, values in columns.items():
        v = as_2d(values, title)
        if v.shape[1] != 1 and v.shape[0] == 1:
            v = v.T
        v = v[:, 0] if v.shape[1] == 1 else None
        if v is None or v.shape[0] != len(labels):
            raise ValueError(f"au_table: column {title!r} must have one value per AU ({len(labels)})")
        cols[title] = v

    rows = [["AU", *cols]]
    rows += [[label, *(table_cell(v[i]) for v in cols.values())] for i, label in enumerate(labels)]
    rows.append(["mean", *(table_cell(nanmean(v)) for v in cols.values())])
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    lines = []
    for r in rows:
        first = r[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        lines.append("  ".join([first, *rest]).rstrip())
    return "\n".join(lines)
