"""The per-file cache of the data checks (cutie/data/index/stamped_cache.py): a round trip in its on-disk format, a
malformed cache ignored with a note, untrusted entries rejected one by one, a changed size or mtime re-checked,
a failed save only a note."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cutie.data.index.stamped_cache import StampedCache, cache_path, is_count, split


def _parse(payload: list) -> tuple[str, int] | None:
    """A toy value: [name, count]."""
    if len(payload) != 2 or not isinstance(payload[0], str) or not is_count(payload[1]):
        return None
    return payload[0], payload[1]


def _cache(root: Path, key: str = "k", version: int = 3) -> StampedCache[tuple[str, int]]:
    return StampedCache(cache_path(root, "toy-", key), key, version, _parse, list)


def _files(folder: Path, n: int) -> list[str]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"f{i}.bin"
        p.write_bytes(b"x" * (i + 1))
        paths.append(str(p))
    return paths


def test_the_path_is_under_data_check_and_depends_on_prefix_and_key(tmp_path: Path) -> None:
    p = cache_path(tmp_path, "toy-", "a")
    assert p.parent == tmp_path / "data_check" and p.name.startswith("toy-") and p.suffix == ".json"
    assert len(p.stem) == len("toy-") + 16
    assert p != cache_path(tmp_path, "toy-", "b") and p.name[4:] == cache_path(tmp_path, "", "a").name


def test_a_round_trip_keeps_entries_in_the_documented_format(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    entries = {"/b": ((5, 10**18), ("y", 2)), "/a": ((0, 1), ("x", 0))}
    assert cache.save(entries) is None
    doc = json.loads(cache.path.read_text())
    assert doc == {"version": 3, "key": "k", "files": {"/a": [0, 1, "x", 0], "/b": [5, 10**18, "y", 2]}}
    assert list(doc["files"]) == ["/a", "/b"]  # sorted: an unchanged cache writes the same bytes
    assert cache.load() == (entries, None)
    assert _cache(tmp_path).load()[0] == entries  # a fresh object reads what the first wrote


def test_no_cache_file_is_an_empty_cache_without_a_note(tmp_path: Path) -> None:
    assert _cache(tmp_path).load() == ({}, None)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x80\x04\x95pickle", "is unreadable"),
        (b"{not json", "is not valid JSON"),
        (b"[" * 100_000, "is not valid JSON"),  # nested past the recursion limit
        (b"[]", "is of another version or dataset"),
        (b'{"version": 2, "key": "k", "files": {}}', "is of another version or dataset"),
        (b'{"version": 3, "key": "other", "files": {}}', "is of another version or dataset"),
        (b'{"version": 3, "key": "k", "files": []}', "has no file table"),
        (b'{"version": 3, "key": "k", "files": {"a": 1, "a": 2}}', "is not valid JSON"),  # not a file we wrote
    ],
)
def test_a_malformed_cache_is_ignored_with_a_note(tmp_path: Path, content: bytes, why: str) -> None:
    cache = _cache(tmp_path)
    cache.path.parent.mkdir(parents=True)
    cache.path.write_bytes(content)
    entries, note = cache.load()
    assert entries == {}
    assert note is not None and note.startswith(f"cache file {cache.path} {why}")
    assert note.endswith("; ignored, every file is checked again")


def test_untrusted_entries_are_rejected_one_by_one(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    good = [4, 7, "n", 1]
    files = {
        "/good": good,
        "/string": "a string",
        "/short": [4],
        "/negative size": [-1, 7, "n", 1],
        "/bool mtime": [4, True, "n", 1],
        "/float size": [4.0, 7, "n", 1],
        "/payload refused": [4, 7, "n", -1],
        "/payload too long": [*good, 0],
    }
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text(json.dumps({"version": 3, "key": "k", "files": files}))
    entries, note = cache.load()
    assert entries == {"/good": ((4, 7), ("n", 1))}
    assert note == f"cache file {cache.path}: 7 malformed entries ignored (those files are checked again)"


def test_split_answers_unchanged_files_and_redoes_changed_ones(tmp_path: Path) -> None:
    paths = _files(tmp_path / "d", 4)
    missing = str(tmp_path / "d" / "gone.bin")
    tasks = [(p, "extra") for p in [*paths, missing]]
    first = split(tasks, {})
    assert first.todo == tasks[:4] and not first.hits and list(first.unreadable) == [missing]
    assert isinstance(first.unreadable[missing], FileNotFoundError)
    cached = {p: first.entry(p, ("v", i)) for i, p in enumerate(paths)}
    assert cached[paths[2]][0] == (3, os.stat(paths[2]).st_mtime_ns)

    again = split(tasks[:4], cached)
    assert again.todo == [] and again.hits == cached

    st = os.stat(paths[1])
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same size, new mtime
    st = os.stat(paths[3])
    Path(paths[3]).write_bytes(b"y" * (st.st_size + 1))
    os.utime(paths[3], ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, new size
    changed = split(tasks[:4], cached)
    assert changed.todo == [tasks[1], tasks[3]] and set(changed.hits) == {paths[0], paths[2]}
    assert changed.stamps[paths[3]] == (st.st_size + 1, st.st_mtime_ns)

    refused = split(tasks[:4], cached, answers=lambda task, value: value[1] != 0)
    assert refused.todo == [tasks[0], tasks[1], tasks[3]]  # the caller's own rule also sends a file back


def test_a_failed_save_is_a_note_and_leaves_no_cache(tmp_path: Path) -> None:
    (tmp_path / "data_check").write_text("a file where the folder should be")
    cache = _cache(tmp_path)
    note = cache.save({"/a": ((1, 2), ("x", 0))})
    assert note is not None and note.startswith(f"could not write the check cache {cache.path} (")
    assert note.endswith("); the next check reads every file")


def test_a_save_never_writes_through_a_symlink_but_cache_root_may_be_one(tmp_path: Path) -> None:
    """A link at cache_root/data_check/ or at the cache file is a note and nothing is written behind it; a
    cache_root that is itself a link (as users link a big disk) is written into."""
    victim = tmp_path / "victim"
    victim.mkdir()
    entries = {"/x": ((1, 2), ("a", 3))}
    root = tmp_path / "cache"
    root.mkdir()
    (root / "data_check").symlink_to(victim, target_is_directory=True)
    note = _cache(root).save(entries)
    assert note is not None and "symlink" in note and str(root / "data_check") in note
    assert list(victim.iterdir()) == []
    (root / "data_check").unlink()
    (root / "data_check").mkdir()
    _cache(root).path.symlink_to(victim / "target.json")
    note = _cache(root).save(entries)
    assert note is not None and "symlink" in note and list(victim.iterdir()) == []
    (tmp_path / "linked").symlink_to(victim, target_is_directory=True)
    assert _cache(tmp_path / "linked").save(entries) is None
    assert _cache(tmp_path / "linked").load() == (entries, None)
    assert [p.name for p in (victim / "data_check").iterdir()] == [_cache(root).path.name]


def test_what_is_not_a_regular_file_is_unreadable_without_being_opened(tmp_path: Path) -> None:
    """A FIFO named like a frame would block the check that opens it forever, a folder fails to open: split
    marks both unreadable (never to do), next to a regular file that is to do."""
    (files := tmp_path / "v").mkdir()
    (files / "ok.jpg").write_bytes(b"x")
    os.mkfifo(files / "fifo.jpg")
    (files / "dir.jpg").mkdir()
    plan = split([(str(files / n), "jpeg") for n in ("ok.jpg", "fifo.jpg", "dir.jpg")], {})
    assert plan.todo == [(str(files / "ok.jpg"), "jpeg")]
    assert "not a regular file" in str(plan.unreadable[str(files / "fifo.jpg")])
    assert isinstance(plan.unreadable[str(files / "dir.jpg")], IsADirectoryError)
