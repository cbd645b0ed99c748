"""finetune.metrics against scikit-learn and the textbook definitions; finetune.probe on synthetic data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from finetune.metrics import au_table, f1_per_au, icc31, mae, mean_f1, pearson
from finetune.probe import identity_probe, knn_probe, linear_probe


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny problems: see conftest.one_thread


# ---------------------------------------------------------------------------------------- F1


def _random_occurrence(seed: int, n: int = 400, a: int = 6):
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.05, 0.6, a)
    labels = (rng.random((n, a)) < rates).astype(np.int64)
    prob = np.clip(0.35 * labels + rng.random((n, a)) * 0.75, 0, 1)
    labels[rng.random((n, a)) < rng.uniform(0.0, 0.4, a)] = -1
    labels[:, 0] = np.where(labels[:, 0] == 1, 0, labels[:, 0])  # AU with no positive, some predicted
    labels[:, 1] = np.where(labels[:, 1] == 1, 0, labels[:, 1])  # no positive and none predicted
    prob[:, 1] = 0.1
    return prob, labels


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_f1_per_au_matches_sklearn(seed):
    prob, labels = _random_occurrence(seed)
    got = f1_per_au(prob, labels)
    assert got.shape == (labels.shape[1],)
    for a in range(labels.shape[1]):
        known = labels[:, a] >= 0
        want = f1_score(labels[known, a], (prob[known, a] >= 0.5).astype(int), zero_division=0)
        assert got[a] == pytest.approx(want, abs=1e-12), a
    assert got[0] == 0.0 and got[1] == 0.0
    assert mean_f1(prob, labels) == pytest.approx(got.mean())
    # torch inputs and hard predictions give the same
    hard = (prob >= 0.5).astype(np.int64)
    np.testing.assert_array_equal(f1_per_au(torch.from_numpy(hard), torch.from_numpy(labels)), got)


def test_f1_unknown_au_is_nan_and_skipped_by_mean():
    prob = np.array([[0.9, 0.9], [0.1, 0.2], [0.8, 0.7]])
    labels = np.array([[1, -1], [0, -1], [1, -1]])
    f1 = f1_per_au(prob, labels)
    assert f1[0] == 1.0 and math.isnan(f1[1])
    assert mean_f1(prob, labels) == 1.0
    assert f1_per_au(prob, labels, threshold=0.95)[0] == 0.0


def test_f1_rejects_unmapped_labels():
    with pytest.raises(ValueError, match="0 or 1"):
        f1_per_au(np.zeros((2, 1)), np.array([[9], [1]]))


# -------------------------------------------------------------------------------------- ICC


def _icc31_anova(x: np.ndarray, y: np.ndarray) -> float:
    """ICC(3,1) written out from the two-way ANOVA table: n targets (rows) by k raters (columns)."""
    r = np.stack([x, y], axis=1)
    n, k = r.shape
    grand = r.mean()
    msr = k * ((r.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    ss_cols = n * ((r.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((r - grand) ** 2).sum() - msr * (n - 1) - ss_cols
    mse = ss_err / ((n - 1) * (k - 1))
    return (msr - mse) / (msr + (k - 1) * mse)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_icc31_matches_anova_definition(seed):
    rng = np.random.default_rng(seed)
    n, a = 300, 5
    target = rng.uniform(0, 5, (n, a))
    pred = 0.7 * target + rng.normal(0, rng.uniform(0.2, 2.0, a), (n, a)) + rng.uniform(-1, 1, a)
    target[rng.random((n, a)) < 0.2] = np.nan
    got = icc31(pred, target)
    for j in range(a):
        keep = ~np.isnan(target[:, j])
        want = _icc31_anova(pred[keep, j], target[keep, j])
        assert got[j] == pytest.approx(want, rel=1e-10, abs=1e-12)
        # and, for k = 2, the closed form 2 cov / (var x + var y)
        c = np.cov(pred[keep, j], target[keep, j])
        assert got[j] == pytest.approx(2 * c[0, 1] / (c[0, 0] + c[1, 1]), rel=1e-10)


def test_icc31_known_values():
    # hand-computed: grand mean 8/3, MSR = 19/6, MSE = 1/6, ICC = (19/6 - 1/6) / (19/6 + 1/6) = 0.9
    assert icc31(np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 5.0]))[0] == pytest.approx(0.9)
    x = np.random.default_rng(0).uniform(0, 5, (50, 3))
    np.testing.assert_allclose(icc31(x, x), 1.0)
    np.testing.assert_allclose(icc31(x + 1.5, x), 1.0)  # consistency: a constant offset is not penalised
    np.testing.assert_allclose(icc31(-x, x), -1.0)
    # fewer than two known frames, constant raters -> NaN
    t = np.array([[1.0, 2.0], [np.nan, 2.0], [np.nan, 2.0]])
    got = icc31(np.array([[1.0, 2.0], [2.0, 2.0], [3.0, 2.0]]), t)
    assert math.isnan(got[0]) and math.isnan(got[1])


def test_mae_and_pearson_match_numpy():
    rng = np.random.default_rng(7)
    n, a = 200, 4
    target = rng.uniform(0, 5, (n, a))
    pred = target + rng.normal(0, 1, (n, a))
    target[rng.random((n, a)) < 0.25] = np.nan
    target[:, 3] = np.nan
    got_mae, got_r = mae(pred, target), pearson(pred, target)
    for j in range(3):
        keep = ~np.isnan(target[:, j])
        assert got_mae[j] == pytest.approx(np.abs(pred[keep, j] - target[keep, j]).mean(), rel=1e-12)
        assert got_r[j] == pytest.approx(np.corrcoef(pred[keep, j], target[keep, j])[0, 1], rel=1e-10)
    assert math.isnan(got_mae[3]) and math.isnan(got_r[3])
    # a NaN prediction where the target is known is not hidden
    pred[0, 0] = np.nan
    if not math.isnan(target[0, 0]):
        assert math.isnan(mae(pred, target)[0]) and math.isnan(pearson(pred, target)[0])


def test_au_table():
    text = au_table(["AU1", "AU2", "AU4"], f1=np.array([0.5, 0.7, np.nan]), icc=torch.tensor([0.2, 0.4, 0.6]))
    lines = text.splitlines()
    assert lines[0].split() == ["AU", "f1", "icc"]
    assert lines[3].split() == ["AU4", "nan", "0.600"]
    assert lines[-1].split() == ["mean", "0.600", "0.400"]
    with pytest.raises(ValueError, match="one value per AU"):
        au_table([1, 2], f1=[0.1, 0.2, 0.3])


# ------------------------------------------------------------------------------ linear probe


def _separable(seed: int, n: int = 3000, d: int = 32, a: int = 5):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.5, 3.0, d).astype(np.float32) + 2.0
    scores = x @ rng.standard_normal((d, a))
    thresholds = np.array([np.quantile(scores[:, j], q) for j, q in enumerate(np.linspace(0.5, 0.85, a))])
    return x, (scores > thresholds).astype(np.int64)


def test_linear_probe_separable():
    x, y = _separable(0)
    out = linear_probe(x[:2000], y[:2000], x[2000:], y[2000:])
    assert set(out) >= {"f1", "mean_f1", "prob"}
    assert out["prob"].shape == (1000, 5) and out["f1"].shape == (5,)
    assert out["mean_f1"] > 0.9, out["f1"]
    # chance: predicting every AU present, F1 = 2p / (1 + p) per AU
    p = y[2000:].mean(0)
    assert out["mean_f1"] > np.mean(2 * p / (1 + p)) + 0.3
    again = linear_probe(torch.from_numpy(x[:2000]), y[:2000], x[2000:], y[2000:], seed=3)
    np.testing.assert_array_equal(again["prob"], out["prob"])  # deterministic, any input type


def test_linear_probe_independent_labels_stays_at_base_rate():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    y = (rng.random((3000, 4)) < np.array([0.1, 0.2, 0.3, 0.4])).astype(np.int64)
    out = linear_probe(x[:2000], y[:2000], x[2000:], y[2000:])
    assert out["mean_f1"] < 0.6
    # balanced weights predict about half the frames present: F1 near 2 p 0.5 / (p + 0.5)
    p = y[2000:].mean(0)
    np.testing.assert_allclose(out["f1"], p / (p + 0.5), atol=0.1)


def test_linear_probe_unknown_labels_are_left_out():
    x, y = _separable(2, n=1500)
    rng = np.random.default_rng(2)
    masked = y.copy()
    masked[rng.random(y.shape) < 0.3] = -1
    wrong = np.where(masked == -1, 1 - y, y)  # what the -1 entries hide would hurt if used
    xtr, xte, yte = x[:1000], x[1000:], y[1000:]
    # L-BFGS reaches the (unique) regularised optimum; a firmer L2 makes that optimum well
    # conditioned, so that fits reached by different paths agree to the tolerance below.
    wd = 1e-2
    base = linear_probe(xtr, masked[:1000], xte, yte, weight_decay=wd)

    # Same rows twice, the second copy all unknown: standardisation statistics (population std)
    # and the loss over known entries are unchanged, so the fit must be too.
    unknown = np.full_like(masked[:1000], -1)
    doubled = linear_probe(np.concatenate([xtr, xtr]), np.concatenate([masked[:1000], unknown]),
                           xte, yte, weight_decay=wd)
    np.testing.assert_allclose(doubled["prob"], base["prob"], atol=1e-3)

    # Each AU is fitted only on its own known frames: fitting one AU alone gives the same column.
    for j in range(y.shape[1]):
        alone = linear_probe(xtr, masked[:1000, [j]], xte, yte[:, [j]], weight_decay=wd)
        np.testing.assert_allclose(alone["prob"][:, 0], base["prob"][:, j], atol=1e-3)

    # Per AU, the known frames by construction: training AU j on exactly its known rows, plus
    # copies of those rows marked unknown to keep the standardisation, gives the same result.
    for j in range(y.shape[1]):
        known = masked[:1000, j] >= 0
        rows = np.concatenate([xtr[known], xtr[~known]])
        labels = np.concatenate([masked[:1000][known, j], np.full((~known).sum(), -1)])[:, None]
        ref = linear_probe(rows, labels, xte, yte[:, [j]], weight_decay=wd)
        np.testing.assert_allclose(ref["prob"][:, 0], base["prob"][:, j], atol=1e-3)

    # and the mask matters: feeding the hidden (wrong) labels instead gives a worse probe
    hurt = linear_probe(xtr, wrong[:1000], xte, yte, weight_decay=wd)
    assert base["mean_f1"] > hurt["mean_f1"] + 0.1


def test_linear_probe_au_without_train_positives():
    x, y = _separable(3, n=1200, a=3)
    ytr = y[:800].copy()
    ytr[:, 1] = np.where(ytr[:, 1] == 1, -1, ytr[:, 1])  # AU 1: no known positive in train
    yte = y[800:]
    out = linear_probe(x[:800], ytr, x[800:], yte)
    assert (out["prob"][:, 1] == 0).all()
    assert out["f1"][1] == 0.0  # positives in test, none predicted
    assert out["f1"][0] > 0.85 and out["f1"][2] > 0.85


# --------------------------------------------------------------------------------- kNN probe


def _clusters(seed: int, per: int = 150, centres: int = 6, d: int = 24, a: int = 5, noise: float = 0.15):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    pattern = rng.random((centres, a)) < 0.4
    pattern[0] = True
    which = np.repeat(np.arange(centres), per)
    x = (c[which] + noise * rng.standard_normal((len(which), d))).astype(np.float32)
    y = pattern[which].astype(np.int64)
    perm = rng.permutation(len(which))
    return x[perm], y[perm]


def test_knn_probe_clustered():
    x, y = _clusters(0)
    n = len(x) * 2 // 3
    ytr = y[:n].copy()
    ytr[np.random.default_rng(0).random(ytr.shape) < 0.3] = -1  # unknown neighbours are ignored
    out = knn_probe(x[:n], ytr, x[n:], y[n:], k=15)
    assert out["prob"].shape == (len(x) - n, y.shape[1])
    assert out["mean_f1"] > 0.95, out["f1"]


def test_knn_vote_ignores_unknown_neighbours():
    train = np.array([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [-1.0, 0.0]], dtype=np.float32)
    labels = np.array([[1, 0], [-1, 1], [0, 1], [0, 0]])
    test = np.array([[2.0, 0.0]], dtype=np.float32)  # cosine: nearest are the first three
    out = knn_probe(train, labels, test, np.array([[1, 1]]), k=3)
    np.testing.assert_allclose(out["prob"], [[0.5, 2 / 3]])  # AU 0: one of two known; AU 1: two of three
    assert out["mean_f1"] == 1.0  # 0.5 is a positive vote


# ---------------------------------------------------------------------------- identity probe


def test_identity_probe_leaky_features():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(20), 30)
    onehot = np.eye(20)[ids]
    noise = 0.15 * rng.standard_normal((len(ids), 32))  # 0.3 would put even the Bayes rate near 0.85
    x = np.concatenate([onehot, np.zeros((len(ids), 12))], axis=1) + noise
    out = identity_probe(x, ids)
    assert out["identities"] == 20 and out["train"] == out["test"] == 300 and out["dropped"] == 0
    assert out["accuracy"] > 0.95
    assert out["chance"] == pytest.approx(1 / 20) and out["uniform"] == pytest.approx(1 / 20)
    assert identity_probe(x, ids) == out  # deterministic


def test_identity_probe_noise_is_at_chance():
    rng = np.random.default_rng(1)
    names = np.array([f"S{i:03d}" for i in range(10)])
    ids = np.repeat(names, 100)
    x = rng.standard_normal((len(ids), 16))
    out = identity_probe(x, ids, seed=5)
    assert out["test"] == 500 and out["identities"] == 10
    # features independent of identity and a balanced test set: accuracy ~ Binomial(500, 0.1) / 500
    sd = math.sqrt(0.1 * 0.9 / 500)
    assert abs(out["accuracy"] - 0.1) < 4 * sd, out


def test_identity_probe_split_is_stratified_and_drops_singletons():
    rng = np.random.default_rng(2)
    ids = np.array([0] * 10 + [1] * 7 + [2] * 1 + [3] * 4)
    x = rng.standard_normal((len(ids), 8))
    out = identity_probe(x, ids, test_share=0.25)
    # test per identity: round(10/4)=2, round(7/4)=2, round(4/4)=1 -> 5; identity 2 dropped
    assert out["identities"] == 3 and out["dropped"] == 1
    assert out["test"] == 5 and out["train"] == 16


def test_identity_probe_groups_keep_clips_on_one_side():
    """Near-duplicate frames of one clip: a sample split lets a probe recognise the clip and call
    it identity; a split by clip does not, when the features carry clip but not identity."""
    rng = np.random.default_rng(0)
    identities, clips_per_id, frames = 10, 4, 6
    clip_codes = rng.normal(0, 1, (identities * clips_per_id, 32))
    clip = np.repeat(np.arange(identities * clips_per_id), frames)
    identity = clip // clips_per_id
    x = clip_codes[clip] + 0.05 * rng.normal(0, 1, (len(clip), 32))
    by_sample = identity_probe(x, identity, seed=0)
    by_clip = identity_probe(x, identity, groups=clip, seed=0)
    assert by_sample["accuracy"] > 0.9
    assert by_clip["accuracy"] < 0.3  # chance is 0.1: no identity beyond the clip
    assert by_clip["train"] + by_clip["test"] == len(clip)
