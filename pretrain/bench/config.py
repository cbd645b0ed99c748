"""The flags the benchmarks share, and the config that `step` and `stages` build their
`pretrain.train.Run` from: the pretraining job's own (`configs/pretrain.yaml`, composed by
Hydra), with the flags and `--override` as plain Hydra overrides."""

from __future__ import annotations

import argparse


def add_shape_flags(p: argparse.ArgumentParser) -> None:
    """What a step is made of, and how many are measured (every benchmark)."""
    p.add_argument("--arch", default="resnet18", help="timm architecture (model.arch)")
    p.add_argument("--size", type=int, default=56, help="frame side in pixels (data.resize)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (data.frames); views take 3/4 of them")
    p.add_argument("--stride", type=int, default=2,
                   help="stored frames between them (data.stride; 2, not pretraining's 5: the same step "
                        "cost, shorter clips to render)")  # fmt: skip
    p.add_argument("--batch", type=int, default=16, help="clips per step (train.batch_size)")
    p.add_argument("--steps", type=int, default=20, help="measured steps of each kind")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps of each kind first")


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The rest of a run's config (the benchmarks that build a `Run`)."""
    p.add_argument("--objectives", default="temporal",
                   help="objective config group (configs/objective/NAME.yaml); for a subset or other weights,"
                        " Hydra overrides such as --override '~objectives.clip_contrastive'")  # fmt: skip
    p.add_argument("--workers", type=int, default=None, help="data.num_workers (default: the config's)")
    p.add_argument("--clips", type=int, default=64, help="clips in the synthetic set")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override of the pretraining config, after the flags' (repeatable)")


def compose(args: argparse.Namespace, run_dir: str, *last: str):
    """The pretraining config for a benchmark run in `run_dir`: `configs/pretrain.yaml` with the
    flags as Hydra overrides, then `--override`, then `last`; synthetic clips long enough for the
    frames a clip's window spans."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    from finetune.config import CONFIG_DIR
    from pretrain.config import register

    register()

    flags = [
        f"model.arch={args.arch}", f"data.resize={args.size}", f"data.frames={args.frames}",
        f"data.stride={args.stride}", f"train.batch_size={args.batch}", f"train.run_dir={run_dir}",
        "train.steps=100000", "eval.enabled=false",
        f"objective={args.objectives}", f"data.synthetic.clips={args.clips}", "data.synthetic.identities=8",
        "data.synthetic.shard_samples=16", f"data.synthetic.size={args.size}",
        *([f"data.num_workers={args.workers}"] if args.workers is not None else []),
    ]  # fmt: skip
    after = [*args.override, *last]
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
            cfg = hydra_compose(config_name="pretrain", overrides=[*flags, *after])
            span = (cfg.data.frames - 1) * cfg.data.stride + 1
            if cfg.data.synthetic.frames < span:
                cfg = hydra_compose(config_name="pretrain", overrides=[*flags, f"data.synthetic.frames={span}", *after])
    except HydraException as e:
        raise SystemExit(f"python -m pretrain.bench: {e}") from None
    return cfg
