"""SIGTERM/SIGINT/SIGUSR1 turn into a stop request honoured at the next step boundary (weights and a checkpoint
are saved first; exit code 3). SIGUSR1 is what a SLURM job gets near its time limit
(`--signal=B:USR1@120` in scripts/slurm/train.sbatch, passed on to the tasks).
A second SIGINT interrupts at once.

Before `arm()` (the start-up: rendezvous, the data check of every frame, the checkpoint verification) there is no
step boundary to wait for and nothing to save: a stop signal raises StoppedBeforeTraining at once (exit code 3 as
well, so a SLURM job near its limit is requeued). What the start-up did is kept by its own finally blocks (the
data check's cache, cutie/data/index/stamped_cache.py), so the relaunch goes on from there. A repeated signal
during that unwinding is ignored, except a second SIGINT."""

from __future__ import annotations

import signal

from cutie.training.loop import StopTraining
from cutie.utils.stop_signals import STOP_SIGNALS

RELAUNCH = "relaunch the same command (same exp_id) to resume"


class StoppedBeforeTraining(BaseException):
    """A stop signal during the start-up, before the first step. Not an Exception, like KeyboardInterrupt: the
    handler raises it wherever the start-up is, and a handler of bad input there (`except Exception`: a file that
    fails to decode) must not take it for a bad file and go on."""

    exit_code = StopTraining.exit_code


class StopSignals:
    def __init__(self, *, armed: bool = True) -> None:
        """`armed=False`: the trainer's start-up mode until `arm()` (see the module docstring)."""
        self.requested = False
        self.reason = ""
        self.armed = armed
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.requested:
            return  # already stopping
        self.requested = True
        name = signal.Signals(signum).name
        if not self.armed:
            self.reason = f"received {name} before the first step: nothing to save; {RELAUNCH}"
            raise StoppedBeforeTraining(self.reason)
        self.reason = f"received {name}: saved weights and a checkpoint; {RELAUNCH}"

    def arm(self) -> None:
        """From now on a signal is a request honoured at the next step boundary (the loop checks `requested`)."""
        self.armed = True

    def request(self, reason: str) -> None:
        """Programmatic stop (e.g. a test simulating preemption)."""
        self.requested = True
        self.reason = reason

    def __enter__(self) -> StopSignals:
        for s in STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
