"""Probes of a frozen encoder during and after pretraining.

* AU linear probe with sparse labels (the synthetic benchmark): a seeded random
  `eval.label_fraction` (2%) of the training split's frames keep their labels, a linear probe
  learns AU occurrence from them and is tested on the held-out identities (subject-exclusive),
  on the backbone's pooled features (what a published backbone gives a user); mean F1 per draw,
  and their mean over `eval.label_seeds`.
* kNN probe: the same features, every training frame labelled.
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
            mean, std, device, batch_size: int = 32, stride: int = 1) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-frame backbone features, AU embeddings, AU occurrence labels, identities, video ids,
    clip numbers, clip keys and stored frame indices of the first `clips` clips of a split (all when None),
    read once in manifest order. Frames are
    aligned by their landmarks where the shards have them, as fine-tuning aligns them."""
    stream = ClipStream(source, split=split, frames=frames, stride=stride, batch_size=batch_size, mode="exact",
                        rank=0, world=1, num_workers=0)  # fmt: skip
    n_batches = len(stream) if clips is None else min(len(stream), -(-clips // batch_size))
    out = {"features": [], "au": [], "occ": [], "identity": [], "video": [], "clip": [], "key": [], "frame_index": []}
    was_training = encoder.training
    encoder.eval()
    for number, batch in enumerate(itertools.islice(stream, n_batches)):
        keep = batch.valid
        t = batch.frames.shape[1]
        landmarks = batch.landmarks[keep].flatten(0, 1) if batch.landmarks is not None else None
        crops = face_crops(batch.frames[keep].flatten(0, 1), landmarks, size)
        x = normalize(crops.unflatten(0, (-1, t)).to(device), mean, std)
        encoded = encoder(x)
        out["features"].append(encoded["features"].flatten(0, 1).float().cpu())
        out["au"].append(encoded["au"].flatten(0, 1).float().cpu())
        out["occ"].append(batch.au_occ[keep].flatten(0, 1))
        out["identity"].append(batch.identity[keep].repeat_interleave(t))
        out["video"].append(batch.video[keep].repeat_interleave(t))
        clip_ids = number * batch_size + torch.arange(len(batch))  # one id per clip read
        out["clip"].append(clip_ids[keep].repeat_interleave(t))
        out["key"].append([k for k, kept in zip(batch.keys, keep.tolist()) if kept for _ in range(t)])
        out["frame_index"].append(batch.frame_index[keep].flatten())
    encoder.train(was_training)
    keys = np.array([k for part in out.pop("key") for k in part])
    return {"key": keys, **{k: torch.cat(v).numpy() for k, v in out.items()}}


def sparse_label_draws(train: dict, test: dict, ev) -> dict[int, float]:
    """Label seed -> mean F1 of the AU linear probe that learns from that seed's draw of
    `ev.label_fraction` of the training frames (features and labels as `extract` reads them)."""
    draws = {}
    for seed in ev.label_seeds:
        labelled, _ = labelled_subset(np.arange(len(train["occ"])), ev.label_fraction, seed)
        draws[seed] = linear_probe(train["features"][labelled], train["occ"][labelled], test["features"], test["occ"],
                                   seed=seed)["mean_f1"]  # fmt: skip
    return draws


def probe_encoder(encoder, cfg, source, image_size: int, mean, std, device) -> dict[str, float]:
    """The three probes on one encoder, as flat numbers for logging, on frames of `image_size`
    (the run's provenance: what the encoder trained on)."""
    ev, data = cfg.eval, cfg.data
    manifest = Manifest.load(source) if Path(source).exists() else None
    stride = spread_stride(manifest.frames_per_clip, ev.frames) if manifest else 1
    train = extract(encoder, source, data.train_split, ev.probe_clips, ev.frames, image_size, mean, std, device,
                    stride=stride)  # fmt: skip
    test = extract(encoder, source, data.eval_split, None, ev.frames, image_size, mean, std, device, stride=stride)
    draws = sparse_label_draws(train, test, ev)
    knn = knn_probe(train["features"], train["occ"], test["features"], test["occ"], k=ev.knn_k)
    # split by clip: frames of one clip are near-duplicates and would pass for identity
    leak = identity_probe(test["au"], test["identity"], groups=test["clip"], seed=cfg.train.seed)
    return {
        "probe/linear_f1": float(np.mean(list(draws.values()))),
        **{f"probe/linear_f1_seed{seed}": float(f1) for seed, f1 in draws.items()},
        "probe/knn_f1": float(knn["mean_f1"]),
        "probe/identity_acc": float(leak["accuracy"]),
        "probe/identity_chance": float(leak["chance"]),
    }
