"""The command-line options every launcher shares, and the submitit executor they describe."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import submitit

DEFAULT_SIGNAL_DELAY_S = 120  # SLURM's warning before the time limit: time for a final checkpoint


def minutes(text: str) -> int:
    """SLURM's time formats, as minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+(?::\d+){0,2})", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"time {text!r}: use minutes (90), H:MM:SS (1:30:00) or D-HH:MM:SS")
    fields = [int(x) for x in match.group(2).split(":")]
    if match.group(1) is not None:
        h, m, s = (fields + [0, 0])[:3]
        total = int(match.group(1)) * 1440 + h * 60 + m + s / 60
    else:
        total = {1: lambda m: m, 2: lambda m, s: m + s / 60, 3: lambda h, m, s: h * 60 + m + s / 60}[len(fields)](*fields)
    if total <= 0:
        raise argparse.ArgumentTypeError(f"time {text!r} is not positive")
    return max(1, round(total))


def gigabytes(text: str) -> float:
    """`--mem`: `32G`, `32GB`, `500M` or a number of GB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([GgMmTt]?)[Bb]?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"memory {text!r}: use for example 32G or 500M")
    value, unit = float(match.group(1)), match.group(2).upper()
    return value * {"": 1, "G": 1, "M": 1 / 1024, "T": 1024}[unit]


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be 1 or more")
    return value


def add_resource_args(p: argparse.ArgumentParser, *, nodes: bool = False, array: bool = False) -> None:
    g = p.add_argument_group("resources (sbatch's options of the same names)")
    if nodes:
        g.add_argument("--nodes", type=positive, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0)
    if nodes:
        g.add_argument("--tasks-per-node", type=positive,
                       help="processes (ranks) per node; default: one per GPU, or 1 without GPUs")  # fmt: skip
    g.add_argument("--cpus-per-task", type=positive)
    g.add_argument("--mem", type=gigabytes, help="memory per node, e.g. 64G")
    g.add_argument("--time", type=minutes, default=60, help="time limit: minutes, H:MM:SS or D-HH:MM:SS (default 60)")
    for name in ("partition", "account", "qos", "constraint"):
        g.add_argument(f"--{name}")
    g.add_argument("--job-name")
    g.add_argument("--folder", help="submitit's folder: job scripts, pickles and logs")
    g.add_argument("--setup", action="append", default=[], help="a shell line run before the task (repeatable)")
    if array:
        g.add_argument("--array-parallelism", type=positive, help="array tasks running at once")
    r = p.add_argument_group("requeue")
    r.add_argument("--max-requeues", type=int, default=3,
                   help="requeues after preemption or the time limit before the job gives up (default 3)")  # fmt: skip
    r.add_argument("--signal-delay", type=positive, default=DEFAULT_SIGNAL_DELAY_S,
                   help="seconds before the time limit at which SLURM asks for a final checkpoint")  # fmt: skip
    p.add_argument("--local", action="store_true", help="run here with submitit's local executor (no SLURM)")
    p.add_argument("--wait", action="store_true", help="wait for the job(s) and print the outcome")


def make_executor(args, folder: str | Path, name: str, *, nodes: int = 1, tasks_per_node: int = 1,
                  dependency: str | None = None) -> submitit.Executor:  # fmt: skip
    """A SlurmExecutor (or a LocalExecutor with --local) with the options' resources;
    `dependency` is sbatch's (afterok:ID), and a job whose dependency fails is cancelled."""
    if args.max_requeues < 0:
        raise ValueError(f"--max-requeues {args.max_requeues}: must be 0 or more")
    if args.local:
        if nodes > 1:
            raise ValueError(f"--local runs on this one machine: --nodes {nodes} is not possible "
                             "(use --tasks-per-node for several ranks)")  # fmt: skip
        executor = submitit.LocalExecutor(folder, max_num_timeout=args.max_requeues)
        executor.update_parameters(timeout_min=args.time, tasks_per_node=tasks_per_node,
                                   gpus_per_node=args.gpus_per_node, signal_delay_s=args.signal_delay,
                                   **({"setup": args.setup} if args.setup else {}))  # fmt: skip
        return executor
    try:
        executor = submitit.SlurmExecutor(folder, max_num_timeout=args.max_requeues)
    except RuntimeError as e:  # no srun on this machine
        raise RuntimeError(f"{e} (no SLURM here: --local runs the same job with submitit's local executor)") from None
    params = dict(job_name=args.job_name or name, time=args.time, nodes=nodes, ntasks_per_node=tasks_per_node,
                  signal_delay_s=args.signal_delay, partition=args.partition, account=args.account, qos=args.qos,
                  constraint=args.constraint, cpus_per_task=args.cpus_per_task,
                  gpus_per_node=args.gpus_per_node or None, setup=args.setup or None,
                  mem=f"{max(1, round(args.mem * 1024))}MB" if args.mem else None,
                  # requeue is what preemption and time limits end in; the job opts in explicitly
                  additional_parameters={"requeue": True, **({"kill-on-invalid-dep": "yes"} if dependency else {})},
                  dependency=dependency)  # fmt: skip
    if getattr(args, "array_parallelism", None):
        params["array_parallelism"] = args.array_parallelism
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def array_id(job) -> str:
    """The SLURM job id of a whole array from one of its tasks' ids (12_3 -> 12)."""
    return str(job.job_id).split("_")[0]


def describe_array(jobs, last, what: str, then: str, where: str, args) -> str:
    """What was submitted: an array (`what`: one task per item) and the job that depends on it."""
    ids = array_id(jobs[0]) if not args.local else ", ".join(j.job_id for j in jobs)
    return "\n".join([
        f"submitted {len(jobs)} {what} as job {'array ' if not args.local else ''}{ids}, then {then} job {last.job_id}",
        where,
        f"follow: tail -f {jobs[0].paths.stdout}   (the first; {then}: {last.paths.stdout})",
        *([] if args.local else [f"queue:  squeue -j {array_id(jobs[0])},{last.job_id}"]),
    ])  # fmt: skip


def submit_array_then(args, folder: Path, name: str, tasks: list, then: str, fn, *fn_args):
    """`tasks` as one job array, then `fn(*fn_args)` as a job that starts once every task has
    succeeded (and is cancelled if one fails). Returns (array jobs, dependent job)."""
    from slurm import queue

    jobs = make_executor(args, folder, name).submit_array(tasks)
    if args.local:  # the local executor knows no dependencies: wait here
        queue.wait(jobs)
        for job in jobs:
            job.result()
    after = make_executor(args, folder, then, dependency=None if args.local else f"afterok:{array_id(jobs[0])}")
    return jobs, after.submit(fn, *fn_args)
