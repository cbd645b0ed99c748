"""Config schemas of the fine-tuning job, and the data config that both jobs share.

`configs/data/*.yaml` name a dataset: pretraining reads clip shards (`synthetic`, `shards`);
fine-tuning reads those and BP4D, DISFA and CSV datasets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class SyntheticConfig:
    """Arguments of `shards.synthetic.cached_synthetic`: used when `data.kind` is synthetic."""

    _target_: str = "shards.synthetic.cached_synthetic"
    clips: int = 1200
    frames: int = 16
    size: int = 112
    identities: int = 120
    seed: int = 0
    shard_samples: int = 200
    heldout: float = 0.25


@dataclass
class DataConfig:
    kind: str = "synthetic"  # synthetic | shards | bp4d | disfa | csv
    source: Optional[str] = None  # shards: manifest, folder, pattern or URLs; csv: the CSV file
    root: Optional[str] = None  # bp4d, disfa: the dataset's root as its owners distribute it
    intensity_root: Optional[str] = None  # bp4d: the FERA 2015 intensity codes
    image_root: Optional[str] = None  # bp4d: the folder of {subject}/{task}/ frames (null: searched under root)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    train_split: Optional[str] = "train"  # manifest split to pretrain on (null: all shards)
    eval_split: Optional[str] = "heldout"  # identities unseen in pretraining, for the probes
    frames: int = 8  # T per clip
    stride: int = 2
    resize: Optional[int] = 56  # frames are resized to this square side in the workers
    num_workers: int = 2
    slots: int = 4
    clip_frames: int = 4  # fine-tuning on shards: frames taken from each clip (spread over it)


@dataclass
class FinetuneConfig:
    backbone: str = "resnet18"  # a published folder, URL, hf://owner/repo, index name, or timm architecture (random init)
    backbone_index: Optional[str] = None  # index.json (path or URL) to look backbone names up in; else $AUFORGE_HUB_INDEX
    data: DataConfig = field(default_factory=DataConfig)
    task: str = "detection"  # detection | intensity
    mode: str = "linear"  # linear (frozen backbone) | mlp (frozen, MLP head) | finetune (all, layer-wise lr decay)
    head: Optional[str] = None  # linear | mlp | temporal; default from mode
    clip_length: int = 4  # frames per clip for the temporal head
    fold: str = "1"  # 1 | 2 | 3 | all
    label_fraction: float = 1.0  # labelled training frames, drawn at random (seeded)
    sweep_fractions: list[float] = field(default_factory=list)  # several fractions: one run each, F1 plotted against them
    semi: str = "none"  # none | pseudo: pseudo-labels on the unlabelled training frames
    pseudo_threshold: float = 0.9  # confidence for a pseudo-label (p > t present, p < 1 - t absent)
    pseudo_weight: float = 0.5
    identity_adversarial: float = 0.0  # weight of a gradient-reversal identity head (0: off)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3  # head; the backbone's top layer gets lr * backbone_lr_scale
    backbone_lr_scale: float = 0.1
    layer_decay: float = 0.75
    weight_decay: float = 0.01
    seed: int = 0
    run_dir: str = "runs/finetune"


def register() -> None:
    ConfigStore.instance().store(name="finetune_schema", node=FinetuneConfig)


def save_run_config(cfg, run_dir: str | Path) -> None:
    """The resolved config and the command's overrides, saved with the run (RUN_DIR/hydra/) once
    the run directory is locked: Hydra's own saving (hydra.output_subdir) would come before the
    lock and overwrite the files of a run that holds the directory."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from shards.atomic import write_text_atomic

    folder = Path(run_dir) / "hydra"
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    if HydraConfig.initialized():
        write_text_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(list(HydraConfig.get().overrides.task)))
