"""The pretraining config schema (Hydra structured configs, struct mode: a misspelt key is an error).

`configs/pretrain.yaml` picks one file of each group (`data/`, `model/`, `objective/`,
`deepspeed/`, optionally `experiment/`) and the schema below types the result.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from finetune.config import DataConfig
from finetune.resume import config_view


@dataclass
class ModelConfig:
    arch: str = "resnet18"  # any timm architecture
    # more timm keyword arguments for it (e.g. {patch_size: 8}); published in config.json's model_args
    args: dict[str, Any] = field(default_factory=dict)
    embed_dim: int = 128  # AU embedding
    temporal: str = "conv"  # conv | gru | transformer | none
    drop_path: float = 0.0
    channels_last: bool = True
    compile: bool = False


@dataclass
class OptimConfig:
    lr: float = 2e-3  # peak, for the global batch of `lr_batch` clips; scaled linearly
    lr_batch: int = 16  # the embedded default's batch; the cluster presets say 256
    min_lr_ratio: float = 0.01
    warmup_steps: int = 30
    weight_decay: float = 0.05  # not applied to norms and biases
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    grad_accum: int = 1


@dataclass
class DeepSpeedConfig:
    stage: int = 0  # ZeRO stage 0 (plain data parallel), 1 or 2
    bf16: bool = True  # bf16 autocast on GPUs (weights stay fp32); the CPU always trains in fp32
    overlap_comm: bool = True
    bucket_mb: int = 50


@dataclass
class TrainConfig:
    steps: int = 200  # the embedded default's budget (the README's evidence: train.steps=600)
    batch_size: int = 16  # clips per rank and micro-step
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    keep: int = 2  # checkpoints kept
    eval_every: int = 0  # 0: evaluate at the end only
    run_dir: str = "runs/pretrain"
    publish_name: str = "auforge-pretrain"
    augment: bool = True
    augment_strength: float = 0.3  # scales the crop, colour and blur ranges: faces stay near their aligned place
    align: bool = True  # warp frames onto the landmark template (as fine-tuning and the probes do) where shards have landmarks
    # one alignment a clip (its frames' mean landmarks) rather than one a frame: a face detector's
    # landmarks jitter from frame to frame, and per-frame alignment turns that into motion.
    # None: steady where the data's landmarks come from a detector (its manifest says so)
    align_steady: Optional[bool] = None
    frame_jitter: float = 0.0  # per-frame shift/rotation/scale on top of the per-clip augmentation


@dataclass
class EvalConfig:
    enabled: bool = True
    probe_clips: Optional[int] = None  # training-split clips the probes read (None: all)
    frames: int = 16  # frames per clip for the probes, spread over the clip
    label_fraction: float = 0.02  # of the read training frames, labelled for the linear probe (sparse labels)
    label_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # one draw of labelled frames each
    knn_k: int = 20
    random_baseline: bool = True  # also probe the same backbone at random initialisation


@dataclass
class MiningConfig:
    """Settings of the memory bank and mining (the `mining:` block; used when an objective
    mines cross-identity neighbours, see `pretrain.bank`)."""

    # bank entries (frames), 4 * embed_dim + 24 bytes each. 16k: the last ~170 steps of the default
    # CPU run (96 frames a step), where exact CPU search of 64k costs ~15-30% of its small step
    # (`python -m pretrain.bench mining`); on GPUs (faiss-gpu), 64k and more
    capacity: int = 16384
    k: int = 8  # cross-identity positives per anchor
    negatives: int = 4  # identity-hard negatives per anchor
    negatives_from: str = "farthest"  # farthest | nearest: which of the person's other clips (see pretrain.bank)
    index: str = "auto"  # flat (exact) | ivf (approximate) | auto: ivf from `approx_from` entries
    approx_from: int = 1_000_000
    nlist: int = 0  # IVF lists; 0: about 4 sqrt(capacity), a power of two
    nprobe: int = 32  # IVF lists searched per query
    codec: str = "Flat"  # IVF storage: Flat (exact vectors) | SQ8 (one byte per dimension)
    refresh_every: int = 1000  # steps between retrainings of the IVF quantiser (0: train once)
    threads: int = 1  # FAISS OpenMP threads (0: torch.get_num_threads()); see mining.faiss_threads
    identity_fallback: str = "video"  # video | none: what stands in for a missing identity
    seed: int = 0


@dataclass
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # name -> {weight, ...its arguments} (configs/objective/): untyped here, each objective's
    # arguments are typed by its constructor, and build_objectives refuses an unknown objective or argument
    objectives: dict[str, Any] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)


def register() -> None:
    ConfigStore.instance().store(name="pretrain_schema", node=PretrainConfig)


# Keys that may change between a run and its resumption without changing what it computes. With
# the stream's fingerprint (pretrain.train adds it to the resume view) this is the one rule for
# resuming: `data.num_workers` may look free, but each worker reads its own seeded logical stream,
# so the fingerprint's worker count (0 and 1 both mean one) refuses a change that would alter the
# data, as its world size refuses another number of ranks.
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.ckpt_every", "train.keep", "train.eval_every",
                     "train.run_dir", "train.publish_name", "eval", "data.num_workers")  # fmt: skip


def resume_view(cfg) -> dict[str, Any]:
    """The flattened config entries that a resumed run must share with the run it continues."""
    return config_view(cfg, RESUMABLE_CHANGES)


def digest(view: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(view, sort_keys=True, default=str).encode()).hexdigest()


class ConfigError(ValueError):
    """A config value that cannot run, named by its key: refused before anything starts."""


def check_values(cfg) -> None:
    """Refuse values that would otherwise fail only after DeepSpeed has started, naming the key."""
    import timm

    from finetune.backbone import MODEL_ARGS
    from pretrain.model import TEMPORAL

    at_least = {"train.batch_size": 1, "train.steps": 1, "train.ckpt_every": 1, "train.log_every": 1,
                "optim.grad_accum": 1, "data.stride": 1, "model.embed_dim": 1,
                # a clip gives two temporal views of at least 2 frames each (Run.view_length)
                "data.frames": 2}  # fmt: skip
    for key, low in at_least.items():
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{key}={value!r}: must be an integer >= {low}")
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers={cfg.data.num_workers}: must be >= 0")
    if cfg.data.resize is not None and cfg.data.resize < 8:
        raise ConfigError(f"data.resize={cfg.data.resize}: must be at least 8 pixels, or null for the stored size")
    if not timm.is_model(cfg.model.arch):
        close = timm.list_models(f"*{cfg.model.arch}*")[:8]
        raise ConfigError(f"model.arch={cfg.model.arch!r}: not a timm architecture"
                          + (f" (similar: {', '.join(close)})" if close else ""))  # fmt: skip
    refused = sorted(set(cfg.model.args) - MODEL_ARGS)
    if refused:  # a published backbone's loader takes only these (finetune.backbone.MODEL_ARGS)
        raise ConfigError(f"model.args: {', '.join(refused)} not allowed; timm arguments a published backbone "
                          f"may carry: {', '.join(sorted(MODEL_ARGS))}")  # fmt: skip
    if cfg.model.temporal not in TEMPORAL:
        raise ConfigError(f"model.temporal={cfg.model.temporal!r}: one of {sorted(TEMPORAL)}")
    if cfg.deepspeed.stage not in (0, 1, 2):
        raise ConfigError(f"deepspeed.stage={cfg.deepspeed.stage}: ZeRO stage 0, 1 or 2")
    if not cfg.objectives:
        raise ConfigError("objectives: none configured (pick objective=..., e.g. objective=temporal)")
