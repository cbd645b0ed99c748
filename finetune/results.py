"""The fine-tuning result dict: what one evaluation holds, and how to read one back.

One evaluation (`finetune.evaluation.evaluate`) is a plain dict (numbers, strings and lists
only), so that it is written to `metrics.json` as it is (`finetune.report.write_metrics`), read
back with any JSON reader, and passed back to `finetune.folds.combine_folds`,
`finetune.report.print_table` and the plots (`finetune.plots`):

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

Conventions (those of `finetune.metrics`, which computes every number):

* Detection: "f1" is always the protocol's number: F1 per AU at probability 0.5 over the frames
  whose label is known (-1 or NaN unknown). The per-AU thresholds tuned on training data, and the
  test F1 at them, only ever appear under their own keys ("thresholds", "f1_tuned"); they never
  change "f1" or mean["f1"].
* Intensity: ICC(3,1), MAE and Pearson's r per AU over the frames whose target is not NaN.
* A value with nothing to measure (an AU with no known label, say) is NaN in memory and `null` in
  `metrics.json`; every reader of a result reads `None` back as NaN (`as_array`). Means skip NaN.

Fold results (`finetune.folds.combine_folds`) keep every fold under "per_fold" and put the mean
over folds in "per_au" and "mean", so a combined result is read the same way as a single one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["THRESHOLD", "HEADLINE", "as_array", "is_combined", "au_label", "setting_text"]

# the protocol's detection threshold: "f1" is F1 at this probability
THRESHOLD = 0.5
# the metric a table puts per fold and a per-AU plot draws
HEADLINE = {"detection": "f1", "intensity": "icc"}


def as_array(values: Any) -> np.ndarray:
    """A list read from a result (possibly back from JSON, `None` for NaN) as float64 numpy."""
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def is_combined(results: dict) -> bool:
    """Whether `results` is combined folds (`finetune.folds.combine_folds`) rather than one evaluation."""
    return "per_fold" in results


def au_label(name: Any) -> str:
    """`1` or `"1"` -> "AU1"; other names as they are."""
    s = str(name)
    return f"AU{s}" if s.isdigit() else s


def setting_text(setting: Any) -> str:
    """A result's "setting" as one line of text ("" where there is none)."""
    if setting is None or setting == "":
        return ""
    if isinstance(setting, dict):
        return ", ".join(f"{k}={v}" for k, v in setting.items())
    return str(setting)
