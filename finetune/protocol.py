"""The evaluation protocol, the one implementation that the fine-tuning job, the pretraining
probes (pretrain/evaluate.py) and the SLURM sweeps (slurm/finetune.py) share.

* Subject-exclusive 3-fold cross-validation. The subjects are cut into three parts: for BP4D
  and DISFA the published parts (`PARTS`, as published with ME-GraphAU), for any other dataset
  its sorted subjects dealt round robin. **Fold k tests on part `TEST_PART[k]` and trains on
  the other two parts.** The mapping follows the public loaders (ME-GraphAU's `tool/` scripts
  write "fold1: train part1+part2, test part3; fold2: test part2; fold3: test part1"), so that
  per-fold numbers compare with published per-fold tables: fold 1 tests on the part that starts
  F007 F015 (BP4D) or SN003 SN029 (DISFA), fold 3 on the one that starts F001 M007 or SN002
  SN010. This mapping is the only place that says so.
* The few-label draw: a seeded random share of the training frames keeps its labels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TEST_PART", "PARTS", "parts_for", "fold_split", "labelled_subset"]

TEST_PART = {1: 3, 2: 2, 3: 1}  # fold k tests on part TEST_PART[k], trains on the others (ME-GraphAU)

PARTS: dict[str, dict[int, list[str]]] = {
    "bp4d": {
        1: "F001 M007 F018 F008 F002 M004 F010 F009 M012 M001 F016 M014 F023 M008".split(),
        2: "M011 F003 M010 M002 F005 F022 M018 M017 F013 M016 F020 F011 M013 M005".split(),
        3: "F007 F015 F006 F019 M006 M009 F012 M003 F004 F021 F017 M015 F014".split(),
    },
    "disfa": {
        1: "SN002 SN010 SN001 SN026 SN027 SN032 SN030 SN009 SN016".split(),
        2: "SN013 SN018 SN011 SN028 SN012 SN006 SN031 SN021 SN024".split(),
        3: "SN003 SN029 SN023 SN025 SN008 SN005 SN007 SN017 SN004".split(),
    },
}


def parts_for(dataset: str, subjects) -> dict[int, list[str]]:
    """The three parts of `dataset`: the published ones, else `subjects` sorted, dealt round robin."""
    if dataset.lower() in PARTS:
        return PARTS[dataset.lower()]
    ordered = sorted(set(subjects))
    return {k: ordered[k - 1 :: 3] for k in (1, 2, 3)}


def fold_split(subjects, parts: dict[int, list[str]], fold: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into `subjects` (one entry per frame) for `fold`.

    Refused with `ValueError` before anything trains: a fold that is not 1, 2 or 3; a subject in
    no part (it would be dropped silently); a fold whose test or train side holds none of the
    data's subjects (a run would otherwise die later on an empty loader), naming the fold, the
    subjects it needs and the subjects found.
    """
    if fold not in TEST_PART:
        raise ValueError(f"{name}: fold must be one of {sorted(TEST_PART)}, got {fold!r}")
    subjects = np.asarray(subjects)
    found = sorted(set(subjects.tolist()))
    stray = sorted(set(found) - {s for members in parts.values() for s in members})
    if stray:
        raise ValueError(f"{name}: subjects in no fold's part: {', '.join(stray)}")
    test_part = TEST_PART[fold]
    train_parts = [p for p in sorted(parts) if p != test_part]
    for verb, side_parts in (("test on", [test_part]), ("train on", train_parts)):
        members = [s for p in side_parts for s in parts[p]]
        if not set(members) & set(found):
            listed = " and ".join(f"part {p} ({' '.join(parts[p]) or 'empty'})" for p in side_parts)
            raise ValueError(
                f"{name}: fold {fold} would {verb} nobody: it needs subjects of {listed}; "
                f"the data has {len(found)} subject(s): {', '.join(found)}. Every fold needs subjects of its "
                "test part and of the other two (where parts are dealt round robin: at least 3 subjects)")
    test = np.isin(subjects, parts[test_part])
    return np.flatnonzero(~test), np.flatnonzero(test)


def labelled_subset(train: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelled, unlabelled), both sorted: `round(fraction * len(train))` (at least 1) of the
    `train` indices keep their labels, the first of `numpy.random.default_rng(seed)`'s
    permutation of them. The draw depends only on len(train), `fraction` and `seed`."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    train = np.asarray(train)
    n = max(1, round(len(train) * fraction))
    order = np.random.default_rng(seed).permutation(len(train))
    return np.sort(train[order[:n]]), np.sort(train[order[n:]])
