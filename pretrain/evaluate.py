"""Probes of a frozen encoder during and after pretraining.

* AU linear probe with sparse labels (the synthetic benchmark): a seeded random
  `eval.label_fraction` (2%) of the training split's frames keep their labels, a linear probe
  learns AU occurrence from them and is tested on the held-out identities (subject-exclusive),
  on the backbone's pooled features (what a published backbone gives a user); mean F1 per draw,
  and their mean over `eval.label_seeds`.
* kNN probe: the same features and the same sparse labels (cosine, `eval.knn_k` neighbours among
  each draw's labelled frames), mean F1 per draw averaged; before the embedded default had to
  finish in minutes it read every training frame's label (the README's older tables say so).
* Identity leakage: how well a linear classifier tells the held-out people apart from the frozen
  AU embedding (lower is more person-independent), with chance beside it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from finetune.probe import identity_probe, knn_probe, linear_probe
from finetune.protocol import labelled_subset
from shards.batch import normalize
from shards.geometry import face_crops
from shards.manifest import Manifest
from shards.stream import ClipStream, spread_stride


@torch.no_grad()
def extract(encoder, source, split: str | None, clips: int | None, frames: int, size: int,
            mean, std, device, batch_size: int = 32, stride: int = 1,
            rows: np.ndarray | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-frame backbone features, AU embeddings, AU occurrence labels, identities, video ids,
    clip numbers, clip keys and stored frame indices of the first `clips` clips of a split (all when None),
    read once in manifest order. Frames are
    aligned by their landmarks where the shards have them, as fine-tuning aligns them.

    `rows` (frame numbers in read order): only those frames are encoded and returned, the others
    are read and passed over, at a fraction of the cost (frames are encoded one by one: eval-mode
    features do not depend on the batch). `encoder` None: the labels and ids of every frame, no
    features (what choosing `rows` needs)."""
    stream = ClipStream(source, split=split, frames=frames, stride=stride, batch_size=batch_size, mode="exact",
                        rank=0, world=1, num_workers=0)  # fmt: skip
    n_batches = len(stream) if clips is None else min(len(stream), -(-clips // batch_size))
    out = {"features": [], "au": [], "occ": [], "identity": [], "video": [], "clip": [], "key": [], "frame_index": []}
    if encoder is None:
        del out["features"], out["au"]
    else:
        was_training = encoder.training
        encoder.eval()
    read = 0  # frames read so far: the frame number of the batch's first frame
    for number, batch in enumerate(itertools.islice(stream, n_batches)):
        keep = batch.valid
        t = batch.frames.shape[1]
        count = int(keep.sum()) * t
        chosen = torch.ones(count, dtype=torch.bool) if rows is None else \
            torch.from_numpy(np.isin(np.arange(read, read + count), rows))  # fmt: skip
        read += count
        if encoder is not None and chosen.any():
            frames_u8 = batch.frames[keep].flatten(0, 1)[chosen]
            landmarks = batch.landmarks[keep].flatten(0, 1)[chosen] if batch.landmarks is not None else None
            x = normalize(face_crops(frames_u8, landmarks, size).unsqueeze(1).to(device), mean, std)
            encoded = encoder(x)  # one-frame clips [N, 1, ...]: per-frame features and AU embeddings
            out["features"].append(encoded["features"].flatten(0, 1).float().cpu())
            out["au"].append(encoded["au"].flatten(0, 1).float().cpu())
        out["occ"].append(batch.au_occ[keep].flatten(0, 1)[chosen])
        out["identity"].append(batch.identity[keep].repeat_interleave(t)[chosen])
        out["video"].append(batch.video[keep].repeat_interleave(t)[chosen])
        clip_ids = number * batch_size + torch.arange(len(batch))  # one id per clip read
        out["clip"].append(clip_ids[keep].repeat_interleave(t)[chosen])
        keys = [k for k, kept in zip(batch.keys, keep.tolist()) if kept for _ in range(t)]
        out["key"].append([k for k, c in zip(keys, chosen.tolist()) if c])
        out["frame_index"].append(batch.frame_index[keep].flatten()[chosen])
    if encoder is not None:
        encoder.train(was_training)
    keys = np.array([k for part in out.pop("key") for k in part])
    return {"key": keys, **{k: torch.cat(v).numpy() for k, v in out.items()}}


def label_draws(frames: int, ev) -> dict[int, np.ndarray]:
    """Label seed -> the frame numbers (of `frames` training frames, in read order) whose labels
    that seed's draw keeps: `ev.label_fraction` of them."""
    return {seed: labelled_subset(np.arange(frames), ev.label_fraction, seed)[0] for seed in ev.label_seeds}


def sparse_label_draws(train: dict, test: dict, draws: dict[int, np.ndarray], knn_k: int | None = None) -> dict:
    """Label seed -> {"linear": mean F1 of the AU linear probe that learns from that seed's
    labelled rows of `train`, and with `knn_k` "knn": the kNN probe's from the same rows}
    (features and labels as `extract` reads them; `draws`: seed -> rows of `train`)."""
    out = {}
    for seed, rows in draws.items():
        x, y = train["features"][rows], train["occ"][rows]
        out[seed] = {"linear": linear_probe(x, y, test["features"], test["occ"], seed=seed)["mean_f1"]}
        if knn_k is not None:
            out[seed]["knn"] = knn_probe(x, y, test["features"], test["occ"], k=knn_k)["mean_f1"]
    return out


def probe_encoder(encoder, cfg, source, image_size: int, mean, std, device) -> dict[str, float]:
    """The three probes on one encoder, as flat numbers for logging, on frames of `image_size`
    (the run's provenance: what the encoder trained on). Of the training frames only the ones
    some draw labels are encoded (about a tenth at 2% labels and five draws)."""
    ev, data = cfg.eval, cfg.data
    manifest = Manifest.load(source) if Path(source).exists() else None
    read = dict(frames=ev.frames, size=image_size, mean=mean, std=std, device=device,
                stride=spread_stride(manifest.frames_per_clip, ev.frames) if manifest else 1)  # fmt: skip
    frames = len(extract(None, source, data.train_split, ev.probe_clips, **read)["occ"])
    draws = label_draws(frames, ev)
    labelled = np.unique(np.concatenate(list(draws.values())))
    train = extract(encoder, source, data.train_split, ev.probe_clips, rows=labelled, **read)
    test = extract(encoder, source, data.eval_split, None, **read)
    probes = sparse_label_draws(train, test, {s: np.searchsorted(labelled, r) for s, r in draws.items()}, ev.knn_k)
    # split by clip: frames of one clip are near-duplicates and would pass for identity
    leak = identity_probe(test["au"], test["identity"], groups=test["clip"], seed=cfg.train.seed)
    return {
        "probe/linear_f1": float(np.mean([p["linear"] for p in probes.values()])),
        **{f"probe/linear_f1_seed{seed}": float(p["linear"]) for seed, p in probes.items()},
        "probe/knn_f1": float(np.mean([p["knn"] for p in probes.values()])),
        "probe/identity_acc": float(leak["accuracy"]),
        "probe/identity_chance": float(leak["chance"]),
    }
