"""How a failed run ends: every process of it, promptly, with a non-zero status.

A rank that fails kills its data workers and exits (`end_after_fatal_error`). Its peers are
then blocked in a collective that will never complete, and their SIGTERM handler only asks for
a checkpoint at a step boundary that never comes; under SLURM nobody would signal them at all,
and they would hold their nodes until the process group's timeout (30 min for gloo). So a
failing rank also leaves a marker in the run directory (shared by every node, as checkpoints
need), and every rank watches for its peers' markers of this start and ends when one appears.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import traceback
import uuid
from pathlib import Path

from pretrain.distributed import broadcast_object
from shards.atomic import write_text_atomic
from shards.stream import STOP_SIGNALS

log = logging.getLogger("pretrain")
POLL_S = 2.0


def end_after_fatal_error() -> None:
    """Make a failed run exit now. The data workers block the stop signals (see STOP_SIGNALS), so
    at interpreter exit multiprocessing's SIGTERM could not end them and its join would wait
    forever, holding the job's nodes; they are killed instead (SIGKILL cannot be blocked), and the
    stop signals get their default action back so that a scheduler's SIGTERM ends this process."""
    import multiprocessing

    # torch's SIGCHLD handler raises when a worker dies by a signal: it would cut the killing short
    # and leave the other workers for the exit to wait on
    for sig in (*STOP_SIGNALS, signal.SIGCHLD):
        try:
            signal.signal(sig, signal.SIG_DFL)
        except ValueError:  # not the main thread
            break
    children = multiprocessing.active_children()
    for child in children:  # all killed first, then waited for
        with contextlib.suppress(Exception):
            child.kill()
    for child in children:
        with contextlib.suppress(Exception):
            child.join(timeout=5)


class PeerFailures:
    """Markers `RUN_DIR/failed/START-rankK` of one start (START: a token rank 0 draws and
    broadcasts, so a marker left by an earlier start never matches)."""

    def __init__(self, run_dir: str | Path, rank: int, world: int):
        self.folder, self.rank, self.world = Path(run_dir) / "failed", rank, world
        self.start = broadcast_object(uuid.uuid4().hex[:12] if rank == 0 else None)
        if world > 1:
            threading.Thread(target=self._watch, name="peer-failures", daemon=True).start()

    def report(self, error: BaseException) -> None:
        """Say that this rank failed (its peers end on seeing it)."""
        if self.world > 1:
            self.folder.mkdir(parents=True, exist_ok=True)
            text = "".join(traceback.format_exception_only(type(error), error)).strip()
            write_text_atomic(self.folder / f"{self.start}-rank{self.rank}", text + "\n")

    def _watch(self) -> None:
        mine = f"{self.start}-rank{self.rank}"
        while True:
            failed = [m for m in self.folder.glob(f"{self.start}-rank*") if m.name != mine]
            if failed:
                log.error("%s failed (%s): ending this rank too", failed[0].name.split("-")[-1],
                          failed[0].read_text().strip()[:500])  # fmt: skip
                end_after_fatal_error()
                os._exit(1)
            threading.Event().wait(POLL_S)
