"""finetune.protocol: the published folds and what each fold tests, the empty-fold check, the
seeded label draw, and that the job, the pretraining probes and the SLURM sweeps share it."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from finetune.protocol import PARTS, TEST_PART, fold_split, labelled_subset, parts_for

# The published subject-exclusive parts (ME-GraphAU), written out here independently of the code.
BP4D = {
    1: "F001 M007 F018 F008 F002 M004 F010 F009 M012 M001 F016 M014 F023 M008",
    2: "M011 F003 M010 M002 F005 F022 M018 M017 F013 M016 F020 F011 M013 M005",
    3: "F007 F015 F006 F019 M006 M009 F012 M003 F004 F021 F017 M015 F014",
}
DISFA = {
    1: "SN002 SN010 SN001 SN026 SN027 SN032 SN030 SN009 SN016",
    2: "SN013 SN018 SN011 SN028 SN012 SN006 SN031 SN021 SN024",
    3: "SN003 SN029 SN023 SN025 SN008 SN005 SN007 SN017 SN004",
}


@pytest.mark.parametrize("dataset, published", [("bp4d", BP4D), ("disfa", DISFA)])
def test_folds_test_the_published_parts_as_the_public_loaders_number_them(dataset, published):
    """ME-GraphAU's tool/ scripts: fold 1 tests part 3, fold 2 part 2, fold 3 part 1."""
    assert {k: " ".join(v) for k, v in PARTS[dataset].items()} == published
    assert TEST_PART == {1: 3, 2: 2, 3: 1}
    everyone = np.array([s for k in (1, 2, 3) for s in published[k].split()])
    subjects = np.repeat(everyone, 2)  # two frames each
    assert parts_for(dataset.upper(), subjects) is PARTS[dataset]
    for fold in (1, 2, 3):
        train, test = fold_split(subjects, parts_for(dataset, subjects), fold, dataset)
        assert sorted(set(subjects[test])) == sorted(published[4 - fold].split())
        others = [s for k in (1, 2, 3) if k != 4 - fold for s in published[k].split()]
        assert sorted(set(subjects[train])) == sorted(others)
        assert len(train) + len(test) == len(subjects) and not set(train) & set(test)


def test_other_datasets_deal_their_sorted_subjects_round_robin():
    parts = parts_for("csv", ["c", "a", "e", "b", "d", "a"])
    assert parts == {1: ["a", "d"], 2: ["b", "e"], 3: ["c"]}
    train, test = fold_split(np.array(["a", "b", "c", "d", "e"]), parts, 2, "mine")
    assert test.tolist() == [1, 4] and train.tolist() == [0, 2, 3]


def test_a_fold_that_cannot_be_filled_is_refused_naming_it():
    one = np.array(["p1"] * 5)
    with pytest.raises(ValueError, match=r"mine: fold 3 would train on nobody: .* 1 subject\(s\): p1\b"):
        fold_split(one, parts_for("csv", one), 3, "mine")
    with pytest.raises(ValueError, match=r"mine: fold 2 would test on nobody: it needs subjects of part 2 \(empty\)"):
        fold_split(one, parts_for("csv", one), 2, "mine")
    part1 = np.array(["F001", "M007", "F001"])
    with pytest.raises(ValueError, match=r"bp4d: fold 3 would train on nobody: it needs subjects of part 2 \(M011 F003 "
                                         r".*\) and part 3 \(F007 .* F014\); the data has 2 subject\(s\): F001, M007"):
        fold_split(part1, PARTS["bp4d"], 3, "bp4d")
    with pytest.raises(ValueError, match=r"bp4d: fold 1 would test on nobody: it needs subjects of part 3 \(F007"):
        fold_split(part1, PARTS["bp4d"], 1, "bp4d")
    with pytest.raises(ValueError, match=r"bp4d: subjects in no fold's part: F099"):
        fold_split(np.array(["F001", "F099"]), PARTS["bp4d"], 1, "bp4d")
    with pytest.raises(ValueError, match=r"fold must be one of \[1, 2, 3\], got 4"):
        fold_split(part1, PARTS["bp4d"], 4, "bp4d")


def test_folds_of_a_bp4d_tree_on_disk(tmp_path):
    from test_finetune_data import make_bp4d

    from finetune.data import load_bp4d
    from finetune.labelled import table_frames

    frames = table_frames(load_bp4d(make_bp4d(tmp_path / "BP4D")), 16)  # F001, M007: part 1; F003: part 2
    train, test = fold_split(frames.subjects, parts_for("bp4d", frames.subjects), 2, frames.name)
    assert set(frames.subjects[test]) == {"F003"} and set(frames.subjects[train]) == {"F001", "M007"}
    with pytest.raises(ValueError, match=r"fold 1 would test on nobody.*subject\(s\): F001, F003, M007"):
        fold_split(frames.subjects, parts_for("bp4d", frames.subjects), 1, frames.name)


def test_the_label_draw_is_seeded_and_deterministic():
    train = np.arange(100, 120)
    labelled, unlabelled = labelled_subset(train, 0.25, seed=0)
    assert labelled.tolist() == [102, 104, 106, 113, 119]  # pinned: a change of the draw changes every result
    assert sorted([*labelled, *unlabelled]) == train.tolist()
    assert np.array_equal(labelled_subset(train, 0.25, seed=0)[0], labelled)
    assert labelled_subset(train, 0.25, seed=1)[0].tolist() == [101, 107, 110, 116, 118]
    # the draw depends on the number of training frames, not on their indices
    assert np.array_equal(labelled_subset(train - 100, 0.25, seed=0)[0], labelled - 100)
    assert len(labelled_subset(np.arange(1000), 0.02, seed=3)[0]) == 20
    assert len(labelled_subset(np.arange(10), 0.001, seed=0)[0]) == 1  # at least one frame
    everything, none = labelled_subset(train, 1.0, seed=5)
    assert np.array_equal(everything, train) and len(none) == 0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="label_fraction must be in"):
            labelled_subset(train, bad, seed=0)


def test_one_implementation_serves_the_job_the_probes_and_the_sweeps():
    import finetune.labelled
    import finetune.protocol as protocol
    import finetune.train
    import pretrain.evaluate
    import slurm.finetune

    assert finetune.train.fold_split is protocol.fold_split
    assert finetune.train.labelled_subset is protocol.labelled_subset
    assert pretrain.evaluate.labelled_subset is protocol.labelled_subset
    assert slurm.finetune.TEST_PART is protocol.TEST_PART
    for gone in ("fold_indices", "labelled_subset", "round_robin_folds"):
        assert not hasattr(finetune.labelled, gone)
    assert importlib.util.find_spec("shards.datasets.splits") is None
    with pytest.raises(ValueError, match=r"fold '4' is not one of 1, 2, 3"):
        slurm.finetune.sweep([], ["resnet18"], ["4"], [1.0], None)
