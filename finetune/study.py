"""`python -m finetune.study [preset=cpu|gpu] [data=synthetic|bp4d|disfa|shards ...]`: the claim
that label-free, person-independent pretraining buys AU accuracy when labels are scarce, checked
in one command on any labelled set.

The grid (`configs/study.yaml`, a preset in `configs/preset/`):
* variants (`variants`): random initialisation and pretraining objectives, each pretrained once by
  `python -m pretrain` at the same budget (`pretrain`: overrides every run gets; a variant adds
  its own and names its `model`), in STUDY/pretrain/VARIANT, published there and reused by every
  cell; a random-init variant (`pretrain: null`) is the same architecture untrained;
* label fractions (`fractions`), each frame's labels drawn from the training people of a fold;
* modes (`modes`): `linear`, a linear probe on the frozen backbone's pooled features (`draws`
  label draws a cell), and `finetune`, every weight trained for `finetune.steps` steps (layer-wise
  learning-rate decay, as `finetune.train` does), whatever the fraction;
* folds (`folds`): the identity-disjoint folds of `finetune.protocol` (BP4D's and DISFA's
  published ones, else the subjects dealt round robin).
Where the labelled set has AU intensities, the linear cells also regress them (ridge on the same
features, clipped to 0..5: ICC(3,1) and MAE). Identity leakage is measured once a variant: a linear classifier over the people from its frozen
features, split by clip (`finetune.probe.identity_probe`), against chance.

Every finished cell is a JSON file under STUDY/cells/ (written atomically), every variant's
features STUDY/features/VARIANT.npy: a study run again recomputes nothing that finished, and
picks an interrupted pretraining run up from its checkpoint. The report (`finetune.study_report`)
is written from the cells: STUDY/report.md, results.csv and the plots.

Pretraining runs as its own process (`python -m pretrain`): fine-tuning imports no pretraining
code (docs/architecture.md, import direction).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf

from finetune.backbone import Backbone, load_backbone
from finetune.config import CONFIG_DIR, DataConfig
from finetune.evaluation import evaluate
from finetune.heads import make_head
from finetune.labelled import Frames
from finetune.probe import identity_probe, linear_probe, ridge_predictions
from finetune.protocol import fold_split, labelled_subset, parts_for
from shards.atomic import atomic_open, write_text_atomic
from shards.batch import normalize
from shards.runlock import lock_run_dir

log = logging.getLogger("finetune.study")
REPO = Path(CONFIG_DIR).parent
MODES = ("linear", "finetune")


@dataclass
class VariantConfig:
    pretrain: Optional[list[str]] = None  # overrides of `python -m pretrain` (objective=...); None: random init
    model: str = "resnet18"  # configs/model/NAME.yaml: the architecture, pretrained or not
    reads: str = "pixels"  # what its objective reads, for the report (a reference reads what real video lacks)
    promise: str = ""  # what its method promises, for the report
    baseline: Optional[str] = None  # the random-init variant it is compared with (default: the study's)


@dataclass
class FinetuneBudget:
    steps: int = 40  # optimizer steps a cell, at every fraction
    batch_size: int = 32
    lr: float = 3e-3  # the head's; the backbone's top layer gets lr * backbone_lr_scale
    backbone_lr_scale: float = 0.1
    layer_decay: float = 0.75
    weight_decay: float = 0.01


@dataclass
class StudyConfig:
    data: DataConfig = field(default_factory=DataConfig)  # the labelled set
    task: str = "detection"
    pretrain: list[str] = field(default_factory=list)  # overrides every pretraining run gets (data, budget)
    variants: dict[str, VariantConfig] = field(default_factory=dict)
    baseline: str = "random"  # the variant the others are compared with
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.1, 1.0])
    folds: list[int] = field(default_factory=lambda: [1, 2, 3])
    modes: list[str] = field(default_factory=lambda: list(MODES))
    draws: int = 3  # label draws a linear-probe cell
    finetune: FinetuneBudget = field(default_factory=FinetuneBudget)
    study_dir: str = "runs/study"
    seed: int = 0
    only: Optional[str] = None  # compute this variant's cells alone, no report (a SLURM array task)
    report_only: bool = False  # write the report from the finished cells, compute nothing
    launcher: str = "local"  # local: here; slurm: `python -m slurm study` (a task a variant, then the report)
    slurm_args: list[str] = field(default_factory=list)  # options of `python -m slurm study` (--partition, --wait, ...)


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="study_schema", node=StudyConfig)


# ------------------------------------------------------------------------------ backbones


def model_preset(name: str) -> tuple[str, dict]:
    """(timm architecture, timm arguments) of configs/model/NAME.yaml."""
    path = Path(CONFIG_DIR) / "model" / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"model {name!r}: no {path}")
    preset = OmegaConf.load(path)
    args = preset.get("args")
    return str(preset.arch), OmegaConf.to_container(args) if args is not None else {}


def pretrained(cfg, name: str, variant: VariantConfig) -> Path:
    """The published folder of `variant`, pretrained by `python -m pretrain` into
    STUDY/pretrain/NAME on first use (its output in pretrain.log there); an interrupted run resumes
    from its checkpoint, since the run directory is the same."""
    run_dir = Path(cfg.study_dir).resolve() / "pretrain" / name
    published = run_dir / "published" / name
    if (published / "config.json").exists():
        return published
    command = [sys.executable, "-m", "pretrain", f"model={variant.model}", *cfg.pretrain, *variant.pretrain,
               f"train.run_dir={run_dir}", f"train.publish_name={name}", "eval.enabled=false"]  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("pretraining %s: %s", name, " ".join(command[1:]))
    start = time.perf_counter()
    with open(run_dir / "pretrain.log", "ab") as out:
        done = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not (published / "config.json").exists():
        raise RuntimeError(f"pretraining variant {name} failed (exit {done.returncode}); its output: "
                           f"{run_dir / 'pretrain.log'}")  # fmt: skip
    log.info("pretrained %s in %.0f s", name, time.perf_counter() - start)
    return published


def backbone_of(cfg, name: str) -> Backbone:
    """The backbone a variant's cells start from: pretrained, or its architecture at random init
    (seeded, so that every cell starts from the same weights)."""
    variant = cfg.variants[name]
    if variant.pretrain is None:
        arch, args = model_preset(variant.model)
        torch.manual_seed(cfg.seed)
        return load_backbone(arch, input_size=cfg.data.resize, model_args=args)
    return load_backbone(str(pretrained(cfg, name, variant)))


# ------------------------------------------------------------------------------ features and cells


def save_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        f.write(buffer.getvalue())


def batches(frames: Frames, indices: np.ndarray, size: int):
    for start in range(0, len(indices), size):
        chosen = indices[start : start + size]
        images = frames.images[chosen] if frames.images is not None else np.stack([frames.image(i) for i in chosen])
        yield torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


@torch.no_grad()
def features_of(backbone: Backbone, frames: Frames) -> np.ndarray:
    """Pooled features [N, D] of every frame, the backbone frozen (eval mode)."""
    backbone.model.eval()
    out = [backbone.model(normalize(x, backbone.mean, backbone.std)) for x in batches(frames, np.arange(len(frames)), 128)]
    return torch.cat(out).numpy()


def finetune_cell(backbone: Backbone, frames: Frames, labelled: np.ndarray, test: np.ndarray, budget, seed: int) -> dict:
    """Every weight of `backbone` (a fresh copy) and a linear head trained on the `labelled`
    frames for `budget.steps` steps (batches drawn with replacement, cosine learning rate), then
    evaluated on `test` with thresholds tuned on the labelled frames."""
    from finetune.train import AUModel, detection_loss, optimizer_for

    torch.manual_seed(seed)
    model = AUModel(backbone.model, make_head("linear", backbone.num_features, len(frames.au_names)), False, None)
    settings = SimpleNamespace(mode="finetune", lr=budget.lr, backbone_lr_scale=budget.backbone_lr_scale,
                               layer_decay=budget.layer_decay, weight_decay=budget.weight_decay)  # fmt: skip
    optimizer = optimizer_for(model, settings)
    base = [group["lr"] for group in optimizer.param_groups]
    occ = frames.occ[labelled]
    pos, neg = (occ == 1).sum(0), (occ == 0).sum(0)
    pos_weight = torch.tensor(np.where(pos > 0, neg / np.maximum(pos, 1), 1.0), dtype=torch.float32)
    g = np.random.default_rng(seed)
    model.train()
    for step in range(budget.steps):
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / budget.steps))
        chosen = g.choice(labelled, size=min(budget.batch_size, len(labelled)), replace=len(labelled) < budget.batch_size)
        x = next(batches(frames, chosen, len(chosen)))
        loss = detection_loss(model(normalize(x, backbone.mean, backbone.std))["logits"],
                              torch.from_numpy(frames.occ[chosen]).long(), pos_weight)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()

    @torch.no_grad()
    def predict(indices):
        return torch.cat([torch.sigmoid(model(normalize(x, backbone.mean, backbone.std))["logits"])
                          for x in batches(frames, indices, 128)]).numpy()  # fmt: skip

    result = evaluate("detection", frames.au_names, predict(test), frames.occ[test], train_prob=predict(labelled),
                      train_labels=frames.occ[labelled])  # fmt: skip
    return {"mean_f1": float(result["mean"]["f1"]), "per_au": dict(zip(frames.au_names, map(float, result["per_au"]["f1"])))}


def linear_cell(features: np.ndarray, frames: Frames, labelled: np.ndarray, test: np.ndarray, seed: int) -> dict:
    """Occurrence by a linear probe; intensity, where the labelled frames have any, by ridge
    regression clipped to 0..5 (ICC(3,1) and MAE, means over AUs)."""
    r = linear_probe(features[labelled], frames.occ[labelled], features[test], frames.occ[test], seed=seed)
    out = {"mean_f1": float(r["mean_f1"]), "per_au": dict(zip(frames.au_names, map(float, r["f1"])))}
    if np.isfinite(frames.intensity[labelled]).any():
        predicted = np.clip(ridge_predictions(features[labelled], frames.intensity[labelled], features[test]), 0, 5)
        known = np.isfinite(predicted).all(0)
        scores = evaluate("intensity", np.array(frames.au_names)[known].tolist(), predicted[:, known],
                          frames.intensity[test][:, known])  # fmt: skip
        out.update(icc=float(scores["mean"]["icc"]), mae=float(scores["mean"]["mae"]))
    return out


def cell_path(cfg, variant: str, mode: str, fold: int, fraction: float, draw: int) -> Path:
    return Path(cfg.study_dir) / "cells" / variant / mode / f"fold{fold}-frac{fraction:g}-draw{draw}.json"


def run_study(cfg) -> dict:
    """Every cell of the grid that has not finished, then the report. Returns the counts of cells
    computed and found."""
    from finetune.study_report import write_report
    from finetune.train import load_frames

    for mode in cfg.modes:
        if mode not in MODES:
            raise ValueError(f"study mode {mode!r}: one of {', '.join(MODES)}")
    if cfg.baseline not in cfg.variants:
        raise ValueError(f"baseline {cfg.baseline!r} is not one of the variants {', '.join(cfg.variants)}")
    if cfg.task != "detection":
        raise ValueError("task=detection: the study measures detection in every cell, and intensity (ICC, MAE) by "
                         "the linear cells wherever the labelled set has intensities")  # fmt: skip
    if cfg.only is not None and cfg.only not in cfg.variants:
        raise ValueError(f"only={cfg.only}: not one of the variants {', '.join(cfg.variants)}")
    study = Path(cfg.study_dir)
    counts = {"computed": 0, "found": 0}
    if cfg.report_only:
        write_report(cfg)
        return counts
    # one study at a time in a folder; the tasks of an array, one a variant, each hold their own
    held = study if cfg.only is None else study / "cells" / cfg.only
    held.mkdir(parents=True, exist_ok=True)
    lock_run_dir(held)
    write_text_atomic(held / "study.yaml", OmegaConf.to_yaml(cfg))
    frames_at: dict[int, Frames] = {}
    for name in [cfg.only] if cfg.only is not None else cfg.variants:
        backbone = backbone_of(cfg, name)
        if backbone.input_size not in frames_at:
            frames_at[backbone.input_size] = load_frames(cfg, backbone.input_size)
        frames = frames_at[backbone.input_size]
        parts = parts_for(cfg.data.kind, frames.subjects)
        feature_file = study / "features" / f"{name}.npy"
        if not feature_file.exists():
            save_array(feature_file, features_of(backbone, frames))
        features = np.load(feature_file)
        leak_file = study / "cells" / name / "identity.json"
        if not leak_file.exists():
            leak = identity_probe(features, frames.subjects, groups=frames.sequences, seed=cfg.seed)
            _write_json(leak_file, {"accuracy": float(leak["accuracy"]), "chance": float(leak["chance"])})
        for fold in cfg.folds:
            train, test = fold_split(frames.subjects, parts, int(fold), frames.name)
            for fraction in cfg.fractions:
                for mode in cfg.modes:
                    for draw in range(cfg.draws if mode == "linear" else 1):
                        path = cell_path(cfg, name, mode, fold, fraction, draw)
                        if path.exists():
                            counts["found"] += 1
                            continue
                        seed = cfg.seed + 1000 * draw + int(fold)
                        labelled = labelled_subset(train, float(fraction), seed)[0]
                        start = time.perf_counter()
                        if mode == "linear":
                            result = linear_cell(features, frames, labelled, test, seed)
                        else:
                            result = finetune_cell(backbone_of(cfg, name), frames, labelled, test, cfg.finetune, seed)
                        result.update(variant=name, mode=mode, fold=int(fold), fraction=float(fraction), draw=draw,
                                      labelled=len(labelled), seconds=round(time.perf_counter() - start, 2))  # fmt: skip
                        _write_json(path, result)
                        counts["computed"] += 1
                        log.info("%s %s fold %s %g%% draw %d: F1 %.3f", name, mode, fold, 100 * fraction, draw,
                                 result["mean_f1"])  # fmt: skip
    if cfg.only is None:
        write_report(cfg)
    return counts


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


register()


@hydra.main(config_path=CONFIG_DIR, config_name="study", version_base=None)
def main(cfg) -> None:
    if cfg.launcher == "slurm":  # the same overrides, run by the SLURM launcher (fine-tuning imports no slurm code)
        from hydra.core.hydra_config import HydraConfig

        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("launcher=", "slurm_args="))]
        command = [sys.executable, "-m", "slurm", "study", *cfg.slurm_args, "--", *overrides]
        raise SystemExit(subprocess.run(command, cwd=REPO).returncode)
    if cfg.launcher != "local":
        raise ValueError(f"launcher must be local or slurm, not {cfg.launcher!r}")
    counts = run_study(cfg)
    print(f"study {cfg.study_dir}: {counts['computed']} cells computed, {counts['found']} found finished; "
          f"report {Path(cfg.study_dir) / 'report.md'}")  # fmt: skip


if __name__ == "__main__":
    main()
