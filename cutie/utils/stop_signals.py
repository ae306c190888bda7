"""The signals that ask a training run to stop, and how the trainer's helper processes stay out of their way."""

from __future__ import annotations

import ctypes
import os
import signal

# SIGTERM: torchrun, docker stop, scancel; SIGINT: Ctrl-C; SIGUSR1: SLURM near the time limit (--signal=B:USR1@120)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def leave_trainer_group(trainer_pid: int) -> None:
    """Called first in a loader worker of the trainer `trainer_pid`. torchrun (and a terminal's Ctrl-C) signals the
    trainer's whole process group; a worker killed by that would fail the trainer's next batch before the trainer
    saved its checkpoint at the step boundary. So the worker leaves the group: the trainer alone handles the stop
    request and shuts its workers down itself. Out of the group, a kill of the group (torchrun's SIGKILL after its
    grace period) no longer reaches the worker: it gets SIGKILL when the trainer dies instead (Linux)."""
    os.setpgid(0, 0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: not Linux; the loader's own watchdog remains
        pass
    if os.getppid() != trainer_pid:  # the trainer died before the line above took effect
        os._exit(1)


def quiet_pool_worker(trainer_pid: int) -> None:
    """The initializer of a process pool of the trainer's start-up checks (`functools.partial` with the trainer's
    pid). The worker leaves the trainer's process group as a loader worker does: a worker killed by a group signal
    while it holds the pool's queue lock would hang the pool's terminate() for ever. The trainer alone handles the
    stop and terminates the pool, whose SIGTERM then ends the worker quietly: the handlers a forked worker
    inherited from the trainer (which would raise and print a traceback) go back to the defaults."""
    leave_trainer_group(trainer_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in STOP_SIGNALS:
        if s != signal.SIGINT:
            signal.signal(s, signal.SIG_DFL)
