"""Waiting for submitted jobs, on clusters with or without SLURM accounting.

submitit learns a job's state from `sacct`, which needs slurmdbd; small clusters (and the local
test cluster) run without it. `scontrol show job` answers everywhere for as long as the
controller keeps the job (MinJobAge after its end), and a requeued job is PENDING there, not done.
"""

from __future__ import annotations

import re
import subprocess
import time

from submitit.local.local import LocalJob

# States after which a job will not run again by itself (a requeued job is PENDING, not one of these).
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
         "PREEMPTED", "SPECIAL_EXIT"}  # fmt: skip


def show_job(job_id: str) -> dict[str, str]:
    """`scontrol show job -o ID` as a dict (JobState, Restarts, NodeList, ...); {} if unknown."""
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True,
                             timeout=30).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    line = out.strip().splitlines()[0] if out.strip() else ""
    return dict(re.findall(r"(\w+)=(\S*)", line))


def slurm_state(job_id: str) -> str | None:
    return show_job(job_id).get("JobState")


def ended(job) -> bool:
    """True once a submitit job will not run again: it wrote its result, or SLURM says it ended."""
    if job.paths.result_pickle.exists():
        return True
    if isinstance(job, LocalJob):
        return job.done()
    state = slurm_state(job.job_id)
    if state is None:  # no longer known to the controller: ask submitit (sacct), if it can tell
        return job.done(force_check=True)
    return state in ENDED


def wait(jobs, poll_s: float = 2.0, timeout_s: float | None = None) -> None:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = list(jobs)
    while pending:
        pending = [j for j in pending if not ended(j)]
        if pending:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"jobs {[j.job_id for j in pending]} still running after {timeout_s:.0f}s")
            time.sleep(poll_s)


def last_result(jobs, last):
    """The dependent job's result, once every array task succeeded (raises with the first
    failed task's traceback and log paths otherwise)."""
    for job in jobs:
        job.result()
    return last.result()
