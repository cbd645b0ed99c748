"""`python -m slurm.shield MODULE ARGS...`: run `python -m MODULE ARGS...` with the stop signals
kept from the processes it forks (DataLoader workers).

SLURM signals every process of a job step (its process tracking finds them all): the SIGTERM of
a requeue or preemption and the --signal warning reach the DataLoader workers as well as the
training process. torch's workers answer SIGTERM by dying, and the training process then fails on
its next batch instead of saving at its next step boundary. torchrun and the deepspeed launcher
signal their ranks only; this makes a SLURM task look the same to the training process: forked
children block the stop signals (a mask, which the handlers torch installs in its workers do not
undo), while the training process itself handles them as it does under those launchers.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT}


def _block_in_child() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m slurm.shield MODULE [ARGS...]")
    os.register_at_fork(after_in_child=_block_in_child)
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
