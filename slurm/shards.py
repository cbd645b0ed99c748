"""`python -m slurm shards synth|build ...`: a shard set built by a job array, one task per part of
the inputs, then a dependent job that merges the parts' manifests into one (shards.parts)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from slurm import queue
from slurm.executor import describe_array, submit_array_then
from slurm.task import ChildTask

# `python -m shards` commands that write a set in parts (their --part K/N option).
PART_COMMANDS = ("synth", "build")


def submit(args, command: str, tool_args: list[str]):
    """Returns (part jobs, merge job, output folder)."""
    from shards.__main__ import build_parser
    from shards.parts import merge

    if command not in PART_COMMANDS:
        raise ValueError(f"python -m shards {command}: only {', '.join(PART_COMMANDS)} can be built in parts")
    if any(a == "--part" or a.startswith("--part=") for a in tool_args):
        raise ValueError("--part is set per array task by the launcher: give the number of parts with --parts N")
    parsed = build_parser().parse_args([command, *tool_args, "--part", f"0/{args.parts}"])  # exits on bad input
    out = Path(parsed.out).resolve()
    folder = Path(args.folder).resolve() if args.folder else out / ".submitit"
    tasks = [ChildTask([sys.executable, "-m", "shards", command, *tool_args, "--part", f"{k}/{args.parts}"],
                       cwd=os.getcwd(), max_requeues=args.max_requeues) for k in range(args.parts)]  # fmt: skip
    jobs, merge_job = submit_array_then(args, folder, f"shards-{command}", tasks, "shards-merge", merge, str(out))
    return jobs, merge_job, out


def describe(jobs, merge_job, out: Path, args) -> str:
    return describe_array(jobs, merge_job, "part(s)", "merge", f"output: {out} (manifest.json appears when the merge ends)", args)


def outcome(jobs, merge_job, out: Path) -> str:
    manifest = queue.last_result(jobs, merge_job)
    return f"merged {len(jobs)} parts into {out / 'manifest.json'}: {manifest.totals} in {len(manifest.shards)} shards"
