"""Per-file checks (cutie/data/index/frame_check.py) on real generated files: each defect found, sound variants
accepted, the cache used (and proven used), re-checked on change, safe when malformed; the pool path; the
sample-path guard."""

from __future__ import annotations

import io
import json
import os
import signal
import zlib
from pathlib import Path

import numpy as np
import pytest
from _damage import DEFECTS
from PIL import Image

from cutie.data.index import frame_check
from cutie.data.index.datasets import build_video_index
from cutie.data.index.frame_check import cache_file, check_files
from cutie.data.index.stamped_cache import Keeper
from cutie.data.sampling.source import RecipeSource
from cutie.data.sampling.video import VideoClipSampler
from cutie.testing.synthetic import make_video_dataset
from cutie.training.signals import StoppedBeforeTraining, StopSignals
from cutie.utils.image_files import FileError, FileInfo, check_file


@pytest.fixture
def video(tmp_path: Path) -> Path:
    make_video_dataset(str(tmp_path / "v"), videos=2, frames=6, size=(48, 64), texture=True)
    return tmp_path / "v"


def _frame(root: Path, video: int, frame: int, ext: str) -> Path:
    folder = "JPEGImages" if ext == "jpg" else "Annotations"
    return root / folder / f"video{video:03d}" / f"{frame:05d}.{ext}"


def _flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _recrc_idat(data: bytes, new_payload: bytes) -> bytes:
    """The PNG with its (single) IDAT payload replaced and a correct CRC: only the inflater can notice."""
    pos = data.index(b"IDAT") - 4
    n = int.from_bytes(data[pos : pos + 4], "big")
    chunk = b"IDAT" + new_payload
    crc = zlib.crc32(chunk).to_bytes(4, "big")
    return data[:pos] + len(new_payload).to_bytes(4, "big") + chunk + crc + data[pos + 12 + n :]


def _pil_loads(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, ValueError, SyntaxError):
        return False


def test_sound_files_of_every_id_mode_pass(video: Path, tmp_path: Path) -> None:
    ids = np.array(Image.open(_frame(video, 0, 1, "png")))
    variants = {
        "p8.png": lambda p: Image.open(_frame(video, 0, 1, "png")).save(p),
        "p4.png": lambda p: Image.open(_frame(video, 0, 1, "png")).save(p, bits=4),
        "l.png": lambda p: Image.fromarray(ids, mode="L").save(p),
        "one.png": lambda p: Image.fromarray(ids > 0).save(p),
        "i16.png": lambda p: Image.fromarray(ids.astype(np.uint16)).save(p),
    }
    modes = {}
    for name, make in variants.items():
        make(tmp_path / name)
        info = check_file(str(tmp_path / name), "png")
        assert isinstance(info, FileInfo) and info.size == (64, 48) and not info.wide_ids, name
        modes[name] = info.mode
    assert modes == {"p8.png": "P", "p4.png": "P", "l.png": "L", "one.png": "1", "i16.png": "I;16"}
    assert all(Image.open(tmp_path / n).mode == m for n, m in modes.items())  # the modes PIL reports
    wide = ids.astype(np.uint16) * 300
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert check_file(str(tmp_path / "wide.png"), "png").wide_ids
    rgb = Image.open(_frame(video, 0, 1, "jpg"))
    rgb.convert("L").save(tmp_path / "grey.jpg")
    rgb.save(tmp_path / "progressive.jpg", progressive=True)
    assert check_file(str(_frame(video, 0, 1, "jpg")), "jpeg") == FileInfo(64, 48, "RGB")
    assert check_file(str(tmp_path / "grey.jpg"), "jpeg") == FileInfo(64, 48, "L")
    assert check_file(str(tmp_path / "progressive.jpg"), "jpeg") == FileInfo(64, 48, "RGB")


def test_each_damaged_file_is_found(video: Path, tmp_path: Path) -> None:
    png = _frame(video, 1, 3, "png").read_bytes()
    jpg = _frame(video, 1, 3, "jpg").read_bytes()
    idat = png.index(b"IDAT")
    payload = png[idat + 4 : idat + 4 + int.from_bytes(png[idat - 4 : idat], "big")]
    cases = {  # name: (bytes, check, problem kind, words of the detail)
        "no_iend.png": (png[: len(png) - 12], "png", "corrupt_png", "before its IEND chunk: cut short"),
        "half.png": (png[: len(png) // 2], "png", "corrupt_png", "cut short"),
        "crc.png": (_flip_byte(png, idat + 6), "png", "corrupt_png", "CRC error in its IDAT chunk"),
        "inflate.png": (_recrc_idat(png, payload[:-6]), "png", "corrupt_png", "image data"),
        "text.png": (b"hello", "png", "corrupt_png", "not a PNG"),
        "zero.png": (b"", "png", "empty_file", "0 bytes"),
        "half.jpg": (jpg[: len(jpg) // 2], "jpeg", "truncated_jpeg", "no end-of-image marker"),
        "header.jpg": (jpg[:200], "jpeg", "truncated_jpeg", "ends inside its header"),
        "text.jpg": (b"hello", "jpeg", "corrupt_jpeg", "not a JPEG"),
        "zero.jpg": (b"", "jpeg", "empty_file", "0 bytes"),
        "markers.jpg": (jpg[:2] + b"\x00" * 64 + b"\xff\xd9", "jpeg", "corrupt_jpeg", "no segment marker"),
    }
    for name, (data, kind, problem, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        result = check_file(str(tmp_path / name), kind)
        assert isinstance(result, FileError) and result.kind == problem and words in result.detail, (name, result)
    # A file cut right after its pixel data still loads in PIL (it stops reading there), but it is damaged: the
    # check is stricter on purpose. Where the pixel data itself is incomplete, PIL fails too.
    assert _pil_loads(tmp_path / "no_iend.png")
    assert not any(_pil_loads(tmp_path / n) for n in ("half.png", "inflate.png", "text.png", "zero.png"))
    result = check_file(str(tmp_path / "absent.png"), "png")
    assert isinstance(result, FileError) and result.kind == "unreadable"


def _tasks(root: Path) -> list[tuple[str, str]]:
    jpgs = [(str(p), "jpeg") for p in sorted(root.glob("JPEGImages/*/*.jpg"))]
    return jpgs + [(str(p), "png") for p in sorted(root.glob("Annotations/*/*.png"))]


def test_the_cache_is_used_and_a_changed_file_is_checked_again(video: Path, tmp_path: Path) -> None:
    tasks, cache = _tasks(video), tmp_path / "cache"
    first, stats = check_files(tasks, cache, "k")
    assert stats.read == len(tasks) == 24 and all(isinstance(r, FileInfo) for r in first.values())
    # Proof that a cached check opens no file: replace a later frame with garbage of the same size, same mtime.
    victim = _frame(video, 1, 4, "jpg")
    st = victim.stat()
    victim.write_bytes(b"\x00" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    again, stats = check_files(tasks, cache, "k")
    assert stats.read == 0 and again == first  # the garbage went unread: the cache answered
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a new mtime: checked again
    changed, stats = check_files(tasks, cache, "k")
    assert stats.read == 1 and changed[str(victim)] == FileError(
        "corrupt_jpeg", "not a JPEG (no start-of-image marker)"
    )
    # A bad file is never cached; a size change alone also forces a re-check.
    _, stats = check_files(tasks, cache, "k")
    assert stats.read == 1
    mask = _frame(video, 0, 2, "png")
    st = mask.stat()
    mask.write_bytes(mask.read_bytes() + b"\x00")
    os.utime(mask, ns=(st.st_atime_ns, st.st_mtime_ns))
    results, stats = check_files(tasks, cache, "k")
    assert stats.read == 2 and isinstance(results[str(mask)], FileInfo)  # trailing bytes after IEND are harmless


@pytest.mark.parametrize(
    "content",
    [b"\x80\x04\x95pickle", b"{not json", b"[]", b'{"version": 1, "key": "other", "files": {}}', b"\xff\xfe"],
)
def test_a_malformed_cache_is_ignored_with_a_note(video: Path, tmp_path: Path, content: bytes) -> None:
    tasks = _tasks(video)
    path = cache_file(tmp_path, "k")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    results, stats = check_files(tasks, tmp_path, "k")
    assert stats.read == len(tasks) and all(isinstance(r, FileInfo) for r in results.values())
    assert len(stats.notes) == 1 and str(path) in stats.notes[0] and "ignored" in stats.notes[0]
    assert json.loads(path.read_text())["version"] == frame_check.CACHE_VERSION  # rewritten, valid
    assert check_files(tasks, tmp_path, "k")[1].read == 0


def test_malformed_cache_entries_are_checked_again(video: Path, tmp_path: Path) -> None:
    tasks = _tasks(video)
    check_files(tasks, tmp_path, "k")
    path = cache_file(tmp_path, "k")
    doc = json.loads(path.read_text())
    names = sorted(doc["files"])
    doc["files"][names[0]] = "a string"
    doc["files"][names[1]][2] = -5  # a negative width
    doc["files"][names[2]][4] = ["P"]
    doc["files"][names[3]][6] = [0, 300]  # object ids: background and an id above 255
    doc["files"][names[4]] = doc["files"][names[4]][:6]  # a version-1 entry (no ids field)
    doc["files"][names[5]][2:4] = [60000, 60000]  # a size no file check lets through
    path.write_text(json.dumps(doc))
    results, stats = check_files(tasks, tmp_path, "k")
    assert stats.read == 6 and "6 malformed entries ignored" in stats.notes[0]
    assert results[names[1]] == FileInfo(64, 48, "RGB" if names[1].endswith(".jpg") else "P")


def test_the_process_pool_gives_the_inline_results(video: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    DEFECTS["truncated_jpeg"][1](_frame(video, 0, 5, "jpg"))
    tasks = _tasks(video)
    inline, _ = check_files(tasks, None, "k")
    monkeypatch.setattr(frame_check, "INLINE_BELOW", 4)  # 24 files -> a pool of min(CPUs, 6) workers
    monkeypatch.setattr(frame_check, "PROGRESS_FROM", 1)
    monkeypatch.setattr(frame_check, "PROGRESS_EVERY_S", 0.0)
    assert frame_check._workers(len(tasks)) == min(len(os.sched_getaffinity(0)), 6)
    pooled, stats = check_files(tasks, None, "k", desc="check V")
    assert pooled == inline and stats.read == len(tasks)
    assert inline[str(_frame(video, 0, 5, "jpg"))].kind == "truncated_jpeg"
    assert "check V: 24/24 files (100%)" in capsys.readouterr().err  # progress lines with an ETA on non-terminals


def test_a_mask_of_another_size_than_its_frame_is_a_bad_sample(video: Path) -> None:
    """A file changed after the start-up check must be skipped and counted, never warped into misaligned labels."""
    cfg = {
        "vos_datasets": {
            "V": {"image_directory": "JPEGImages", "mask_directory": "Annotations", "multiplier": 1, "subset": None}
        },
        "main_training": {"datasets": ["V"]},
    }
    index = build_video_index(cfg, str(video), seq_length=3)
    for f in range(6):
        DEFECTS["wrong_size_mask"][1](_frame(video, 0, f, "png"))
    sampler = VideoClipSampler(index, seq_length=3, num_objects=2, crop_size=(32, 32), merge_probability=0.0)
    source = RecipeSource(
        sampler, seed=0, stream=1, global_batch=1, total_iterations=10, max_skip_schedule=[3], max_skip_fractions=[0]
    )
    try:
        recipes = [source(i) for i in range(12)]
    finally:
        source.close()
    bad = [p for r in recipes for p in r.info["bad_paths"]]
    assert bad and all("video000" in p and p.endswith(".png") for p in bad)
    assert all(r.info["layers"][0]["video"] == "video001" for r in recipes)


def test_pil_and_the_inflater_agree_on_the_tiny_dataset(tiny_data: Path) -> None:
    pngs = sorted(tiny_data.rglob("*.png"))[:200]
    for p in pngs:
        info = check_file(str(p), "png")
        with Image.open(p) as im:
            im.load()
            assert isinstance(info, FileInfo) and info.size == im.size and info.mode == im.mode, p
    for p in sorted(tiny_data.rglob("*.jpg"))[:200]:
        with Image.open(io.BytesIO(p.read_bytes())) as im:
            assert check_file(str(p), "jpeg").size == im.size, p


def test_a_jpeg_header_declaring_too_many_pixels_is_corrupt(video: Path, tmp_path: Path) -> None:
    """A JPEG whose frame header says 20000x20000 (400M pixels: PIL refuses to open it as a decompression bomb,
    so validation or eval would stop on it) is refused by the data check, as a PNG header of that size is."""
    import struct

    data = bytearray(_frame(video, 0, 1, "jpg").read_bytes())
    sof = min(i for i in (data.find(b"\xff\xc0"), data.find(b"\xff\xc2")) if i > 0)
    struct.pack_into(">HH", data, sof + 5, 20000, 20000)
    (tmp_path / "bomb.jpg").write_bytes(bytes(data))
    result = check_file(str(tmp_path / "bomb.jpg"), "jpeg")
    assert isinstance(result, FileError) and result.kind == "corrupt_jpeg" and "20000x20000" in result.detail
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "bomb.jpg")
    struct.pack_into(">HH", data, sof + 5, 8192, 8192)  # 67M pixels: large but plausible, and PIL opens it
    (tmp_path / "large.jpg").write_bytes(bytes(data))
    assert check_file(str(tmp_path / "large.jpg"), "jpeg") == FileInfo(8192, 8192, "RGB")


def test_a_file_swapped_for_a_decompression_bomb_after_the_check_is_a_bad_sample(tmp_path: Path) -> None:
    """The sample path's readers turn PIL's DecompressionBombError (a file replaced after the start-up check)
    into a BadSampleError naming it, which the loader skips and counts, instead of an error that ends the run."""
    import struct

    from cutie.data.sampling.masks import BadSampleError, decode_jpeg_size, read_binary, read_ids

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 3, 0, 0, 0)
    bomb = tmp_path / "bomb.png"
    body = chunk(b"IHDR", header) + chunk(b"PLTE", b"\0" * 6) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    for read in (read_ids, read_binary, lambda p: decode_jpeg_size(Path(p).read_bytes(), p)):
        with pytest.raises(BadSampleError, match="decompression bomb") as info:
            read(str(bomb))
        assert str(bomb) in str(info.value)


def test_a_check_stopped_by_a_signal_keeps_what_it_checked(video: Path, tmp_path: Path, monkeypatch) -> None:
    """A stop signal during the start-up check (SLURM's time limit, Ctrl-C) ends it at once, and the files checked
    so far are in the cache: the relaunch reads only the rest."""
    tasks, real, calls = _tasks(video), frame_check._check_task, []

    def stop_at_the_tenth(task):
        calls.append(task)
        if len(calls) == 10:
            os.kill(os.getpid(), signal.SIGTERM)  # the real signal, to the trainer's real handler
        return real(task)

    monkeypatch.setattr(frame_check, "_check_task", stop_at_the_tenth)
    with pytest.raises(StoppedBeforeTraining, match="SIGTERM before the first step"), StopSignals(armed=False):
        check_files(tasks, tmp_path, "k")
    assert len(calls) == 10
    kept = json.loads(cache_file(tmp_path, "k").read_text())["files"]
    assert sorted(kept) == sorted(p for p, _ in tasks[:9])  # the tenth never finished
    monkeypatch.setattr(frame_check, "_check_task", real)
    results, stats = check_files(tasks, tmp_path, "k")
    assert stats.read == len(tasks) - 9 and all(isinstance(r, FileInfo) for r in results.values())


def test_a_long_check_saves_its_cache_as_it_goes(video: Path, tmp_path: Path, monkeypatch) -> None:
    """A killed check (SIGKILL, a lost node) runs no finally block: what it saved while running is what survives."""
    monkeypatch.setattr(Keeper, "SAVE_EVERY_S", 0.0)  # due after every file
    monkeypatch.setattr(Keeper, "MAX_SAVE_SHARE", float("inf"))
    tasks, real, on_disk = _tasks(video), frame_check._check_task, []

    def look_at_the_cache(task):
        if task == tasks[12]:
            on_disk.extend(json.loads(cache_file(tmp_path, "k").read_text())["files"])
        return real(task)

    monkeypatch.setattr(frame_check, "_check_task", look_at_the_cache)
    check_files(tasks, tmp_path, "k")
    assert sorted(on_disk) == sorted(p for p, _ in tasks[:12])
