"""`python -m slurm study [options] -- STUDY_OVERRIDES` (what `python -m finetune.study preset=slurm`
runs): the study as one job array, a task a variant (`python -m finetune.study ... only=VARIANT`:
its pretraining, features and cells, none finished recomputed), then a dependent job that writes
the report from every cell (finetune.study_report)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from slurm import queue
from slurm.config import compose, with_override
from slurm.executor import describe_array, submit_array_then
from slurm.task import ChildTask


def submit(args, overrides: list[str]):
    """Returns (variant jobs, report job, study directory)."""
    for key in ("only", "report_only"):
        if any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides):
            raise ValueError(f"{key} is set per job by the launcher; leave it out of the study's overrides")
    cfg = compose("study", overrides)  # a bad override is refused before anything waits in the queue
    root = Path(cfg.study_dir).resolve()
    # the tasks run here and now, whatever the preset says (preset=slurm names this launcher)
    overrides = with_override(with_override(overrides, "study_dir", root), "launcher", "local")
    folder = Path(args.folder).resolve() if args.folder else root / "submitit"
    tasks = [ChildTask([sys.executable, "-m", "finetune.study", *overrides, f"only={name}"], cwd=os.getcwd(),
                       max_requeues=args.max_requeues, result=name) for name in cfg.variants]  # fmt: skip
    jobs, report_job = submit_array_then(args, folder, "study", tasks, "study-report", report, overrides)
    return jobs, report_job, root


def report(overrides: list[str]) -> str:
    """The report of every finished cell; returns its path."""
    from finetune.study_report import write_report

    cfg = compose("study", overrides)
    write_report(cfg)
    return str(Path(cfg.study_dir) / "report.md")


def describe(jobs, report_job, root: Path, args) -> str:
    where = f"study directory: {root} (report.md appears when the report job ends)"
    return describe_array(jobs, report_job, "variant(s)", "report", where, args)


def outcome(jobs, report_job, root: Path) -> str:
    return f"study of {len(jobs)} variants: {queue.last_result(jobs, report_job)}"
