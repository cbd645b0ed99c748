"""File locks (flock). One start per run directory: an exclusive lock that the job holds for its
life (pretraining and fine-tuning both take it before they write anything there); and `locked`,
for a short step that processes take in turn."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger("shards.runlock")
LOCK = "run.lock"


class RunInUse(SystemExit):
    """Another start holds the run directory's lock."""


_held: dict[Path, int] = {}  # run directory -> the descriptor holding its lock, in this process


def lock_run_dir(run_dir: str | Path) -> None:
    """Hold RUN_DIR/run.lock (flock, exclusive) until this process exits or `unlock_run_dir`;
    RunInUse, naming the holder, when another process holds it. A second call is a no-op.

    The kernel drops a flock when its holder dies, so a lock file left by a killed run never
    blocks: the file's content only says who holds it. On a network filesystem the lock holds
    across nodes where the filesystem supports flock (NFSv4, Lustre mounted with -o flock);
    where it does not, a warning says that two starts would not be stopped."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "a start still writing its name"
        os.close(fd)
        raise RunInUse(
            f"{run_dir} is in use by another start ({holder}); two starts in one run directory would train "
            "side by side and write the same checkpoints. Wait for it to end or stop it, or use another train.run_dir."
        ) from None
    except OSError as e:
        os.close(fd)
        log.warning("cannot lock %s (%s): a second start in this run directory would not be refused", path, e)
        return
    # Written in place, not replaced: the lock belongs to this file's inode.
    holder = f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S %z')}"
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder}\n".encode(), 0)
    _held[run_dir] = fd


@contextlib.contextmanager
def locked(path: str | Path):
    """Hold an exclusive flock on the file `path` (created if missing) for the `with` block,
    waiting while another process holds it: ranks fetching one backbone, or publishers into one
    index, take turns. Unlike `lock_run_dir`, which refuses a second holder."""
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def unlock_run_dir(run_dir: str | Path) -> None:
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # the last descriptor of the lock's file: the kernel releases it


def _forget_locks_in_child() -> None:
    # A forked child (a DataLoader worker) shares the lock's open file: closing its copy, without
    # unlocking, keeps a worker that outlives a killed run from holding the run directory.
    for fd in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)
