"""What a frozen backbone's features hold, on the synthetic benchmark: AUs, and what else.

    python -m pretrain.contents RUN_DIR/published/NAME [MORE ...] [resnet18]

A backbone is a published folder (or a run directory with one published backbone) or a timm
architecture name (random initialisation, seeded). For each, on the pooled features of aligned
frames, trained on the training identities and tested on the 30 held-out people:

* AU occurrence, linear probe: from 2% of the labels (the pretraining probe, five draws) and from
  every label (the probe's ceiling);
* head pose: ridge regression of yaw, pitch and roll (R^2), and of the scene's light direction;
  the renderer drew them (`shards.synthetic.Renderer.nuisance`) and no shard stores them, so
  this needs the synthetic set;
* identity: a linear classifier over the held-out people, split by clip, with chance; and the
  same over their videos (each person is filmed in a few scenes: background, light, camera), which
  says how much of the scene the features keep.

A backbone whose AU gain comes with pose or light is reading the camera, not the face: these are
the nuisances a temporal objective can learn instead of AUs (head drift is what changes most
between a clip's frames).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from finetune.backbone import load_backbone
from finetune.config import SyntheticConfig
from finetune.probe import identity_probe, linear_probe, ridge_probe
from pretrain.config import EvalConfig
from pretrain.evaluate import extract, label_draws, sparse_label_draws
from shards.manifest import Manifest
from shards.stream import spread_stride
from shards.synthetic import Renderer, cached_synthetic, clip_number


class Frozen(torch.nn.Module):
    """A timm backbone as `pretrain.evaluate.extract` reads encoders: clips in, per-frame pooled
    features out (the AU embedding is the features themselves)."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # [B, T, 3, H, W]
        features = self.backbone(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        return {"features": features, "au": features}


def nuisance_labels(source: str, keys: np.ndarray, frame_index: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame: pose [N, 3] (yaw, pitch, roll) and light direction [N, 3], drawn again by the
    renderer that wrote the set (its settings are in the manifest)."""
    builder = Manifest.load(source).builder or {}
    if builder.get("name") != "auforge.shards.synthetic":
        raise ValueError(f"{source}: pose and light probes need a synthetic set (its renderer draws them)")
    settings = builder["settings"]
    renderer = Renderer(settings["seed"], settings["identities"], settings["frames"], settings["size"])
    cache: dict[str, dict] = {}
    pose, light = [], []
    for key, index in zip(keys, frame_index):
        if key not in cache:
            cache[key] = renderer.nuisance(clip_number(key))
        drawn = cache[key]
        pose.append(drawn["pose"][index - drawn["start"], :3])
        light.append(drawn["light"])
    return {"pose": np.stack(pose), "light": np.stack(light)}


def contents(spec: str, source: str, ev: EvalConfig, size: int, seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    backbone = load_backbone(spec, input_size=size)
    encoder = Frozen(backbone.model)
    stride = spread_stride(Manifest.load(source).frames_per_clip, ev.frames)
    read = dict(frames=ev.frames, size=backbone.input_size, mean=backbone.mean, std=backbone.std, device="cpu",
                stride=stride)  # fmt: skip
    train, test = extract(encoder, source, "train", ev.probe_clips, **read), extract(encoder, source, "heldout", None, **read)
    draws = [p["linear"] for p in sparse_label_draws(train, test, label_draws(len(train["occ"]), ev)).values()]
    row = {"au_f1_sparse": float(np.mean(draws)), "au_f1_draws": draws}
    row["au_f1_all"] = linear_probe(train["features"], train["occ"], test["features"], test["occ"])["mean_f1"]
    truth = [nuisance_labels(source, part["key"], part["frame_index"]) for part in (train, test)]
    fit = dict(groups=train["identity"])
    pose = ridge_probe(train["features"], truth[0]["pose"], test["features"], truth[1]["pose"], **fit)
    row["pose_r2"], row["yaw_r2"], row["pitch_r2"], row["roll_r2"] = pose["mean_r2"], *map(float, pose["r2"])
    row["light_r2"] = ridge_probe(train["features"], truth[0]["light"][:, :2], test["features"],
                                  truth[1]["light"][:, :2], **fit)["mean_r2"]  # fmt: skip
    leak = identity_probe(test["features"], test["identity"], groups=test["clip"], seed=seed)
    row["identity_acc"], row["identity_chance"] = leak["accuracy"], leak["chance"]
    scene = identity_probe(test["features"], test["video"], groups=test["clip"], seed=seed)
    row["video_acc"], row["video_chance"] = scene["accuracy"], scene["chance"]
    return row


def published(spec: str) -> str:
    """A run directory stands for its one published backbone."""
    found = sorted((Path(spec) / "published").glob("*/config.json")) if Path(spec).is_dir() else []
    return str(found[0].parent) if len(found) == 1 else spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.contents", description=__doc__.split("\n\n")[0])
    parser.add_argument("backbones", nargs="+", help="published folders, run directories or timm names (random init)")
    parser.add_argument("--size", type=int, default=56, help="input size of a random-init backbone (default 56)")
    parser.add_argument("--probe-clips", type=int, default=None, help="training clips read (default: all)")
    args = parser.parse_args(argv)
    source = str(cached_synthetic(**{k: v for k, v in asdict(SyntheticConfig()).items() if k != "_target_"}))
    ev = EvalConfig(probe_clips=args.probe_clips)
    print(f"what each backbone's pooled features hold (held-out people of {source}):")
    print(f"{'backbone':44s} {'AU F1 2%':>9s} {'AU F1 100%':>10s} {'pose R2':>8s} {'(yaw pitch roll)':>18s} "
          f"{'light R2':>8s} {'identity':>8s} {'video':>6s}")  # fmt: skip
    for spec in args.backbones:
        r = contents(published(spec), source, ev, args.size)
        print(f"{spec[-44:]:44s} {r['au_f1_sparse']:9.3f} {r['au_f1_all']:10.3f} {r['pose_r2']:8.3f} "
              f"({r['yaw_r2']:.2f} {r['pitch_r2']:.2f} {r['roll_r2']:.2f}) {r['light_r2']:8.3f} "
              f"{r['identity_acc']:8.3f} {r['video_acc']:6.3f}", flush=True)  # fmt: skip
    print(f"chance: identity {r['identity_chance']:.3f}, video {r['video_chance']:.3f}; "
          f"AU F1 2% is the mean of {len(ev.label_seeds)} label draws")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
