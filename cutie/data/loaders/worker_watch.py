"""A loader's worker processes watched from a thread: a worker that dies becomes a LoaderFailure in the main
thread, even when the main thread is blocked inside a library waiting for that worker.

DALI's parallel external source needs this: after a worker is SIGKILLed (the kernel's out-of-memory killer), the
main thread can stay blocked for ever in DALI's task queue (a multiprocessing Condition whose sleeper died). The
watch thread then signals the main thread (SIGUSR2); the handler raises LoaderFailure out of the blocked wait (a
semaphore wait returns on a signal), but only while the main thread is inside the loader's `run` (`inside`), so a
death can never surface in the middle of a training step: otherwise the loader raises it before its next run.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from cutie.data.loaders.base import LoaderFailure

INTERRUPT = signal.SIGUSR2  # unused by the trainer (stop requests: SIGTERM, SIGINT, SIGUSR1)


def how_it_ended(pid: int, code: int | None) -> str:
    """A dead worker as a message names it, with the usual cause of its end."""
    if code == -signal.SIGKILL:
        return f"pid {pid} killed by SIGKILL (usually the kernel's out-of-memory killer: see dmesg)"
    if code == -signal.SIGBUS:
        return f"pid {pid} killed by SIGBUS (usually /dev/shm full: docker --shm-size=16g or ipc: host)"
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:  # a real-time signal: no name
            name = f"signal {-code}"
        return f"pid {pid} killed by {name}"
    return f"pid {pid} ended" if code is None else f"pid {pid} exited with code {code}"


def failure_message(ended: list[tuple[int, int | None]], num_workers: int) -> str:
    return (
        f"data loader worker(s) ended during training: {', '.join(how_it_ended(p, c) for p, c in ended)}; fix: "
        f"lower num_workers (now {num_workers}) or max_batch_per_gpu, or give the job more host memory, then "
        "relaunch the same command (it resumes)"
    )


class WorkerWatch:
    """Watches `procs` (this process's multiprocessing children) until `stop`. Interrupts only when started on
    the main thread (where a signal handler can be installed); otherwise a death is raised by `check`."""

    def __init__(self, procs: list[multiprocessing.process.BaseProcess], num_workers: int) -> None:
        self._procs = procs
        self._num_workers = num_workers
        self._inside = False
        self.failure: str | None = None
        self._named = threading.Event()  # set once `failure` names the dead workers
        self._stop_r, self._stop_w = multiprocessing.Pipe(duplex=False)
        self._main = threading.main_thread().ident
        self._interrupts = threading.current_thread() is threading.main_thread()
        self._previous = signal.signal(INTERRUPT, self._interrupt) if self._interrupts else None
        self._thread = threading.Thread(target=self._watch, name="loader-worker-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        sentinels = [p.sentinel for p in self._procs]
        ready = multiprocessing.connection.wait([*sentinels, self._stop_r])
        if self._stop_r in ready or not ready:
            return
        dead = [p for p in self._procs if p.sentinel in ready]
        deadline = time.monotonic() + 2
        for p in dead:
            # The sentinel closes before the exit status can be collected, and DALI's own observer may collect it
            # first (then it lands on the same Process object a moment later).
            p.join(1)
            while p.exitcode is None and time.monotonic() < deadline:
                time.sleep(0.01)
        self.failure = failure_message([(p.pid, p.exitcode) for p in dead], self._num_workers)
        self._named.set()
        if self._inside and self._interrupts:
            signal.pthread_kill(self._main, INTERRUPT)

    def _interrupt(self, signum, frame) -> None:
        if self._inside and self.failure is not None:
            raise LoaderFailure(self.failure)

    def check(self, *, settle: float = 0.0) -> None:
        """Raises the failure of a worker that died since the watch began. `settle`: seconds to wait for the watch
        to name a worker that has already ended (the library's own error about it may come first)."""
        if self.failure is None and settle > 0 and any(not p.is_alive() for p in self._procs):
            self._named.wait(settle)
        if self.failure is not None:
            raise LoaderFailure(self.failure)

    @contextmanager
    def inside(self) -> Iterator[None]:
        """The block (a blocking call into the library) that a worker's death may interrupt."""
        self._inside = True  # before the check: a death after it then finds the flag set and signals
        try:
            self.check()
            yield
        finally:
            self._inside = False

    def stop(self) -> None:
        self._stop_w.send(None)
        self._thread.join()
        for end in (self._stop_r, self._stop_w):
            end.close()
        if self._interrupts and threading.current_thread() is threading.main_thread():
            signal.signal(INTERRUPT, self._previous)
            self._interrupts = False
