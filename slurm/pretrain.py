"""`python -m slurm pretrain`: one multi-node job running `python -m pretrain` in every task."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from slurm.config import compose, with_override
from slurm.executor import make_executor
from slurm.task import ChildTask


def submit(args, overrides: list[str]):
    """Returns (job, run_dir). The run directory is fixed here, absolute: every attempt of the
    job resumes from the same one."""
    from pretrain.config import check_values
    from pretrain.train import STOPPED_EXIT

    cfg = compose("pretrain", overrides)
    check_values(cfg)  # a value that cannot run is refused here, not on the nodes after queueing
    run_dir = Path(cfg.train.run_dir).resolve()
    overrides = with_override(overrides, "train.run_dir", run_dir)
    tasks_per_node = args.tasks_per_node or max(1, args.gpus_per_node)
    folder = Path(args.folder).resolve() if args.folder else run_dir / "submitit"
    executor = make_executor(args, folder, "pretrain", nodes=args.nodes, tasks_per_node=tasks_per_node)
    # `python -m pretrain OVERRIDES`, as a user runs it (its DataLoader workers block SLURM's stop
    # signals: shards.stream.STOP_SIGNALS)
    task = ChildTask([sys.executable, "-m", "pretrain", *overrides], cwd=os.getcwd(), distributed=True,
                     stopped_exit=STOPPED_EXIT, max_requeues=args.max_requeues,
                     stop_timeout_s=max(10, args.signal_delay - 30), result=str(run_dir))  # fmt: skip
    return executor.submit(task), run_dir


def describe(job, run_dir: Path, args) -> str:
    ranks = args.nodes * (args.tasks_per_node or max(1, args.gpus_per_node))
    where = "locally" if args.local else f"on {args.nodes} node(s)"
    return "\n".join([
        f"submitted pretraining job {job.job_id} ({ranks} rank(s) {where})",
        f"run directory: {run_dir}",
        f"follow: tail -f {job.paths.stdout}   (rank 0; the others beside it)",
        *([] if args.local else [f"queue:  squeue -j {job.job_id}    cancel: scancel {job.job_id}"]),
    ])  # fmt: skip


def outcome(job, run_dir: Path) -> str:
    job.results()  # raises with the job's log if a task failed
    published = sorted(str(p) for p in (run_dir / "published").glob("*/model.safetensors"))
    return f"pretraining job {job.job_id} finished: {run_dir}; published {', '.join(published) or 'nothing'}"
