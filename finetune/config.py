"""Config schemas of the fine-tuning job, and the data config that both jobs share.

`configs/data/*.yaml` name a dataset: pretraining reads clip shards (`synthetic`, `shards`);
fine-tuning reads those and BP4D, DISFA and CSV datasets. Each default is written once, here (or,
for the synthetic set, in `shards.synthetic.SynthSettings`); a `configs/` file sets only what
differs from it, saying why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore

from shards.synthetic import SynthSettings


@dataclass
class SyntheticConfig(SynthSettings):
    """`data.synthetic`: the arguments of `shards.synthetic.cached_synthetic`, which renders the set
    into the cache once and names its folder by them; read when `data.kind` is synthetic.

    The renderer's settings and defaults (`SynthSettings`: 16 frames at 112 px, seed 0) but the
    size of the synthetic benchmark, the set the README's probe figures and
    tests/test_pretrain_benefit.py were measured on. Changing any field renders another set."""

    clips: int = 1200  # about 10 a person
    identities: int = 120  # a quarter held out: 30 unseen people for the probes, not the renderer's 4 of 20
    shard_samples: int = 200  # as the benchmark set was rendered: its cache folder's name includes it
    heldout: float = 0.25
    _target_: str = "shards.synthetic.cached_synthetic"


class DataKind(StrEnum):
    """The datasets `data.kind` names: any other value is refused when the config is composed."""

    synthetic = "synthetic"  # shards rendered into the cache (`data.synthetic`)
    shards = "shards"  # auforge.clip/1 shards of your own (`data.source`)
    # fine-tuning only:
    bp4d = "bp4d"  # the dataset as released (`data.root`)
    disfa = "disfa"  # the dataset as released (`data.root`)
    csv = "csv"  # a CSV of image paths, subjects and AU columns (`data.source`)

    __repr__ = str.__repr__  # reads as the string it was written as (resume conflicts list values by repr)


@dataclass
class DataConfig:
    """The dataset of either job (`data=NAME` picks configs/data/NAME.yaml). One schema for every
    kind: the comment of each field says which kinds read it; the others ignore it.

    Frames per clip: a clip's length is fixed when its shards are written (`data.synthetic.frames`,
    or `python -m shards build --frames`; the manifest's frames_per_clip). Readers then take frames
    from each stored clip:

    * pretraining, `data.frames` frames `data.stride` stored frames apart, from a random window of
      (frames - 1) * stride + 1 stored frames (the stream refuses a window longer than the clip);
      its two temporal views take three quarters of them each;
    * the pretraining probes, `eval.frames` frames spread evenly over the clip (centred, stored
      frames // eval.frames apart);
    * fine-tuning on shards, `data.clip_frames` frames spread evenly over the clip, by the probes'
      rule. Not `data.frames`: that is a window at `data.stride` for the temporal objectives (8 on
      built shards, where fine-tuning takes 4), not a spread over the whole clip;
    * fine-tuning's temporal head (`head=temporal`), windows of `clip_length` consecutive rows of
      one clip or video among the frames so taken (BP4D, DISFA, CSV: consecutive video frames).
    """

    kind: DataKind = DataKind.synthetic
    source: Optional[str] = None  # shards: manifest, folder, pattern or URLs; csv: the CSV file
    root: Optional[str] = None  # bp4d, disfa: the dataset's root as its owners distribute it; csv: images' root
    intensity_root: Optional[str] = None  # bp4d: the FERA 2015 intensity codes
    image_root: Optional[str] = None  # bp4d: the folder of {subject}/{task}/ frames (null: searched under root)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # synthetic: the set rendered
    train_split: Optional[str] = "train"  # synthetic, shards, pretraining: manifest split to pretrain on (null: all)
    eval_split: Optional[str] = "heldout"  # synthetic, shards, pretraining: identities unseen in pretraining, probed
    # synthetic, shards, pretraining: frames sampled per clip, `stride` stored frames apart (above).
    # 8 at stride 2 span 15 stored frames: what `shards build` stores by default (16) serves them.
    frames: int = 8
    stride: int = 2  # synthetic, shards, pretraining
    # every kind: the square side frames are aligned (or resized) to: null keeps the stored size in
    # pretraining, and is 224 in fine-tuning; a published backbone fine-tunes at its own input size
    resize: Optional[int] = 56
    num_workers: int = 2  # data loader processes; every kind
    slots: int = 4  # synthetic, shards, pretraining: shards each stream worker reads from at once
    clip_frames: int = 4  # synthetic, shards, fine-tuning: frames spread over each clip (above)


@dataclass
class FinetuneConfig:
    backbone: str = "resnet18"  # a published folder, URL, hf://owner/repo, index name, or timm architecture (random init)
    backbone_index: Optional[str] = None  # index.json (path or URL) to look backbone names up in; else $AUFORGE_HUB_INDEX
    data: DataConfig = field(default_factory=DataConfig)
    task: str = "detection"  # detection | intensity
    mode: str = "linear"  # linear (frozen backbone) | mlp (frozen, MLP head) | finetune (all, layer-wise lr decay)
    head: Optional[str] = None  # linear | mlp | temporal; default from mode
    clip_length: int = 4  # head=temporal: consecutive frames per window (see DataConfig)
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


# The Hydra config tree of every job (pretraining, fine-tuning, their SLURM submissions, benchmarks).
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


def launched_rank_zero() -> bool:
    """Whether this process is rank 0 of its launcher (accelerate, torchrun, deepspeed, SLURM's
    tasks export RANK), or was started alone; read before any process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def log_to_stdout_off_rank_zero(argv: list[str]) -> None:
    """Both jobs' entry points, before Hydra parses `argv`: one rank (RANK 0, or no launcher) writes
    the run's log file; the others log to stdout only."""
    if not launched_rank_zero():
        argv.append("hydra/job_logging=stdout")


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
