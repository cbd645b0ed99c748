"""The callable that submitit runs in every task: one command in a child process, requeued on
preemption and time limits, a bounded number of times.

Why a child process: the job runs exactly the command a user runs by hand (`python -m pretrain
...`, `python finetune.py ...`, `python -m shards synth ...`), in a fresh interpreter per attempt,
with the torch.distributed environment exported (slurm.env).

How stopping works (read with submitit/core/job_environment.py):

* SLURM signals every process of the job step, children included (proctrack), while submitit's
  handler in this process ignores SIGTERM and, on rank 0 only, answers its pre-end signal (USR2,
  `signal_delay_s` before the time limit, or a preemption) by calling `checkpoint()` and then
  `scontrol requeue`. `checkpoint()` therefore first lets the child finish its final save (it
  forwards the stop, for the local executor that signals this process alone, and waits up to
  `stop_timeout_s`), then returns a fresh instance: nothing about the resume point travels in
  the pickle, the next attempt resumes from what the child saved (pretraining's run directory).
* A requeue that SLURM does itself (`scontrol requeue`, preemption with PreemptMode=REQUEUE)
  sends SIGTERM: the child stops at its next step boundary and exits with its "stopped" status.
  This process then exits without writing a result (whatever the child's status, once a stop
  signal came), so that submitit and the caller see the job as still running, not as failed.
* SLURM's signals reach the child's own children too: pretraining's DataLoader workers block
  them (shards.stream.STOP_SIGNALS), since torch's workers would die on SIGTERM.
* Requeues are counted from SLURM_RESTART_COUNT (every requeue, whoever asked) and from the count
  carried by the fresh instance (the local executor has no SLURM_RESTART_COUNT). Past
  `max_requeues` the job is not requeued again and fails with a message that says so.

Waiting on the child never takes a lock: submitit's handler runs `checkpoint()` inside this
process's main thread, possibly while the main loop is itself waiting, and Popen.wait() holds a
non-reentrant lock during a blocking waitpid. Both sides poll with waitpid(WNOHANG) instead.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time
from typing import Any, Sequence

from submitit.helpers import Checkpointable, DelayedSubmission

log = logging.getLogger("slurm")

# Signals by which SLURM or submitit end a job: a child killed by one of them was stopped (by a
# requeue, a preemption or a cancellation), not broken.
SCHEDULER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGKILL)


class RequeueLimitReached(RuntimeError):
    pass


class ChildFailed(RuntimeError):
    pass


def restart_count() -> int:
    """How many times SLURM has requeued this job (0 on the first run, and outside SLURM)."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    # If this task is killed outright, the child gets SIGTERM (a stop request, for pretraining)
    # instead of running on unowned.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


class ChildTask(Checkpointable):
    """Run `command` (a list) in a child process; return `result` when it exits with 0.

    distributed: export RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, ... from the job (slurm.env).
    stopped_exit: the child's exit status for "saved and stopped early, start me again"
    (pretrain.train.STOPPED_EXIT); the child then exits without a result, awaiting its requeue.
    """

    def __init__(self, command: Sequence[str], *, cwd: str | None = None, env: dict[str, str] | None = None,
                 distributed: bool = False, stopped_exit: int | None = None, max_requeues: int = 3,
                 stop_timeout_s: float = 60.0, result: Any = None, requeues: int = 0) -> None:  # fmt: skip
        if max_requeues < 0:
            raise ValueError(f"max_requeues must be 0 or more, not {max_requeues}")
        self.spec = dict(command=list(command), cwd=cwd, env=dict(env or {}), distributed=distributed,
                         stopped_exit=stopped_exit, max_requeues=max_requeues, stop_timeout_s=stop_timeout_s,
                         result=result)  # fmt: skip
        self.requeues = requeues
        self._child: subprocess.Popen | None = None
        self._status: int | None = None
        self._signalled = False

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "requeues": self.requeues}  # a running child never travels

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _child=None, _status=None, _signalled=False)

    @property
    def command(self) -> list[str]:
        return self.spec["command"]

    def restarts(self) -> int:
        return max(self.requeues, restart_count())

    def __call__(self) -> Any:
        spec = self.spec
        if self.restarts() > spec["max_requeues"]:
            raise RequeueLimitReached(f"this job was requeued {self.restarts()} times, more than its limit "
                                      f"(max_requeues={spec['max_requeues']}); not starting it again")  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **spec["env"]}
        if spec["distributed"]:
            from slurm.env import distributed_env

            env.update(distributed_env())
        log.info("attempt %d: %s", self.restarts() + 1, " ".join(self.command))
        handlers = self._note_stop_signals()
        self._child = subprocess.Popen(self.command, cwd=spec["cwd"], env=env, preexec_fn=_die_with_parent)
        try:
            status = self._wait(None)
        finally:
            self._end_child()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        if status == 0:
            return spec["result"]
        if status == spec["stopped_exit"] or -status in SCHEDULER_SIGNALS or self._signalled:
            # Stopped for a requeue: leave no result behind (submitit would take it as the job's
            # end) and let SLURM, or submitit's handler on rank 0, start the next attempt.
            log.warning("the child stopped (status %d) on the scheduler's signal: this attempt ends here and "
                        "the requeued job resumes from what it saved", status)  # fmt: skip
            raise SystemExit(status)
        raise ChildFailed(f"{' '.join(self.command)} exited with status {status}; its output is in this job's log")

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """submitit's pre-end signal on rank 0: let the child save, then requeue a fresh instance."""
        self._stop_child()
        done = self.restarts()
        if done >= self.spec["max_requeues"]:
            raise RequeueLimitReached(f"not requeued: this job was already requeued {done} times "
                                      f"(max_requeues={self.spec['max_requeues']}); what the last attempt saved "
                                      "stays in its run directory, and submitting it again resumes from there")  # fmt: skip
        log.warning("requeueing (requeue %d of at most %d)", done + 1, self.spec["max_requeues"])
        return DelayedSubmission(ChildTask(**self.spec, requeues=done + 1))

    def _note_stop_signals(self) -> dict:
        """Remember a stop signal (SLURM's SIGTERM, submitit's pre-end signal) on top of the
        handlers in place (submitit's): a child that fails after one was stopped, not broken.
        Returns the handlers to put back when the child has ended."""
        from submitit import JobEnvironment

        previous = {}
        for sig in {signal.SIGTERM, JobEnvironment._usr_sig()}:
            before = signal.getsignal(sig)

            def note(signum, frame, before=before):
                self._signalled = True
                if callable(before):
                    before(signum, frame)
                elif before == signal.SIG_DFL:  # what would have happened without us
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)

            try:
                signal.signal(sig, note)
            except ValueError:  # not the main thread: signals are not ours to handle
                break
            previous[sig] = before
        return previous

    # -- the child, without locks (see the module docstring) --

    def _poll(self) -> int | None:
        if self._status is None and self._child is not None:
            try:
                pid, raw = os.waitpid(self._child.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by the frame this signal handler interrupted
                return self._status if self._status is not None else -int(signal.SIGKILL)
            if pid:
                self._status = os.waitstatus_to_exitcode(raw)
                self._child.returncode = self._status  # so that Popen never waits for it again
        return self._status

    def _wait(self, timeout: float | None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (status := self._poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.2)
        return status

    def _stop_child(self) -> None:
        if self._child is None or self._poll() is not None:
            return
        self._child.send_signal(signal.SIGTERM)  # a stop request: pretraining saves at its next step
        if self._wait(self.spec["stop_timeout_s"]) is None:
            log.warning("the child did not stop within %.0fs; killing it (the next attempt resumes from its "
                        "last complete checkpoint)", self.spec["stop_timeout_s"])  # fmt: skip
            self._child.kill()
            self._wait(None)

    def _end_child(self) -> None:
        """On the way out for any reason (an exception, SystemExit from a requeue): no orphan."""
        if self._child is not None and self._poll() is None:
            self._stop_child()
