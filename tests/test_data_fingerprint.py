"""Data fingerprints (kept in checkpoints): the same data under another data_root is the same; a video, a frame,
an image pair, an empty-mask list or an SA-1B filter that changes is named with the counts before and after."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cutie.data.index.datasets import build_static_index, build_video_index
from cutie.data.index.fingerprint import data_changes, index_fingerprint
from cutie.testing.synthetic import make_static_dataset, make_video_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2


def _video_cfg(empty_masks: str | None = None) -> dict:
    entry = {"image_directory": "vid/JPEGImages", "mask_directory": "vid/Annotations", "multiplier": 2,
             "frame_interval": 1, "subset": None, "empty_masks": empty_masks}  # fmt: skip
    return {"vos_datasets": {"V": entry}, "image_datasets": {}, "main_training": {"datasets": ["V"]},
            "pre_training": {"datasets": []}}  # fmt: skip


def _video_print(root: Path, **kw) -> list[dict]:
    return index_fingerprint(build_video_index(_video_cfg(**kw), str(root), seq_length=3))


def test_video_data_moved_is_the_same_and_every_change_is_named(tmp_path: Path) -> None:
    a = tmp_path / "a"
    make_video_dataset(str(a / "vid"), videos=3, frames=5)
    before = _video_print(a)
    assert [(e["name"], e["videos"], e["frames"]) for e in before] == [("V", 3, 15)]
    shutil.copytree(a, tmp_path / "b")
    assert _video_print(tmp_path / "b") == before and data_changes(before, before) == []  # another data_root
    shutil.rmtree(a / "vid/JPEGImages/video002")
    shutil.rmtree(a / "vid/Annotations/video002")
    assert data_changes(before, _video_print(a)) == ["V: 3 videos, 15 frames -> 2 videos, 10 frames"]
    b = tmp_path / "b" / "vid"
    for sub, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):  # a frame renamed: the same counts
        (b / sub / "video001" / f"00004.{ext}").rename(b / sub / "video001" / f"00009.{ext}")
    renamed = _video_print(tmp_path / "b")
    assert data_changes(before, renamed) == ["V: the same 3 videos, 15 frames, other contents (frame names, "
                                             "empty-mask lists or labels)"]  # fmt: skip
    listed = tmp_path / "empty.txt"
    listed.write_text("video000/00001.png\n")
    assert len(data_changes(renamed, _video_print(tmp_path / "b", empty_masks=str(listed)))) == 1


def test_static_and_sa1b_data(tmp_path: Path, tiny_data: Path) -> None:
    make_static_dataset(str(tmp_path / "a" / "S"), images=4)
    cfg = {"vos_datasets": {}, "image_datasets": {"S": {"directory": "S", "data_structure": 1, "multiplier": 1}},
           "main_training": {"datasets": []}, "pre_training": {"datasets": ["S"]}}  # fmt: skip
    before = index_fingerprint(build_static_index(cfg, str(tmp_path / "a")))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert index_fingerprint(build_static_index(cfg, str(tmp_path / "b"))) == before
    first = sorted((tmp_path / "a" / "S").glob("*.jpg"))[0]
    first.unlink()
    first.with_suffix(".png").unlink()
    assert data_changes(before, index_fingerprint(build_static_index(cfg, str(tmp_path / "a")))) == [
        "S: 4 images -> 3 images"
    ]

    # SA-1B: a stricter mask filter keeps fewer samples of the same images.
    def sa1b(**masks: float) -> list[dict]:
        entry = {"directory": "SA-1B", "data_structure": "sa1b", "multiplier": 1, "sa1b": masks}
        c = {"vos_datasets": {}, "image_datasets": {"SA1B": entry}, "main_training": {"datasets": []},
             "pre_training": {"datasets": ["SA1B"]}}  # fmt: skip
        return index_fingerprint(build_static_index(c, str(tiny_data), cache_root=str(tmp_path / "cache")))

    loose, strict = sa1b(min_area_fraction=0.0), sa1b(min_area_fraction=0.05)
    assert loose[0]["images"] == strict[0]["images"] and loose[0]["samples"] > strict[0]["samples"]
    (line,) = data_changes(loose, strict)
    assert line.startswith(f"SA1B: {loose[0]['images']} images, {loose[0]['samples']} samples -> ")


def test_datasets_added_or_dropped_and_foreign_entries() -> None:
    a = {"name": "A", "videos": 2, "frames": 9, "sha256": "0" * 64}
    b = {"name": "B", "videos": 1, "frames": 4, "sha256": "1" * 64}
    assert data_changes([a], [a, b]) == ["B: not in the checkpoint's data (now 1 videos, 4 frames)"]
    assert data_changes([a, b], [b]) == ["A: no longer in the data (was 2 videos, 9 frames)"]
    assert data_changes([a, "junk", {"name": 3}], [a]) == []  # not fingerprints: ignored
