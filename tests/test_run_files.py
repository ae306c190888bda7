"""Files a run keeps open (train.log, metrics.jsonl, TensorBoard events): opened once, never through a symlink,
and what TensorBoard reads back is what was written."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from cutie.training.logs import setup_logging
from cutie.training.tb_events import EventWriter
from cutie.utils.append_file import open_append_inside
from cutie.utils.atomic import UnsafePathError, current_umask
from cutie.utils.dist import DistState
from cutie.utils.paths import PathEscapeError

MAIN = DistState()


def _write(root, rel, data: bytes, **kw) -> None:
    with open_append_inside(root, rel, **kw) as f:
        f.write(data)


def test_appends_create_folders_and_keep_earlier_lines(tmp_path):
    _write(tmp_path, "a/b/log.txt", b"one\n")
    _write(tmp_path, "a/b/log.txt", b"two\n")
    p = tmp_path / "a" / "b" / "log.txt"
    assert p.read_bytes() == b"one\ntwo\n"
    assert (p.stat().st_mode & 0o777) == 0o666 & ~current_umask()
    with pytest.raises(FileExistsError):
        _write(tmp_path, "a/b/log.txt", b"three\n", exclusive=True)
    assert p.read_bytes() == b"one\ntwo\n"


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../x"])
def test_a_path_leaving_the_root_is_refused(tmp_path, bad):
    with pytest.raises(PathEscapeError, match=r"^run file .* (is not a non-empty string|is absolute|contains '\.\.')"):
        open_append_inside(tmp_path / "run", bad)
    assert not (tmp_path / "run").exists() or list((tmp_path / "run").iterdir()) == []


def test_a_link_at_the_file_or_on_the_way_is_refused_and_its_target_untouched(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"keep")
    (run / "train.log").symlink_to(outside / "victim.txt")
    with pytest.raises(UnsafePathError, match=r"train\.log.*symlink"):
        open_append_inside(run, "train.log")
    (run / "tb").symlink_to(outside)
    with pytest.raises(UnsafePathError, match=r"run/tb\b.*symlink"):
        open_append_inside(run, "tb/events.out.tfevents.1")
    (run / "dangling").symlink_to(outside / "not_there.txt")  # O_CREAT would create the target
    with pytest.raises(UnsafePathError):
        open_append_inside(run, "dangling")
    assert (outside / "victim.txt").read_bytes() == b"keep"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]


def test_a_fifo_or_a_folder_at_the_name_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "pipe")  # no reader: a plain open for writing would wait forever
    with pytest.raises(UnsafePathError, match="not a plain file"):
        open_append_inside(tmp_path, "pipe")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UnsafePathError):
        open_append_inside(tmp_path, "folder")


def test_the_root_itself_may_be_a_link(tmp_path):
    (tmp_path / "disk").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "disk")
    _write(tmp_path / "run", "train.log", b"x\n")
    assert (tmp_path / "disk" / "train.log").read_bytes() == b"x\n"


def test_a_link_planted_after_the_open_is_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep")
    f = open_append_inside(tmp_path, "run/log.txt")
    f.write(b"first\n")
    f.flush()
    os.replace(tmp_path / "run" / "log.txt", tmp_path / "run" / "moved.txt")
    (tmp_path / "run" / "log.txt").symlink_to(victim)
    f.write(b"second\n")
    f.close()
    assert victim.read_bytes() == b"keep"
    assert (tmp_path / "run" / "moved.txt").read_bytes() == b"first\nsecond\n"


def _read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_reads_back_the_scalars_and_pictures(tmp_path):
    w = EventWriter(tmp_path, logging.getLogger("test"))
    for step in (1, 2, 3):
        w.add_scalar("main_training/train/total_loss", 1.0 / step, step)
    w.add_scalar("main_training/val/J&F", torch.tensor(0.25, dtype=torch.float64), 3)
    grid = torch.zeros(3, 8, 12)
    grid[0, :, :6] = 1.0  # left half red
    w.add_image("main_training/clip", grid, 3)
    w.close()
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1
    acc = _read_events(tmp_path / "tb")
    losses = acc.Scalars("main_training/train/total_loss")
    assert [e.step for e in losses] == [1, 2, 3]
    assert [e.value for e in losses] == pytest.approx([1.0, 0.5, 1 / 3])
    assert acc.Scalars("main_training/val/J&F")[0].value == pytest.approx(0.25)
    (img,) = acc.Images("main_training/clip")
    assert (img.step, img.width, img.height) == (3, 12, 8)
    pixels = np.asarray(Image.open(io.BytesIO(img.encoded_image_string)).convert("RGB"))  # H*W*3
    assert pixels[0, 0].tolist() == [255, 0, 0] and pixels[0, -1].tolist() == [0, 0, 0]


def test_a_second_writer_gets_its_own_file_and_a_planted_link_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    first = EventWriter(tmp_path, logging.getLogger("test"))
    second = EventWriter(tmp_path, logging.getLogger("test"))  # same second, same pid: the next name
    assert first.path != second.path
    second.close()
    first.add_scalar("a", 1.0, 1)
    moved = first.path.with_name(first.path.name + ".moved")
    os.replace(first.path, moved)
    first.path.symlink_to(victim)
    first.add_scalar("a", 2.0, 2)
    first.close()
    assert victim.read_bytes() == b"keep"
    first.path.unlink()
    acc = _read_events(tmp_path / "tb")
    assert [e.value for e in acc.Scalars("a")] == [1.0, 2.0]


def test_a_failing_event_write_warns_once_and_training_goes_on(tmp_path, repo_root):
    # A real write error: a file-size limit (EFBIG) reached by the event file, as a full disk would.
    code = textwrap.dedent(f"""
        import logging, resource, signal
        from pathlib import Path
        from cutie.training.tb_events import EventWriter
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        w = EventWriter(Path({str(tmp_path)!r}), logging.getLogger("run"))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.RLIM_INFINITY))
        for step in range(200):
            w.add_scalar("loss", float(step), step)
        w.close()
        print("still training")
    """)
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "still training" in proc.stdout
    assert proc.stderr.count("TensorBoard events stop here") == 1, proc.stderr[-2000:]
    (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    assert events.stat().st_size <= 2000
    steps = [e.step for e in _read_events(tmp_path / "tb").Scalars("loss")]
    assert steps and steps == list(range(len(steps)))  # whole records up to the failure, none torn


def test_train_log_refuses_a_link_and_a_new_run_closes_the_old_file(tmp_path):
    run, victim = tmp_path / "run", tmp_path / "victim.log"
    run.mkdir()
    victim.write_text("keep")
    (run / "train.log").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="train.log"):
        setup_logging(run, MAIN)
    (run / "train.log").unlink()
    log = setup_logging(run, MAIN)
    log.info("first run")
    (old,) = [h for h in log.handlers if isinstance(h, logging.FileHandler)]
    log = setup_logging(tmp_path / "run2", MAIN)
    log.info("second run")
    assert old.stream is None  # closed, not leaked
    assert "first run" in (run / "train.log").read_text() and "second run" not in (run / "train.log").read_text()
    assert "second run" in (tmp_path / "run2" / "train.log").read_text()
    assert victim.read_text() == "keep"
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()


def test_a_symlink_met_while_writing_is_a_path_error_of_the_entry_points(capsys):
    from cutie.eval import _INPUT_ERRORS as EVAL_ERRORS
    from cutie.train import _INPUT_ERRORS as TRAIN_ERRORS
    from cutie.utils.cli import EXIT_INPUT, run_reporting_errors

    def fail():
        raise UnsafePathError(1, "refusing to write through run/images/x.png: it is a symlink")

    for errors in (TRAIN_ERRORS, EVAL_ERRORS):
        with pytest.raises(SystemExit) as e:
            run_reporting_errors(fail, errors)
        assert e.value.code == EXIT_INPUT
        err = capsys.readouterr().err
        assert err.startswith("path error: refusing to write through run/images/x.png"), err
