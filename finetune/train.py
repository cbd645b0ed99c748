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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetune.backbone import load_backbone
from finetune.config import launched_rank_zero, save_run_config
from finetune.evaluation import evaluate
from finetune.folds import combine_folds
from finetune.labelled import ClipDataset, FrameDataset, Frames, clip_windows, shard_frames
from finetune.heads import IdentityAdversary, make_head
from finetune.plots import plot_label_fraction, plot_per_au
from finetune.protocol import TEST_PART, fold_split, labelled_subset, parts_for
from finetune.report import print_table, write_metrics
from finetune.resume import config_view, conflicts
from shards.batch import normalize
from shards.runlock import lock_run_dir

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


def load_frames(cfg, size: int) -> Frames:
    kind = cfg.data.kind
    if kind in ("synthetic", "shards"):
        from hydra.utils import instantiate

        source = str(instantiate(cfg.data.synthetic)) if kind == "synthetic" else cfg.data.source
        return shard_frames(source, size, cfg.data.clip_frames)
    from finetune.data import load_bp4d, load_csv, load_disfa
    from finetune.labelled import table_frames

    if kind == "bp4d":
        table = load_bp4d(cfg.data.root, intensity_root=cfg.data.intensity_root, image_root=cfg.data.image_root)
    elif kind == "disfa":
        table = load_disfa(cfg.data.root, intensity=cfg.task == "intensity")
    elif kind == "csv":
        table = load_csv(cfg.data.source, root=cfg.data.root)
    else:
        raise ValueError(f"data.kind must be synthetic, shards, bp4d, disfa or csv, got {kind!r}")
    return table_frames(table, size)


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


def run_fold(cfg, fold: int, frames: Frames, train, test, accelerator, backbone_factory) -> dict:
    from torch.utils.data import DataLoader

    backbone = backbone_factory()
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

    def normalise(images):  # on the device: the loaders carry uint8 frames, a quarter of float32's bytes
        return normalize(images, backbone.mean, backbone.std)

    ckpt = checkpoint_dir(cfg, fold)
    start = resumable_epoch(cfg, fold)
    if start:
        accelerator.load_state(str(ckpt))
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
            (ckpt / "epoch.json").write_text(json.dumps({"epoch": epoch + 1, "config": config_view(cfg, MAY_CHANGE)}))
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
    return evaluate(cfg.task, frames.au_names, test_pred, test_true, train_prob=train_pred,
                    train_labels=train_true)  # fmt: skip


# Keys a run may change and still resume a checkpoint: where it writes, how many loader workers,
# and `epochs` (a longer run continues a shorter one; the remaining epochs follow the new
# count's learning-rate schedule). Any other difference is another experiment.
MAY_CHANGE = ("run_dir", "epochs", "data.num_workers")


def checkpoint_dir(cfg, fold: int) -> Path:
    return Path(cfg.run_dir) / f"fold{fold}" / "checkpoint"


def resumable_epoch(cfg, fold: int) -> int:
    """Epochs that the checkpoint in RUN_DIR/foldK already trained (0: none there). A checkpoint
    of another configuration is refused, naming what differs: resuming it would report its
    model under this run's settings."""
    ckpt = checkpoint_dir(cfg, fold)
    if not (ckpt / "epoch.json").exists():
        return 0
    saved = json.loads((ckpt / "epoch.json").read_text())
    if "config" not in saved:
        raise ValueError(f"{ckpt}: this checkpoint does not record the configuration it was trained under, so it "
                         "cannot be told to be this run's: move it away or choose another run_dir")  # fmt: skip
    differ = conflicts(saved["config"], config_view(cfg, MAY_CHANGE))
    if differ:
        raise ValueError(f"{ckpt} holds a checkpoint of another configuration; run it with the same settings or "
                         "choose another run_dir. What differs (checkpoint -> now):\n  " + "\n  ".join(differ))
    if saved["epoch"] > cfg.epochs:
        raise ValueError(f"{ckpt}: the checkpoint has trained {saved['epoch']} epochs, more than epochs={cfg.epochs}")
    return int(saved["epoch"])


def folds_of(cfg) -> list[int]:
    if str(cfg.fold) == "all":
        return sorted(TEST_PART)
    if str(cfg.fold) not in [str(k) for k in TEST_PART]:
        raise ValueError(f"fold must be one of {', '.join(str(k) for k in TEST_PART)} or all, got {cfg.fold!r}")
    return [int(cfg.fold)]


def job_run_dir(cfg) -> str:
    """`run_dir`; under Hydra's multirun (`finetune.py -m ...`) this job's own folder, RUN_DIR/N
    with N Hydra's job number (hydra.sweep in configs/finetune.yaml), so that the jobs of a sweep
    never share a checkpoint. No timestamp: every accelerate rank runs its own Hydra and must
    get the same folder, and a rerun of the same sweep resumes its jobs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return HydraConfig.get().runtime.output_dir
    return str(cfg.run_dir)


def fit(cfg) -> dict:
    """One setting, or with `sweep_fractions` one run per label fraction (each in its own
    RUN_DIR/fraction_F) and F1 against the fraction plotted in RUN_DIR/label_fraction.png.
    Every run's checkpoints are checked before any of them trains."""
    from omegaconf import open_dict

    def with_settings(base, **settings):
        out = base.copy()
        with open_dict(out):
            for key, value in settings.items():
                out[key] = value
        return out

    cfg = with_settings(cfg, run_dir=job_run_dir(cfg))
    if launched_rank_zero():  # two starts here would train into the same checkpoints
        lock_run_dir(cfg.run_dir)
    runs = {float(f): with_settings(cfg, label_fraction=float(f), sweep_fractions=[],
                                    run_dir=str(Path(cfg.run_dir) / f"fraction_{f:g}"))
            for f in cfg.sweep_fractions}  # fmt: skip
    for run in list(runs.values()) or [cfg]:
        for fold in folds_of(run):
            resumable_epoch(run, fold)
    if launched_rank_zero():  # this run's own directory: its config is saved with it
        save_run_config(cfg, cfg.run_dir)
    if not runs:
        return fit_one(cfg)
    results = {f: fit_one(run) for f, run in runs.items()}
    key = "f1" if cfg.task == "detection" else "icc"
    points = {f: r["mean"][key] for f, r in results.items()}
    if launched_rank_zero():
        plot_label_fraction(points, Path(cfg.run_dir) / "label_fraction.png", metric=f"mean {key.upper()}")
        write_metrics(Path(cfg.run_dir) / "label_fraction.json", {str(f): v for f, v in points.items()})
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
    frames = load_frames(cfg, probe.input_size)
    folds_to_run = folds_of(cfg)
    # every fold's split before any trains: a fold that cannot be filled fails now, not after the others
    parts = parts_for(cfg.data.kind, frames.subjects)
    splits = {fold: fold_split(frames.subjects, parts, fold, frames.name) for fold in folds_to_run}

    def backbone_factory():
        return copy.deepcopy(probe)  # every fold starts from the same weights, read once

    results = {fold: run_fold(cfg, fold, frames, *splits[fold], accelerator, backbone_factory) for fold in folds_to_run}
    combined = combine_folds(results) if len(results) > 1 else results[folds_to_run[0]]
    if accelerator.is_main_process:
        run_dir = Path(cfg.run_dir)
        setting = {"backbone": cfg.backbone, "source": probe.source, "data": cfg.data.kind, "task": cfg.task,
                   "mode": cfg.mode, "fold": str(cfg.fold), "label_fraction": cfg.label_fraction, "semi": cfg.semi,
                   "identity_adversarial": cfg.identity_adversarial, "epochs": cfg.epochs}  # fmt: skip
        combined = {**combined, "setting": setting}
        write_metrics(run_dir / "metrics.json", combined)
        plot_per_au(combined, run_dir / "per_au.png")
        print(print_table(combined), flush=True)
    accelerator.wait_for_everyone()
    return combined
