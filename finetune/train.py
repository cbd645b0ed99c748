"""The fine-tuning job on accelerate: one fold (or all three), a backbone and a head, few labels.

Modes: `linear` (frozen backbone, linear head: the linear-probe protocol), `mlp` (frozen, MLP
head), `finetune` (everything, layer-wise learning-rate decay through timm). Detection uses
binary cross-entropy with positives weighted neg/pos per AU (skewed base rates); intensity
regresses 0..5 with a squared error. Unknown labels never enter a loss.

Semi-supervised (`semi=pseudo`, WSRTL-style): each step also takes a batch of the unlabelled
training frames; where the model is confident (p > t or p < 1 - t, t = `pseudo_threshold`) its
own hard prediction, made without gradient, becomes a label weighted `pseudo_weight`.
Identity-adversarial (`identity_adversarial > 0`, FMAE-IAT): a gradient-reversal head predicts
the training subject from the features, pushing the backbone to drop identity.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetune import report
from finetune.backbone import load_backbone
from finetune.frames import (
    ClipDataset,
    FrameDataset,
    Frames,
    clip_windows,
    fold_indices,
    labelled_subset,
    round_robin_folds,
    shard_frames,
)
from finetune.heads import IdentityAdversary, make_head
from shards.batch import normalize

log = logging.getLogger("finetune")


class AUModel(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, frozen: bool, adversary: nn.Module | None):
        super().__init__()
        self.backbone, self.head, self.frozen, self.adversary = backbone, head, frozen, adversary
        if frozen:
            self.backbone.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict:
        """Frames [N, 3, H, W] -> logits [N, A]; clips [B, T, 3, H, W] -> logits [B, T, A]."""
        clips = x.ndim == 5
        flat = x.flatten(0, 1) if clips else x
        if self.frozen:
            self.backbone.eval()  # frozen means frozen BatchNorm statistics too
            with torch.no_grad():
                features = self.backbone(flat)
        else:
            features = self.backbone(flat)
        if clips:
            features = features.view(x.shape[0], x.shape[1], -1)
        out = {"logits": self.head(features)}
        if self.adversary is not None:
            out["identity"] = self.adversary(features.mean(1) if clips else features)
        return out


def load_frames(cfg, size: int) -> tuple[Frames, dict[int, list[str]]]:
    kind = cfg.data.kind
    if kind in ("synthetic", "shards"):
        from hydra.utils import instantiate

        source = str(instantiate(cfg.data.synthetic)) if kind == "synthetic" else cfg.data.source
        frames = shard_frames(source, size, cfg.data.clip_frames)
        return frames, round_robin_folds(frames.subjects)
    from finetune import data as datasets
    from finetune.frames import table_frames

    if kind == "bp4d":
        table = datasets.load_bp4d(cfg.data.root, intensity_root=cfg.data.intensity_root)
    elif kind == "disfa":
        table = datasets.load_disfa(cfg.data.root, intensity=cfg.task == "intensity")
    elif kind == "csv":
        table = datasets.load_csv(cfg.data.source, root=cfg.data.root)
    else:
        raise ValueError(f"data.kind must be synthetic, shards, bp4d, disfa or csv, got {kind!r}")
    frames = table_frames(table, size)
    folds = datasets.FOLDS[kind] if kind in datasets.FOLDS else round_robin_folds(frames.subjects)
    return frames, folds


def detection_loss(logits, occ, pos_weight, weight=None) -> torch.Tensor:
    known = occ >= 0
    target = occ.clamp(min=0).float()
    loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight, reduction="none")
    if weight is not None:
        loss = loss * weight
    return (loss * known).sum() / known.sum().clamp(min=1)


def intensity_loss(logits, target) -> torch.Tensor:
    known = ~torch.isnan(target)
    pred = 5 * torch.sigmoid(logits)
    return ((pred - target.nan_to_num(0)) ** 2 * known).sum() / known.sum().clamp(min=1)


def pseudo_labels(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """Hard labels where the model is confident (p > t: 1, p < 1 - t: 0), else -1 (unknown)."""
    p = torch.sigmoid(logits)
    sure = (p > threshold) | (p < 1 - threshold)
    return torch.where(sure, (p > 0.5).long(), torch.full_like(p, -1, dtype=torch.long))


def optimizer_for(model: AUModel, cfg) -> torch.optim.Optimizer:
    groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("backbone.")], "lr": cfg.lr}]
    if cfg.mode == "finetune":
        from timm.optim import param_groups_layer_decay

        for group in param_groups_layer_decay(model.backbone, weight_decay=cfg.weight_decay,
                                              layer_decay=cfg.layer_decay):  # fmt: skip
            group["lr"] = cfg.lr * cfg.backbone_lr_scale * group.pop("lr_scale", 1.0)
            groups.append(group)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def run_fold(cfg, fold: int, frames: Frames, folds, accelerator, backbone_factory) -> dict:
    from torch.utils.data import DataLoader

    backbone = backbone_factory()
    train, test = fold_indices(frames, folds, fold)
    labelled, unlabelled = labelled_subset(train, cfg.label_fraction, cfg.seed + fold)
    subjects = {s: i for i, s in enumerate(sorted(set(frames.subjects)))}
    n_aus = len(frames.au_names)
    head = make_head(cfg.head or ("mlp" if cfg.mode == "mlp" else "linear"), backbone.num_features, n_aus)
    adversary = IdentityAdversary(backbone.num_features, len(subjects)) if cfg.identity_adversarial > 0 else None
    model = AUModel(backbone.model, head, cfg.mode != "finetune", adversary)
    occ = frames.occ[labelled]
    pos = (occ == 1).sum(0)
    neg = (occ == 0).sum(0)
    pos_weight = torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)
    size = backbone.input_size
    g = torch.Generator().manual_seed(cfg.seed + fold)
    if cfg.head == "temporal":  # clips of consecutive frames; the loss only at labelled ones
        length, known = cfg.clip_length, np.zeros(len(frames), bool)
        known[labelled] = True
        windows = [w for w in clip_windows(frames, train, length) if known[w].any()]
        train_set = ClipDataset(frames, windows, known, subjects, size, length)
        test_set = ClipDataset(frames, clip_windows(frames, test, length), np.ones(len(frames), bool), subjects,
                               size, length)  # fmt: skip
        batch_size = max(1, cfg.batch_size // length)
    else:
        train_set = FrameDataset(frames, labelled, subjects, size)
        test_set, batch_size = FrameDataset(frames, test, subjects, size), cfg.batch_size
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=g,
                              num_workers=cfg.data.num_workers)  # fmt: skip
    test_loader = DataLoader(test_set, batch_size=batch_size, num_workers=cfg.data.num_workers)
    extra = []
    if cfg.semi == "pseudo" and len(unlabelled):
        extra = [DataLoader(FrameDataset(frames, unlabelled, subjects, size), batch_size=cfg.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(cfg.seed + 100 + fold),
                            num_workers=cfg.data.num_workers)]  # fmt: skip
    optimizer = optimizer_for(model, cfg)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # the schedule scales these
    model, optimizer, train_loader, test_loader, *extra = accelerator.prepare(
        model, optimizer, train_loader, test_loader, *extra
    )
    pos_weight = pos_weight.to(accelerator.device)

    def normalise(images):  # on the device, as DESIGN.md asks
        return normalize(images, backbone.mean, backbone.std)

    ckpt = Path(cfg.run_dir) / f"fold{fold}" / "checkpoint"
    start = 0
    if (ckpt / "epoch.json").exists():
        accelerator.load_state(str(ckpt))
        start = json.loads((ckpt / "epoch.json").read_text())["epoch"]
        log.info("fold %d: resumed after epoch %d", fold, start)
    steps_total = cfg.epochs * len(train_loader)
    for epoch in range(start, cfg.epochs):
        model.train()
        unlabelled_batches = iter(extra[0]) if extra else None
        for step, batch in enumerate(train_loader):
            lr_scale = 0.5 * (1 + math.cos(math.pi * (epoch * len(train_loader) + step) / max(1, steps_total)))
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * lr_scale
            out = model(normalise(batch["image"]))
            if cfg.task == "detection":
                loss = detection_loss(out["logits"], batch["occ"], pos_weight)
            else:
                loss = intensity_loss(out["logits"], batch["intensity"])
            if unlabelled_batches is not None and cfg.task == "detection":
                extra_batch = next(unlabelled_batches, None)
                if extra_batch is not None:
                    logits = model(normalise(extra_batch["image"]))["logits"]
                    pseudo = pseudo_labels(logits.detach(), cfg.pseudo_threshold)
                    loss = loss + cfg.pseudo_weight * detection_loss(logits, pseudo, pos_weight)
            if "identity" in out:
                loss = loss + cfg.identity_adversarial * F.cross_entropy(out["identity"], batch["subject"])
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
        accelerator.wait_for_everyone()
        accelerator.save_state(str(ckpt))
        if accelerator.is_main_process:
            (ckpt / "epoch.json").write_text(json.dumps({"epoch": epoch + 1}))
        accelerator.wait_for_everyone()
        log.info("fold %d epoch %d/%d loss %.4f", fold, epoch + 1, cfg.epochs, float(loss))

    def predict(loader):
        model.eval()
        outs, targets = [], []
        with torch.no_grad():
            for batch in loader:
                logits = model(normalise(batch["image"]))["logits"]
                value = torch.sigmoid(logits) if cfg.task == "detection" else 5 * torch.sigmoid(logits)
                label = batch["occ"] if cfg.task == "detection" else batch["intensity"]
                valid = batch.get("valid", torch.ones(label.shape[:-1], dtype=torch.bool, device=label.device))
                value, label, valid = accelerator.gather_for_metrics((value, label, valid))
                outs.append(value[valid].cpu())  # clips: padding frames out, frames flattened
                targets.append(label[valid].cpu())
        return torch.cat(outs).numpy(), torch.cat(targets).numpy()

    test_pred, test_true = predict(test_loader)
    train_pred, train_true = predict(train_loader) if cfg.task == "detection" else (None, None)
    return report.evaluate(cfg.task, frames.au_names, test_pred, test_true, train_prob=train_pred,
                           train_labels=train_true)  # fmt: skip


def fit(cfg) -> dict:
    """One setting, or with `sweep_fractions` one run per label fraction (each in its own
    RUN_DIR/fraction_F) and F1 against the fraction plotted in RUN_DIR/label_fraction.png."""
    if not cfg.sweep_fractions:
        return fit_one(cfg)
    from omegaconf import open_dict

    results = {}
    for fraction in cfg.sweep_fractions:
        sub = cfg.copy()
        with open_dict(sub):
            sub.label_fraction, sub.sweep_fractions = float(fraction), []
            sub.run_dir = str(Path(cfg.run_dir) / f"fraction_{fraction:g}")
        results[float(fraction)] = fit_one(sub)
    key = "f1" if cfg.task == "detection" else "icc"
    points = {f: r["mean"][key] for f, r in results.items()}
    if int(os.environ.get("RANK", "0")) == 0:
        report.plot_label_fraction(points, Path(cfg.run_dir) / "label_fraction.png", metric=f"mean {key.upper()}")
        report.write_metrics(Path(cfg.run_dir) / "label_fraction.json", {str(f): v for f, v in points.items()})
        print("label fraction -> mean " + key + ": " + ", ".join(f"{f:g}: {v:.3f}" for f, v in points.items()))
    return {"label_fraction": points}


def fit_one(cfg) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(cfg.seed)
    if cfg.task not in ("detection", "intensity") or cfg.mode not in ("linear", "mlp", "finetune"):
        raise ValueError(f"task must be detection or intensity and mode linear, mlp or finetune; got {cfg.task}, {cfg.mode}")
    torch.manual_seed(cfg.seed)  # a random-init backbone starts the same on every rank
    probe = load_backbone(cfg.backbone, input_size=cfg.data.resize, index=cfg.backbone_index)
    frames, folds = load_frames(cfg, probe.input_size)
    folds_to_run = [1, 2, 3] if str(cfg.fold) == "all" else [int(cfg.fold)]

    def backbone_factory():
        return copy.deepcopy(probe)  # every fold starts from the same weights, read once

    results = {fold: run_fold(cfg, fold, frames, folds, accelerator, backbone_factory) for fold in folds_to_run}
    combined = report.combine_folds(results) if len(results) > 1 else results[folds_to_run[0]]
    if accelerator.is_main_process:
        run_dir = Path(cfg.run_dir)
        setting = {"backbone": cfg.backbone, "source": probe.source, "data": cfg.data.kind, "task": cfg.task,
                   "mode": cfg.mode, "fold": str(cfg.fold), "label_fraction": cfg.label_fraction, "semi": cfg.semi,
                   "identity_adversarial": cfg.identity_adversarial, "epochs": cfg.epochs}  # fmt: skip
        combined = {**combined, "setting": setting}
        report.write_metrics(run_dir / "metrics.json", combined)
        report.plot_per_au(combined, run_dir / "per_au.png")
        print(report.print_table(combined), flush=True)
    accelerator.wait_for_everyone()
    return combined
