"""TensorBoard events of a run (main process): scalars and picture grids in <run_dir>/tb/.

TensorBoard's own writer reopens its event file by name on every flush, so a symlink planted at that name during
a run would be written through. This one opens a fresh event file once (cutie/utils/append_file.py: no link
followed, never an existing file) and writes each record through that descriptor. The records are TensorBoard's
(its Event protos and TFRecord framing, torch's summary builders), so TensorBoard reads them as usual.

Writes happen at log steps only, synchronously (a few hundred bytes; a grid's PNG is encoded either way). A write
that fails (a full disk) stops the events for the rest of the run with one warning: pictures and curves are not
worth ending a training for, and the next checkpoint meets the same disk and says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import BinaryIO

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard.summary import image, scalar

from cutie.utils.append_file import open_append_inside


class EventWriter:
    """add_scalar / add_image / close: the part of SummaryWriter's interface the hooks use; each record is on
    disk when the call returns."""

    def __init__(self, run_dir: Path, log: logging.Logger, folder: str = "tb") -> None:
        self.log = log
        self.path, f = self._create(run_dir, folder)
        self._records: RecordWriter | None = RecordWriter(f)
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    @staticmethod
    def _create(run_dir: Path, folder: str) -> tuple[Path, BinaryIO]:
        stem = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        for k in range(1000):  # a relaunch within the same second in the same pid namespace takes the next name
            try:
                name = f"{folder}/{stem}.{k}"
                return run_dir / name, open_append_inside(run_dir, name, exclusive=True)
            except FileExistsError:
                continue
        raise FileExistsError(f"no free TensorBoard event file name in {run_dir / folder}")

    def _write(self, event: Event) -> None:
        if self._records is None:
            return
        try:
            self._records.write(event.SerializeToString())
            self._records.flush()  # whole records only: TensorBoard reads the file while it grows
        except OSError as e:
            self.log.warning(f"TensorBoard events stop here ({self.path}: {e.strerror or e}); training goes on")
            with contextlib.suppress(OSError):  # the buffer's flush meets the same error
                self.close()

    def add_scalar(self, tag: str, value, step: int) -> None:
        self._write(Event(wall_time=time.time(), step=step, summary=scalar(tag, value)))

    def add_image(self, tag: str, img, step: int) -> None:
        """`img`: 3*H*W, floats in [0, 1] or uint8."""
        self._write(Event(wall_time=time.time(), step=step, summary=image(tag, img, dataformats="CHW")))

    def close(self) -> None:
        if self._records is not None:
            records, self._records = self._records, None
            records.close()
