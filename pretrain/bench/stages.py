"""`torchrun --nproc_per_node 2 -m pretrain.bench stages`: the step time of ZeRO stages 0, 1 and 2
on the same model and data, their engines alternating step by step in one process group; rank 0
prints medians and the ratio to stage 0 (data wait excluded)."""

from __future__ import annotations

import argparse
import shutil
import tempfile

from pretrain.bench.config import add_run_flags, add_shape_flags, compose
from shards.timing import median

STAGES = (0, 1, 2)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_shape_flags(p)
    add_run_flags(p)


def main(args: argparse.Namespace) -> dict:
    import torch.distributed as dist

    from pretrain.train import Run

    runs, times = {}, {}
    for stage in STAGES:
        run_dir = tempfile.mkdtemp(prefix=f"auforge-bench-zero{stage}-")
        run = Run(compose(args, run_dir, f"deepspeed=zero{stage}"))
        runs[stage], times[stage] = (run, iter(run.stream)), []
    try:
        for i in range(args.warmup + args.steps):
            for stage, (run, batches) in runs.items():
                record = run.train_step(batches)
                if i >= args.warmup:
                    times[stage].append(sum(v for k, v in record.items() if k.startswith("time/") and k != "time/data"
                                             and "objective:" not in k))  # objectives: within the forward
        rank, world = dist.get_rank(), dist.get_world_size()
        base = median(times[0])
        if rank == 0:
            print(f"ZeRO stages, {args.arch} at {args.size} px, {world} ranks x {args.batch} clips, "
                  f"median of {args.steps} steps (data wait excluded):")  # fmt: skip
            for stage in runs:
                t = median(times[stage])
                clips = args.batch * world / t
                print(f"  stage {stage}: {t * 1e3:8.1f} ms/step  {clips:7.1f} clips/s  {t / base:6.3f} x stage 0")
        return {stage: median(t) for stage, t in times.items()}
    finally:
        for run, batches in runs.values():
            batches.close()
            shutil.rmtree(run.run_dir, ignore_errors=True)
