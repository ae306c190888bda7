"""SIGTERM/SIGINT/SIGUSR1 turn into a stop request honoured at the next step boundary (weights and a checkpoint
are saved first; exit code 3). SIGUSR1 is what a SLURM job gets near its time limit
(`--signal=B:USR1@120` in scripts/slurm/train.sbatch, passed on to the tasks).
A second SIGINT interrupts at once."""

from __future__ import annotations

import signal

from cutie.utils.stop_signals import STOP_SIGNALS


class StopSignals:
    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.reason = (
            f"received {signal.Signals(signum).name}: saved weights and a checkpoint; relaunch the same "
            "command (same exp_id) to resume"
        )

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
