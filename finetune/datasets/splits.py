"""Protocols over a frame table: the subject-exclusive folds and the few-label mask."""

from __future__ import annotations

import numpy as np

from finetune.datasets.table import FOLDS, FrameTable

__all__ = ["fold_split", "label_mask"]


def fold_split(table: FrameTable, dataset: str, fold: int) -> tuple[FrameTable, FrameTable]:
    """`(train, test)` for `fold` of `dataset`'s published 3-fold split (`FOLDS`).

    test = the table's frames of the fold's subjects, train = those of the other two folds.
    A subject of the table that is in no fold raises `ValueError` naming it (it would otherwise
    be silently dropped, or leak into both sides); so does a side left empty.
    """
    key = dataset.lower()
    if key not in FOLDS:
        raise ValueError(f"unknown dataset {dataset!r} for fold_split; known: {sorted(FOLDS)}")
    folds = FOLDS[key]
    if fold not in folds:
        raise ValueError(f"{dataset}: fold must be one of {sorted(folds)}, got {fold!r}")
    everyone = {s for members in folds.values() for s in members}
    stray = [s for s in table.subjects() if s not in everyone]
    if stray:
        raise ValueError(f"{table.name}: subjects in no {key} fold: {stray}")
    test_subjects = set(folds[fold])
    train_subjects = everyone - test_subjects
    present = set(table.subjects())
    for side, subjects in (("test", test_subjects), ("train", train_subjects)):
        if not subjects & present:
            raise ValueError(f"{table.name}: {key} fold {fold} leaves the {side} side empty: none of "
                             f"its subjects {sorted(subjects)} is in the table")  # fmt: skip
    train = table._filter(train_subjects, f"{table.name}/fold{fold}-train")
    test = table._filter(test_subjects, f"{table.name}/fold{fold}-test")
    return train, test


def label_mask(table: FrameTable | int, fraction: float, seed: int) -> np.ndarray:
    """bool [N]: the frames that keep their labels, `round(fraction * N)` of them (at least 1)
    drawn uniformly without replacement by `numpy.random.default_rng(seed)`.

    The draw depends only on N, `fraction` and `seed`, so the same table order gives the same
    mask; `fraction=1.0` keeps every frame. (Sanchez et al. train their intensity regressor on
    2% of frames chosen this way, the loss taken at labelled frames only.)
    """
    n = table if isinstance(table, int) else len(table)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    if fraction >= 1.0:
        mask[:] = True
        return mask
    k = min(n, max(1, int(round(fraction * n))))
    mask[np.random.default_rng(seed).choice(n, size=k, replace=False)] = True
    return mask
