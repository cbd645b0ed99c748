"""Frozen-feature probes: how much AU and identity information a backbone's features hold.

Used by pretraining's evaluation (linear and kNN AU probes, identity leakage) and by fine-tuning
(the linear-probe protocol). Features are arrays `[N, D]`, numpy or torch; AU labels are int
`[N, A]` with -1 for unknown (see `finetune.metrics`). Every probe is deterministic: the linear
models start from zero weights and are fitted full-batch, the only random choice (the identity
probe's split) comes from `seed`. They run on CPU by default (`device=` moves the fit) and take
seconds for ~10k x 512 features.

* `linear_probe`: multi-label logistic regression (one independent logistic model per AU,
  fitted together), features standardised with train statistics, unknown labels masked out of
  the loss, positives weighted by neg/pos per AU (`balanced=True`).
* `knn_probe`: cosine k nearest neighbours; an AU is predicted present where at least half of
  the neighbours whose label is known have it.
* `identity_probe`: a softmax linear classifier over identities, trained and tested on disjoint
  samples of the same identities. High accuracy means the features leak identity.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from finetune.metrics import f1_per_au

__all__ = ["linear_probe", "knn_probe", "identity_probe", "ridge_probe", "ridge_predictions"]


def _features(x: Any, name: str, device: torch.device | str = "cpu") -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.to(device=device, dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"{name}: expected features [N, D], got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return t


def _labels(y: Any, n: int, name: str) -> np.ndarray:
    """Occurrence labels as float64 [N, A] with -1 for unknown (NaN is taken as unknown)."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    a = np.asarray(y, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] != n:
        raise ValueError(f"{name}: expected labels [{n}, A], got shape {a.shape}")
    a = np.where(np.isnan(a), -1.0, a)
    bad = (a >= 0) & (a != 0) & (a != 1)
    if bad.any():
        raise ValueError(f"{name}: known labels must be 0 or 1 (-1 for unknown); "
                         f"found {np.unique(a[bad])[:5].tolist()}")
    a[a < 0] = -1.0
    return a


def _result(prob: np.ndarray, test_y: np.ndarray) -> dict:
    f1 = f1_per_au(prob, test_y)
    finite = f1[~np.isnan(f1)]
    return {"f1": f1, "mean_f1": float(finite.mean()) if finite.size else math.nan, "prob": prob}


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = train.mean(0, keepdim=True)
    std = train.std(0, unbiased=False, keepdim=True)
    std = torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))
    return [(t - mean) / std for t in (train, *others)]


def _minimise(objective, params: list[torch.Tensor], max_iter: int, lr: float) -> None:
    """Minimise a smooth convex `objective()` over `params` in place: full-batch L-BFGS with a
    strong-Wolfe line search, at most `max_iter` iterations (each one or a few passes over the
    data), stopping earlier once the gradient or the change of the loss is negligible."""
    opt = torch.optim.LBFGS(params, lr=lr, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)


def linear_probe(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    *,
    epochs: int = 200,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
    balanced: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict:
    """Multi-label logistic regression on frozen features; F1 per AU on the test set.

    Features are standardised with the train mean and (population) standard deviation. Each AU
    has its own weights and bias. The objective is, summed over AUs, the mean binary
    cross-entropy over the train frames whose label for that AU is known (-1 entries do not
    enter it at all), plus `weight_decay / 2 * ||W||^2` (the bias is not penalised). It is
    strictly convex, and is minimised from zero by full-batch L-BFGS with a strong-Wolfe line
    search (`epochs` = at most that many L-BFGS iterations, `lr` its initial step; it stops early
    once converged). So the result is the regularised maximum-likelihood fit, not an artefact of
    an optimiser schedule, and since the AUs share no parameter, each AU's fit is the one it
    would get alone on its known frames (the standardisation statistics use all train rows).
    `weight_decay=1e-4` is about scikit-learn's `C=1` for ~10k train frames (C = 1 / (wd N)).

    `balanced`: weight positives by neg/pos (counted over the known train labels of that AU),
    the usual answer to skewed AU base rates. An AU whose known train labels hold one class only
    (or none) is not fitted: it is predicted absent (probability 0), or present (1) if all its
    known train labels are positive; its test F1 is computed as for any other AU.

    `seed` seeds torch's generator for the fit; the fit itself draws nothing (zero start, full
    batch), so it is identical for every seed. Returns {"f1": float64 [A], "mean_f1": float
    (NaN-skipping mean), "prob": float32 numpy [N_test, A] test probabilities}.
    """
    xtr = _features(train_x, "train_x", device)
    xte = _features(test_x, "test_x", device)
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train_x and test_x differ in width: {xtr.shape[1]} vs {xte.shape[1]}")
    ytr = _labels(train_y, xtr.shape[0], "train_y")
    yte = _labels(test_y, xte.shape[0], "test_y")
    if ytr.shape[1] != yte.shape[1]:
        raise ValueError(f"train_y and test_y differ in AUs: {ytr.shape[1]} vs {yte.shape[1]}")
    xtr, xte = _standardise(xtr, xte)

    known_np = ytr >= 0
    pos = ((ytr == 1) & known_np).sum(0)
    neg = ((ytr == 0) & known_np).sum(0)
    fit = (pos > 0) & (neg > 0)
    constant = np.where(pos > 0, 1.0, 0.0).astype(np.float32)  # for the AUs that are not fitted

    prob = np.repeat(constant[None, :], xte.shape[0], axis=0)
    if fit.any():
        cols = np.flatnonzero(fit)
        y = torch.as_tensor(np.where(known_np, ytr, 0.0)[:, cols], dtype=torch.float32, device=device)
        known = torch.as_tensor(known_np[:, cols], dtype=torch.float32, device=device)
        count = known.sum(0)
        pw = neg[cols] / pos[cols] if balanced else np.ones(len(cols))
        pos_weight = torch.as_tensor(pw, dtype=torch.float32, device=device)

        torch.manual_seed(seed)
        weight = torch.zeros(xtr.shape[1], len(cols), device=device, requires_grad=True)
        bias = torch.zeros(len(cols), device=device, requires_grad=True)

        def objective() -> torch.Tensor:
            logits = xtr @ weight + bias
            loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight, reduction="none")
            return ((loss * known).sum(0) / count).sum() + 0.5 * weight_decay * weight.square().sum()

        _minimise(objective, [weight, bias], epochs, lr)
        with torch.no_grad():
            prob[:, cols] = torch.sigmoid(xte @ weight + bias).cpu().numpy()
    return _result(prob.astype(np.float32), yte)


def knn_probe(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    k: int = 20,
    *,
    chunk: int = 2048,
    device: torch.device | str = "cpu",
) -> dict:
    """Cosine k-nearest-neighbour AU probe.

    Each test sample takes its `k` most cosine-similar train samples (`k` is capped at the train
    size; ties are broken by torch.topk, deterministically). For each AU the probability is the
    mean label of the neighbours whose label for that AU is known (unknown ones are ignored),
    0 if none is known; the AU is predicted present where it is >= 0.5 (a majority or a tie of
    the known votes). Returns {"f1", "mean_f1", "prob"} like `linear_probe`.
    """
    xtr = F.normalize(_features(train_x, "train_x", device), dim=1)
    xte = F.normalize(_features(test_x, "test_x", device), dim=1)
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train_x and test_x differ in width: {xtr.shape[1]} vs {xte.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ytr = _labels(train_y, xtr.shape[0], "train_y")
    yte = _labels(test_y, xte.shape[0], "test_y")
    if ytr.shape[1] != yte.shape[1]:
        raise ValueError(f"train_y and test_y differ in AUs: {ytr.shape[1]} vs {yte.shape[1]}")
    k = min(k, xtr.shape[0])
    known = torch.as_tensor(ytr >= 0, dtype=torch.float32, device=device)
    positive = torch.as_tensor(ytr == 1, dtype=torch.float32, device=device)
    prob = np.zeros((xte.shape[0], ytr.shape[1]), dtype=np.float32)
    for start in range(0, xte.shape[0], chunk):
        sim = xte[start:start + chunk] @ xtr.T
        idx = sim.topk(k, dim=1).indices  # [c, k]
        votes = positive[idx].sum(1)  # [c, A]
        counted = known[idx].sum(1)
        p = torch.where(counted > 0, votes / counted.clamp_min(1), torch.zeros_like(votes))
        prob[start:start + p.shape[0]] = p.cpu().numpy()
    return _result(prob, yte)


def _ridge(xtr: torch.Tensor, ytr: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, centre) of W = (X'X / N + alpha I)^-1 X'(Y - centre) / N."""
    centre = ytr.mean(0)
    gram = xtr.T @ xtr / len(xtr) + alpha * torch.eye(xtr.shape[1], dtype=xtr.dtype)
    return torch.linalg.solve(gram, xtr.T @ (ytr - centre) / len(xtr)), centre


def _r2(y: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    return 1 - (y - prediction).pow(2).sum(0) / (y - y.mean(0)).pow(2).sum(0).clamp_min(1e-12)


def ridge_probe(train_x: Any, train_y: Any, test_x: Any, test_y: Any, *, groups: Any = None,
                alphas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)) -> dict:  # fmt: skip
    """Linear regression of continuous targets from frozen features: standardised features, ridge
    in closed form on centred targets, its strength chosen among `alphas` by the mean R^2 on half
    of the training `groups` (e.g. identities: the other half fits), then refitted on all of the
    training set. Returns {"r2": R^2 per target on the test set (1 - residual / total variance
    around the test mean: 0 is no better than a constant, negative worse), "mean_r2", "alpha"}."""
    xtr, xte = _standardise(_features(train_x, "train_x").double(), _features(test_x, "test_x").double())
    ytr = torch.as_tensor(np.asarray(train_y), dtype=torch.float64).reshape(len(xtr), -1)
    yte = torch.as_tensor(np.asarray(test_y), dtype=torch.float64).reshape(len(xte), -1)
    alpha = alphas[0]
    if len(alphas) > 1:
        g = np.asarray(groups) if groups is not None else np.arange(len(xtr))
        names = np.unique(g)
        held = torch.as_tensor(np.isin(g, np.random.default_rng(0).permutation(names)[: len(names) // 2]))
        scores = []
        for a in alphas:
            weight, centre = _ridge(xtr[~held], ytr[~held], a)
            scores.append(float(_r2(ytr[held], centre + xtr[held] @ weight).mean()))
        alpha = alphas[int(np.argmax(scores))]
    weight, centre = _ridge(xtr, ytr, alpha)
    r2 = _r2(yte, centre + xte @ weight).numpy()
    return {"r2": r2, "mean_r2": float(r2.mean()), "alpha": alpha}


def ridge_predictions(train_x: Any, train_y: Any, test_x: Any, *, alpha: float = 1.0) -> np.ndarray:
    """Continuous targets [N_test, A] predicted from frozen features by ridge regression (standardised
    features, closed form, strength `alpha`), each target fitted on the training rows where it is
    known (not NaN); a target known nowhere is predicted NaN. For AU intensity probes."""
    xtr, xte = _standardise(_features(train_x, "train_x").double(), _features(test_x, "test_x").double())
    ytr = np.asarray(train_y, dtype=np.float64).reshape(len(xtr), -1)
    out = np.full((len(xte), ytr.shape[1]), np.nan)
    for a in range(ytr.shape[1]):
        known = torch.as_tensor(np.isfinite(ytr[:, a]))
        if known.any():
            weight, centre = _ridge(xtr[known], torch.as_tensor(ytr[:, a])[known][:, None], alpha)
            out[:, a] = (centre + xte @ weight).numpy()[:, 0]
    return out


def identity_probe(
    x: Any,
    identity: Any,
    *,
    test_share: float = 0.5,
    groups: Any = None,
    seed: int = 0,
    epochs: int = 100,
    lr: float = 1.0,
    weight_decay: float = 1e-4,
    device: torch.device | str = "cpu",
) -> dict:
    """Identity leakage: accuracy of a linear softmax classifier over identities on held-out samples.

    `identity` [N]: any hashable labels (ints or strings). Each identity's samples are shuffled
    (numpy generator seeded by `seed`) and `round(n * test_share)` of them, at least one and at
    most n - 1, go to the test set, the rest to train; identities with a single sample cannot be
    both trained on and tested, so they are left out (counted in "dropped"). With `groups` [N]
    (a clip or video id per sample) whole groups are split instead, so that near-identical
    frames of one clip never sit on both sides and pass for identity; identities with a single
    group are left out. Features are
    standardised with train statistics and the classifier is fitted like `linear_probe`'s: mean
    cross-entropy plus `weight_decay / 2 * ||W||^2`, full-batch L-BFGS from zero, at most
    `epochs` iterations.

    Returns {"accuracy": test accuracy, "chance": the majority baseline, i.e. the test accuracy
    of always answering the most frequent train identity (= 1/identities when every identity has
    as many samples), "uniform": 1/identities, "identities": identities used, "train": samples,
    "test": samples, "dropped": samples left out}. Accuracy near "chance" means the features hold
    no linearly decodable identity; near 1, they leak it.
    """
    feats = _features(x, "x", "cpu")
    ids = np.asarray(identity.detach().cpu().numpy() if isinstance(identity, torch.Tensor) else identity)
    if ids.ndim != 1 or ids.shape[0] != feats.shape[0]:
        raise ValueError(f"identity: expected [{feats.shape[0]}], got shape {ids.shape}")
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must lie strictly between 0 and 1, got {test_share}")
    if ids.dtype == object and any(i is None for i in ids):
        raise ValueError("identity: contains None (unknown identity); leave those samples out first")
    _, codes, counts = np.unique(ids, return_inverse=True, return_counts=True)
    rng = np.random.default_rng(seed)
    train_idx, test_idx, dropped = [], [], 0
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    group_codes = np.unique(np.asarray(groups), return_inverse=True)[1] if groups is not None else None
    for c in range(len(counts)):
        members = order[bounds[c]:bounds[c + 1]]
        units = np.unique(group_codes[members]) if group_codes is not None else members
        n = len(units)
        if n < 2:
            dropped += len(members)
            continue
        units = units[rng.permutation(n)]
        n_test = min(max(int(round(n * test_share)), 1), n - 1)
        if group_codes is None:
            test_idx.append(units[:n_test])
            train_idx.append(units[n_test:])
        else:
            in_test = np.isin(group_codes[members], units[:n_test])
            test_idx.append(members[in_test])
            train_idx.append(members[~in_test])
    if not train_idx:
        raise ValueError("identity_probe: no identity has two or more samples")
    tr, te = np.concatenate(train_idx), np.concatenate(test_idx)
    kept = np.unique(codes[tr])
    remap = np.full(len(counts), -1)
    remap[kept] = np.arange(len(kept))
    ytr = torch.as_tensor(remap[codes[tr]], dtype=torch.long, device=device)
    yte = remap[codes[te]]

    xtr, xte = _standardise(feats[tr].to(device), feats[te].to(device))
    torch.manual_seed(seed)
    n_cls = len(kept)
    weight = torch.zeros(xtr.shape[1], n_cls, device=device, requires_grad=True)
    bias = torch.zeros(n_cls, device=device, requires_grad=True)

    def objective() -> torch.Tensor:
        return F.cross_entropy(xtr @ weight + bias, ytr) + 0.5 * weight_decay * weight.square().sum()

    _minimise(objective, [weight, bias], epochs, lr)
    with torch.no_grad():
        pred = (xte @ weight + bias).argmax(1).cpu().numpy()
    majority = int(np.bincount(remap[codes[tr]], minlength=n_cls).argmax())
    return {
        "accuracy": float((pred == yte).mean()),
        "chance": float((yte == majority).mean()),
        "uniform": 1.0 / n_cls,
        "identities": n_cls,
        "train": int(len(tr)),
        "test": int(len(te)),
        "dropped": dropped,
    }
