"""finetune.evaluation, .folds, .report and .plots: evaluation dicts against finetune.metrics,
train-only threshold tuning, fold means, atomic metrics.json, the table, and PNGs that exist,
open and show something."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from finetune.evaluation import THRESHOLD_GRID, evaluate
from finetune.folds import combine_folds
from finetune.metrics import f1_per_au, icc31, mae, pearson
from finetune.plots import plot_label_fraction, plot_per_au
from finetune.report import print_table, write_metrics

BP4D = [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24]


def _occurrence(seed: int, n: int = 300, a: int = len(BP4D)):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, a)) < rng.uniform(0.1, 0.6, a)).astype(np.int64)
    prob = np.clip(0.3 * labels + 0.75 * rng.random((n, a)), 0, 1)
    labels[rng.random((n, a)) < 0.15] = -1
    return prob, labels


def _intensity(seed: int, n: int = 200, a: int = 5):
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 5, (n, a))
    pred = 0.8 * target + rng.normal(0, rng.uniform(0.3, 2.0, a), (n, a)) + 0.5
    target[rng.random((n, a)) < 0.2] = np.nan
    return pred, target


def _nan_equal(got, want) -> None:
    np.testing.assert_array_equal(np.array(got, dtype=np.float64), np.asarray(want, dtype=np.float64))


# ------------------------------------------------------------------------------------ evaluate


def test_detection_equals_f1_per_au_and_leaves_unknown_out():
    prob, labels = _occurrence(0)
    labels[:, 3] = -1  # an AU with no known label: NaN, skipped by the mean
    r = evaluate("detection", BP4D, prob, labels)
    want = f1_per_au(prob, labels)
    assert r["task"] == "detection" and r["au_names"] == BP4D and r["threshold"] == 0.5
    _nan_equal(r["per_au"]["f1"], want)
    assert math.isnan(r["per_au"]["f1"][3])
    assert r["mean"]["f1"] == pytest.approx(np.nanmean(want), abs=1e-15)
    assert r["support"]["known"] == [int(v) for v in (labels >= 0).sum(0)]
    assert r["support"]["positive"] == [int(v) for v in (labels == 1).sum(0)]
    # no training data given: nothing tuned, and no tuned key at all
    assert "f1_tuned" not in r["per_au"] and "thresholds" not in r and set(r["mean"]) == {"f1"}
    json.dumps(r)  # plain Python values only


def test_detection_rejects_wrong_au_count_and_half_given_train_data():
    prob, labels = _occurrence(1, a=3)
    with pytest.raises(ValueError, match="au_names"):
        evaluate("detection", [1, 2], prob, labels)
    with pytest.raises(ValueError, match="both"):
        evaluate("detection", [1, 2, 4], prob, labels, train_prob=prob)
    with pytest.raises(ValueError, match="task"):
        evaluate("occurrence", [1, 2, 4], prob, labels)


def _tuning_case():
    """Two AUs. On the training data the only best grid threshold is 0.30 for AU A (positives
    0.33, negatives 0.27) and 0.70 for AU B (0.72 vs 0.68). On the test data, thresholds tuned on
    the TEST data would be 0.40 and 0.50 instead, so a leak of test data into tuning shows."""
    train_prob = np.array([[0.33, 0.72]] * 10 + [[0.27, 0.68]] * 10)
    train_labels = np.array([[1, 1]] * 10 + [[0, 0]] * 10)
    test_prob = np.array([
        # AU A: positives 0.4 0.4 0.6 0.6, negatives 0.2 0.2 0.35 0.55
        # AU B: positives 0.75 0.6 0.6 0.8, negatives 0.1 0.65 0.2 0.3
        [0.40, 0.75], [0.40, 0.60], [0.60, 0.60], [0.60, 0.80],
        [0.20, 0.10], [0.20, 0.65], [0.35, 0.20], [0.55, 0.30],
    ])
    test_labels = np.array([[1, 1]] * 4 + [[0, 0]] * 4)
    return train_prob, train_labels, test_prob, test_labels


def test_tuned_thresholds_come_from_training_data_only():
    train_prob, train_labels, test_prob, test_labels = _tuning_case()
    r = evaluate("detection", ["A", "B"], test_prob, test_labels, train_prob=train_prob, train_labels=train_labels)
    assert r["thresholds"] == [0.3, 0.7]
    assert r["threshold_grid"] == list(THRESHOLD_GRID) and THRESHOLD_GRID[0] == 0.05 and THRESHOLD_GRID[-1] == 0.95
    # hand-counted test F1 = 2TP / (2TP + FP + FN)
    # at 0.5:  A: TP 2 (0.6, 0.6), FP 1 (0.55), FN 2 -> 4/7;  B: TP 4, FP 1 (0.65) -> 8/9
    # tuned:   A at 0.3: TP 4, FP 2 (0.35, 0.55) -> 8/10;     B at 0.7: TP 2, FN 2 -> 4/6
    np.testing.assert_allclose(r["per_au"]["f1"], [4 / 7, 8 / 9], rtol=0, atol=1e-12)
    np.testing.assert_allclose(r["per_au"]["f1_tuned"], [0.8, 2 / 3], rtol=0, atol=1e-12)
    assert r["mean"]["f1"] == pytest.approx((4 / 7 + 8 / 9) / 2)
    assert r["mean"]["f1_tuned"] == pytest.approx((0.8 + 2 / 3) / 2)
    # "f1" is the protocol's 0.5 whatever the training data: identical to an untuned evaluation
    plain = evaluate("detection", ["A", "B"], test_prob, test_labels)
    assert r["per_au"]["f1"] == plain["per_au"]["f1"] and r["mean"]["f1"] == plain["mean"]["f1"]
    # and "f1_tuned" is the test F1 at the train thresholds, not at the best test thresholds
    _nan_equal(r["per_au"]["f1_tuned"], [f1_per_au(test_prob[:, 0], test_labels[:, 0], 0.3)[0],
                                         f1_per_au(test_prob[:, 1], test_labels[:, 1], 0.7)[0]])
    best_on_test = [max(f1_per_au(test_prob[:, a], test_labels[:, a], t)[0] for t in THRESHOLD_GRID) for a in (0, 1)]
    assert best_on_test == pytest.approx([8 / 9, 8 / 9])
    assert r["per_au"]["f1_tuned"][0] < best_on_test[0] and r["per_au"]["f1_tuned"][1] < best_on_test[1]
    # changing only the TEST data never changes the thresholds
    r2 = evaluate("detection", ["A", "B"], test_prob[::-1] * 0.9, test_labels[::-1],
                  train_prob=train_prob, train_labels=train_labels)
    assert r2["thresholds"] == [0.3, 0.7]


def test_tuning_ties_and_untunable_aus_keep_half():
    # AU 0: train F1 is 1 for every threshold in (0.2, 0.42], i.e. 0.25 ... 0.40: ties go to the
    # one closest to 0.5, 0.40 (not the first, 0.25). AU 1: no known training label; AU 2: no
    # training positive (F1 0 at every threshold). Both keep 0.5.
    train_prob = np.array([[0.42, 0.9, 0.9], [0.2, 0.1, 0.1]] * 5)
    train_labels = np.array([[1, -1, 0], [0, -1, 0]] * 5)
    prob, labels = _occurrence(3, n=50, a=3)
    r = evaluate("detection", [1, 2, 4], prob, labels, train_prob=train_prob, train_labels=train_labels)
    assert r["thresholds"] == [0.4, 0.5, 0.5]
    assert r["per_au"]["f1_tuned"][1:] == r["per_au"]["f1"][1:]
    assert r["per_au"]["f1_tuned"][0] == f1_per_au(prob[:, 0], labels[:, 0], 0.4)[0]


def test_intensity_equals_metrics():
    pred, target = _intensity(0)
    target[:, 4] = np.nan  # no known target: NaN everywhere, left out of the means
    r = evaluate("intensity", [1, 2, 4, 5, 6], pred, target)
    for key, fn in (("icc", icc31), ("mae", mae), ("pearson", pearson)):
        want = fn(pred, target)
        _nan_equal(r["per_au"][key], want)
        assert r["mean"][key] == pytest.approx(np.nanmean(want), abs=1e-15)
    assert math.isnan(r["per_au"]["icc"][4])
    assert r["support"]["known"] == [int(v) for v in (~np.isnan(target)).sum(0)]
    with pytest.raises(ValueError, match="intensity"):
        evaluate("intensity", [1, 2, 4, 5, 6], pred, target, train_prob=pred, train_labels=target)


# --------------------------------------------------------------------------------------- folds


def _fake(per_au: dict, task: str = "detection", names=("AU1", "AU2", "AU4")) -> dict:
    return {"task": task, "au_names": list(names), "per_au": per_au,
            "mean": {m: float(np.nanmean(v)) for m, v in per_au.items()}}


def test_combine_folds_means():
    nan = math.nan
    folds = {
        1: _fake({"f1": [0.5, 0.6, 0.9]}),
        2: _fake({"f1": [0.7, nan, 0.3]}),  # AU2 has nothing to measure in fold 2
        3: _fake({"f1": [0.6, 0.8, 0.6]}),
    }
    c = combine_folds(folds)
    assert c["folds"] == [1, 2, 3] and c["task"] == "detection" and c["au_names"] == ["AU1", "AU2", "AU4"]
    np.testing.assert_allclose(c["per_au"]["f1"], [0.6, 0.7, 0.6], atol=1e-12)  # AU2: folds 1 and 3 only
    np.testing.assert_allclose(c["fold_mean"]["f1"], [2.0 / 3, 0.5, 2.0 / 3], atol=1e-12)
    # overall: the mean over folds of each fold's mean (not the mean of per_au, 19/30, here)
    assert c["mean"]["f1"] == pytest.approx((2.0 / 3 + 0.5 + 2.0 / 3) / 3)
    assert c["fold_std"]["f1"] == pytest.approx(np.std([2.0 / 3, 0.5, 2.0 / 3]))
    assert c["per_fold"]["2"] is folds[2]


def test_combine_folds_of_evaluations_round_trips_through_json(tmp_path):
    folds = {}
    for k in (1, 2, 3):
        prob, labels = _occurrence(10 + k)
        tprob, tlabels = _occurrence(20 + k)
        folds[k] = evaluate("detection", BP4D, prob, labels, train_prob=tprob, train_labels=tlabels,
                            setting={"dataset": "BP4D", "protocol": "linear probe"})
    c = combine_folds(folds)
    for m in ("f1", "f1_tuned"):
        stack = np.array([folds[k]["per_au"][m] for k in (1, 2, 3)])
        np.testing.assert_allclose(c["per_au"][m], stack.mean(0), atol=1e-12)
        # no NaN anywhere: the mean over AUs of the fold means equals the mean of the fold means
        assert c["mean"][m] == pytest.approx(np.mean([folds[k]["mean"][m] for k in (1, 2, 3)]))
    assert c["setting"] == {"dataset": "BP4D", "protocol": "linear probe"}
    assert c["support"]["known"] == list(np.sum([folds[k]["support"]["known"] for k in (1, 2, 3)], axis=0))
    # results read back from metrics.json (fold keys now strings, NaN now null) combine the same
    back = {}
    for k in (1, 2, 3):
        write_metrics(tmp_path / f"fold{k}.json", folds[k])
        back[k] = json.loads((tmp_path / f"fold{k}.json").read_text())
    assert combine_folds(back)["per_au"] == c["per_au"]


def test_combine_folds_rejects_mismatched_folds():
    with pytest.raises(ValueError, match="AUs"):
        combine_folds({1: _fake({"f1": [0.5, 0.6, 0.9]}), 2: _fake({"f1": [0.5, 0.6]}, names=("AU1", "AU2"))})
    with pytest.raises(ValueError, match="mixed"):
        combine_folds({1: _fake({"f1": [0.5, 0.6, 0.9]}), 2: _fake({"f1": [0.5, 0.6, 0.9], "f1_tuned": [1, 1, 1]})})
    with pytest.raises(ValueError, match="no fold"):
        combine_folds({})


# ---------------------------------------------------------------------------------------- JSON


def test_write_metrics_valid_json_and_atomic(tmp_path, monkeypatch):
    prob, labels = _occurrence(4)
    labels[:, 0] = -1  # NaN F1: must come out as null, not the invalid token NaN
    r = evaluate("detection", BP4D, prob, labels, setting={"labels": np.float32(0.25)})
    path = tmp_path / "run" / "metrics.json"
    write_metrics(path, r)
    text = path.read_text()
    back = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert back["per_au"]["f1"][0] is None
    np.testing.assert_allclose(back["per_au"]["f1"][1:], r["per_au"]["f1"][1:], rtol=0, atol=0)
    assert back["mean"]["f1"] == r["mean"]["f1"] and back["au_names"] == BP4D
    assert back["setting"] == {"labels": 0.25}
    assert os.listdir(path.parent) == ["metrics.json"]  # no temporary file left

    # a failure while replacing the file leaves the old file whole and no temporary file
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_metrics(path, {**r, "mean": {"f1": 0.0}})
    monkeypatch.undo()
    assert path.read_text() == text
    assert os.listdir(path.parent) == ["metrics.json"]
    # something JSON cannot hold is refused, by where it is, before anything is written
    with pytest.raises(TypeError, match=r"results\.setting"):
        write_metrics(path, {**r, "setting": object()})
    assert path.read_text() == text and os.listdir(path.parent) == ["metrics.json"]


# --------------------------------------------------------------------------------------- table


def test_print_table_single_and_combined():
    prob, labels = _occurrence(5)
    tprob, tlabels = _occurrence(6)
    r = evaluate("detection", BP4D, prob, labels, train_prob=tprob, train_labels=tlabels, setting="BP4D 10%")
    text = print_table(r)
    lines = text.splitlines()
    for name in BP4D:
        assert any(line.split()[0] == f"AU{name}" for line in lines), name
    mean_row = [line for line in lines if line.startswith("mean")]
    assert len(mean_row) == 1 and mean_row[0].split()[1] == f"{r['mean']['f1']:.3f}"
    assert mean_row[0].split()[2] == f"{r['mean']['f1_tuned']:.3f}"
    assert "f1_tuned" in lines[1] and "threshold" in lines[1] and "BP4D 10%" in lines[0]

    folds = {k: evaluate("detection", BP4D, *_occurrence(30 + k)) for k in (1, 2, 3)}
    c = combine_folds(folds)
    text = print_table(c)
    head = text.splitlines()[1]
    assert all(f"fold{k}" in head for k in (1, 2, 3)) and "f1 mean" in head
    mean_row = text.splitlines()[-2].split()
    assert mean_row[0] == "mean"
    assert mean_row[1:] == [f"{folds[k]['mean']['f1']:.3f}" for k in (1, 2, 3)] + [f"{np.mean(c['per_au']['f1']):.3f}"]
    assert text.splitlines()[-1] == (f"over 3 folds, mean of the fold means: f1 {c['mean']['f1']:.3f} "
                                     f"(sd {c['fold_std']['f1']:.3f})")
    row = next(line for line in text.splitlines() if line.startswith("AU12 ")).split()
    assert row[1:4] == [f"{folds[k]['per_au']['f1'][6]:.3f}" for k in (1, 2, 3)]

    pred, target = _intensity(7)
    text = print_table(evaluate("intensity", [1, 2, 4, 5, 6], pred, target))
    assert all(t in text.splitlines()[1] for t in ("icc", "mae", "pearson"))
    assert text.splitlines()[-1].startswith("mean")


# --------------------------------------------------------------------------------------- plots


def _check_png(path, min_size=(600, 400)) -> None:
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= min_size[0] and h >= min_size[1] and w <= 4000 and h <= 3000
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 8  # not blank: bars, text, antialiasing
        # the plotted colour (bars #4C72B0 or the first curve) covers a visible part of the image
        n_blue = sum(c for c, rgb in colours if abs(rgb[0] - 0x4C) < 12 and abs(rgb[1] - 0x72) < 12
                     and abs(rgb[2] - 0xB0) < 12)
        assert n_blue > 0.002 * w * h


def test_plots(tmp_path):
    folds = {k: evaluate("detection", BP4D, *_occurrence(40 + k), setting="BP4D, linear probe") for k in (1, 2, 3)}
    plot_per_au(folds[1], tmp_path / "f1.png")
    plot_per_au(combine_folds(folds), tmp_path / "f1_folds.png")
    pred, target = _intensity(8)
    target[:, 2] = np.nan
    plot_per_au(evaluate("intensity", [1, 2, 4, 5, 6], -pred, target), tmp_path / "icc.png")  # negative ICC
    plot_label_fraction({0.01: 0.41, 0.1: 0.55, 1.0: 0.63}, tmp_path / "lf.png",
                        baseline={"0.01": 0.2, "0.1": 0.38, "1.0": None})  # keys as read back from JSON
    for name in ("f1.png", "f1_folds.png", "icc.png", "lf.png"):
        _check_png(tmp_path / name)
    assert sorted(os.listdir(tmp_path)) == ["f1.png", "f1_folds.png", "icc.png", "lf.png"]
    with pytest.raises(ValueError, match="fraction"):
        plot_label_fraction({10: 0.5}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="metric"):
        plot_per_au(folds[1], tmp_path / "bad.png", metric="icc")
