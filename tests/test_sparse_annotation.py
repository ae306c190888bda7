"""Sparsely annotated video folders: the annotation step, max_skip per video, partial labels (detection and the
clip rule), wrong-size masks left out, the reasons a dataset gives no clip, the file check's id cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cutie.data.index import frame_check
from cutie.data.index.annotation import annotation_step, partial_objects, tracked_somewhere
from cutie.data.index.datasets import DataValidationError, build_video_index, summarize
from cutie.data.sampling.video import VideoClipSampler, relabelled
from cutie.testing.synthetic import make_video_dataset
from cutie.utils.palette import davis_palette


def _cfg(**entry) -> dict:
    vos = {
        "image_directory": "vid/JPEGImages",
        "mask_directory": "vid/Annotations",
        "multiplier": 1,
        "frame_interval": 1,
        "subset": None,
        "empty_masks": None,
        **entry,
    }
    return {"vos_datasets": {"S": vos}, "image_datasets": {}, "main_training": {"datasets": ["S"]}}


def _keep_masks(root: Path, video: str, frames: list[int]) -> None:
    """Delete every mask of the video except those of these frames (the JPEGs stay)."""
    for png in (root / "vid/Annotations" / video).glob("*.png"):
        if int(png.stem) not in frames:
            png.unlink()


def _save_ids(path: Path, ids: np.ndarray) -> None:
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette(davis_palette())
    im.save(path)


def _relabel_video(root: Path, video: str, keep_by_frame: dict[int, set[int]]) -> None:
    """Keep only these object ids in these frames' masks (the other ids become background)."""
    for t, keep in keep_by_frame.items():
        path = root / "vid/Annotations" / video / f"{t:05d}.png"
        ids = np.array(Image.open(path))
        _save_ids(path, np.where(np.isin(ids, sorted(keep)), ids, 0))


@pytest.mark.parametrize(
    ("positions", "step"),
    [([0, 1, 2, 3], 1), ([0, 3, 6, 9, 12], 3), ([0, 5, 8, 13], 5), ([0, 3, 8, 13], 5), ([0, 2, 8], 2), ([4], 1)],
)
def test_annotation_step_is_the_lower_median_gap(positions: list[int], step: int) -> None:
    assert annotation_step(positions) == step


def test_partial_labels_and_tracked_objects() -> None:
    judo = [(1,), (2,), (3,), (4,)]  # each annotated frame labels only the object it introduces
    assert partial_objects(judo) == (1, 2, 3) and not tracked_somewhere(judo)
    full = [(1,), (1, 2), (1, 2, 3)]  # objects entering late, labelled from then on: not partial
    assert partial_objects(full) == () and tracked_somewhere(full)
    assert partial_objects([(1, 2), (2,)]) == (1,) and tracked_somewhere([(1, 2), (2,)])
    assert partial_objects([(1,)]) == ()
    ids = [(1, 2), (2,), (3,), (1, 3)]
    assert relabelled(ids, [0, 1, 2]) == (2,) and relabelled(ids, [2, 3]) == (3,) and relabelled(ids, [1, 2]) == ()


def test_sparse_videos_train_on_their_annotated_frames_with_the_inferred_step(tmp_path: Path) -> None:
    make_video_dataset(str(tmp_path / "vid"), videos=3, frames=15)
    _keep_masks(tmp_path, "video000", list(range(0, 15, 3)))  # every 3rd
    _keep_masks(tmp_path, "video001", [0, 5, 8, 13])  # the judo spacing
    index = build_video_index(_cfg(frame_interval=2), str(tmp_path), seq_length=3)
    vset = index.sets[0]
    assert vset.jpgs[0] == [f"{t:05d}.jpg" for t in range(0, 15, 3)] and vset.pngs[1][1] == "00005.png"
    assert vset.steps == [3, 5, 1] and len(vset.jpgs[2]) == 15
    assert len(index) == 5 + 4 + 15  # seeds: annotated frames only
    (rep,) = summarize(_cfg(frame_interval=2), str(tmp_path), seq_length=3, stages=["main_training"])
    assert rep.ok and rep.dense == 1 and rep.sparse_steps == {3: 1, 5: 1} and rep.frames == 45 and rep.masks == 24
    # max_skip 12 (original frames) over frame_interval 2: annotated-frame skip 12 // (2 * 3) = 2 in video000,
    # 12 // 2 = 6 in the dense video002.
    sampler = VideoClipSampler(index, 3, 2, (32, 32), 0.0)
    gaps = {0: set(), 2: set()}
    for i in range(300):
        rng = np.random.default_rng(i)
        seed = int(rng.choice(np.flatnonzero(index.seed_video != 1)))
        layer = sampler.sample(rng, seed, 12).info["layers"][0]
        video = vset.videos.index(layer["video"])
        pos = sorted(vset.jpgs[video].index(f) for f in layer["frames"])
        gaps[video] |= set(np.diff(pos).tolist())
    assert max(gaps[0]) == 2 and max(gaps[2]) == 6


def test_a_png_without_its_jpeg_is_still_a_problem(tmp_path: Path) -> None:
    make_video_dataset(str(tmp_path / "vid"), videos=2, frames=6)
    os.remove(tmp_path / "vid/JPEGImages/video001/00003.jpg")
    with pytest.raises(DataValidationError, match=r"1 videos with masks \(PNGs\) that have no frame .*00003.png"):
        build_video_index(_cfg(), str(tmp_path), seq_length=3)


def test_no_clip_is_reported_with_the_reason_and_numbers(tmp_path: Path) -> None:
    make_video_dataset(str(tmp_path / "vid"), videos=2, frames=16)
    _keep_masks(tmp_path, "video000", [0, 5, 8, 13])
    _keep_masks(tmp_path, "video001", [0, 4, 8])
    with pytest.raises(DataValidationError) as e:
        build_video_index(_cfg(), str(tmp_path), seq_length=8)
    msg = str(e.value)
    assert "[S] no usable video" in msg and "2 videos; 2 have fewer annotated frames than seq_length=8" in msg
    assert "annotated frames per video: 3-4; video001 3, video000 4" in msg and "lower main_training.seq_length" in msg


def _partial_folder(root: Path) -> None:
    """video000: object 1 labelled in frame 0 only (partial), object 2 on every annotated frame; video001 like
    the judo example (each annotated frame labels one object only)."""
    make_video_dataset(str(root / "vid"), videos=2, frames=12, object_ids=(1, 2))
    _keep_masks(root, "video000", list(range(0, 12, 2)))
    _relabel_video(root, "video000", {t: {2} for t in range(2, 12, 2)})
    _keep_masks(root, "video001", [0, 5, 8])
    _relabel_video(root, "video001", {0: {1}, 5: {2}, 8: set()})


def test_partial_labels_are_reported_and_a_video_without_a_tracked_object_is_excluded(tmp_path: Path) -> None:
    _partial_folder(tmp_path)
    (rep,) = summarize(_cfg(partial_labels=True), str(tmp_path), seq_length=3, stages=["main_training"])
    assert rep.ok and rep.partial == {"video000": (1,), "video001": (1, 2)} and rep.excluded_untracked == 1
    assert rep.videos == 1
    index = build_video_index(_cfg(partial_labels=True), str(tmp_path), seq_length=3)
    assert index.sets[0].videos == ["video000"] and index.sets[0].ids[0] == [(1, 2)] + [(2,)] * 5
    assert build_video_index(_cfg(), str(tmp_path), seq_length=3).sets[0].ids is None  # off by default
    _relabel_video(tmp_path, "video000", {t: set() for t in range(2, 12, 2)})  # no object labelled twice anywhere
    no_clip = r"2 have no object labelled in two annotated frames \(partial labels in: video000, video001\)"
    with pytest.raises(DataValidationError, match=no_clip):
        build_video_index(_cfg(partial_labels=True), str(tmp_path), seq_length=3)


def test_partial_labels_clips_target_only_objects_labelled_again(tmp_path: Path) -> None:
    _partial_folder(tmp_path)
    targets = {}
    for flag in (False, True):
        index = build_video_index(_cfg(partial_labels=flag), str(tmp_path), seq_length=3)
        sampler = VideoClipSampler(index, 3, 2, (32, 32), 0.0)
        seen = set()
        for i in range(60):
            rng = np.random.default_rng(i)
            recipe = sampler.sample(rng, int(rng.integers(len(index))), 4)
            layer = recipe.info["layers"][0]
            ids = [set(np.unique(np.array(Image.open(_png(tmp_path, layer, f))))) - {0} for f in layer["frames"]]
            for _, obj in recipe.info["objects"]:
                seen.add((layer["video"], obj))
                if flag:  # every target is labelled again after the clip's first frame
                    assert any(obj in later for later in ids[1:]), (layer, obj)
        targets[flag] = seen
    assert ("video000", 1) in targets[False] and ("video001", 1) in targets[False]  # the official rule
    assert targets[True] == {("video000", 2)}


def _png(root: Path, layer: dict, jpg: str) -> Path:
    return root / "vid/Annotations" / layer["video"] / (Path(jpg).stem + ".png")


def test_wrong_size_masks_skip_or_fail(tmp_path: Path, caplog) -> None:
    make_video_dataset(str(tmp_path / "vid"), videos=1, frames=8, size=(48, 64))
    narrow = tmp_path / "vid/Annotations/video000/00004.png"
    _save_ids(narrow, np.array(Image.open(narrow))[:, :-1])
    with pytest.raises(DataValidationError, match=r"1 frames whose image and mask sizes differ.*00004.png"):
        build_video_index(_cfg(), str(tmp_path), seq_length=3)
    with caplog.at_level(logging.WARNING):
        index = build_video_index(_cfg(wrong_size_masks="skip"), str(tmp_path), seq_length=3)
    assert f"S: 1 wrong-size masks left out (their frames count as unannotated), e.g. {narrow}" in caplog.text
    assert "00004.jpg" not in index.sets[0].jpgs[0] and len(index.sets[0].jpgs[0]) == 7
    assert index.sets[0].steps == [1]  # one gap of 2 among gaps of 1
    (rep,) = summarize(_cfg(wrong_size_masks="skip"), str(tmp_path), seq_length=3, stages=["main_training"])
    assert rep.ok and [(p.kind, p.path) for p in rep.skipped] == [("size_mismatch", str(narrow))]
    assert "mask 63x48, its frame 00004.jpg is 64x48" in rep.skipped[0].detail
    assert rep.sparse_steps == {1: 1} and rep.dense == 0
    # A skipped mask can leave a video short: then it is excluded like any short video.
    with pytest.raises(DataValidationError, match="1 have fewer annotated frames than seq_length=8"):
        build_video_index(_cfg(wrong_size_masks="skip"), str(tmp_path), seq_length=8)


def test_the_check_cache_keeps_object_ids(tmp_path: Path) -> None:
    make_video_dataset(str(tmp_path / "vid"), videos=1, frames=3, object_ids=(1, 3))
    pngs = sorted(str(p) for p in (tmp_path / "vid/Annotations/video000").glob("*.png"))
    cache = str(tmp_path / "cache")
    results, stats = frame_check.check_files([(p, "png") for p in pngs], cache, "k")
    assert stats.read == 3 and all(r.ids is None for r in results.values())
    results, stats = frame_check.check_files([(p, "png_ids") for p in pngs], cache, "k")  # no ids cached: re-read
    assert stats.read == 3 and [results[p].ids for p in pngs] == [(1, 3)] * 3
    again, stats = frame_check.check_files([(p, "png_ids") for p in pngs], cache, "k")
    assert stats.read == 0 and again == results
    _, stats = frame_check.check_files([(p, "png") for p in pngs], cache, "k")
    assert stats.read == 0  # an entry with ids answers a plain check too


def test_frames_numbered_without_zero_padding_are_a_problem(tmp_path: Path) -> None:
    """1.jpg ... 10.jpg (ffmpeg's %d.jpg) sort 1, 10, 2, ...: the video's clips would be shuffled in time."""
    make_video_dataset(str(tmp_path / "vid"), videos=2, frames=12)
    for kind, suffix in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
        for path in (tmp_path / "vid" / kind / "video001").glob(f"*{suffix}"):
            path.rename(path.with_name(f"frame{int(path.stem)}{suffix}"))
    with pytest.raises(DataValidationError) as e:
        build_video_index(_cfg(), str(tmp_path), seq_length=3)
    msg = str(e.value)
    assert "1 videos whose frame numbers are not zero-padded" in msg and "frame11.jpg sorts before frame2.jpg" in msg
    assert "video001/frame2.jpg" in msg and "zero-padded to one width" in msg


def test_a_frame_that_is_not_a_jpeg_is_named_not_called_a_missing_frame(tmp_path: Path) -> None:
    """A PNG frame among the JPEGs is read by evaluation but not by training: named as such, not as a mask
    without its frame (annotated) nor left out silently (unannotated)."""
    make_video_dataset(str(tmp_path / "vid"), videos=2, frames=6)
    _keep_masks(tmp_path, "video000", [0, 2, 4])
    for video, frame in (("video000", "00003"), ("video001", "00002")):  # unannotated; annotated
        jpg = tmp_path / "vid/JPEGImages" / video / f"{frame}.jpg"
        Image.open(jpg).save(jpg.with_suffix(".png"))
        jpg.unlink()
    with pytest.raises(DataValidationError) as e:
        build_video_index(_cfg(), str(tmp_path), seq_length=3)
    msg = str(e.value)
    assert "2 videos with frames that are not JPEGs" in msg and "no frame (JPEG)" not in msg
    assert "video000/00003.png" in msg and "video001/00002.png" in msg and "convert those frames to JPEG" in msg
    for video, frame in (("video000", "00003"), ("video001", "00002")):  # converted; a macOS ._ copy stays
        png = tmp_path / "vid/JPEGImages" / video / f"{frame}.png"
        Image.open(png).convert("RGB").save(png.with_suffix(".jpg"))
        png.rename(png.with_name(f"._{frame}.png"))
    assert len(build_video_index(_cfg(), str(tmp_path), seq_length=3).sets[0].videos) == 2


def test_a_wrong_custom_root_names_data_custom_root_in_the_fix(tmp_path: Path) -> None:
    """data=custom's folders come from data.custom_root: the fix names that key (the key the user set), not the
    CUSTOM entry's image_directory, which the user never wrote."""
    vos = {**_cfg()["vos_datasets"]["S"], "image_directory": str(tmp_path / "mine/JPEGImages")}
    vos["mask_directory"] = str(tmp_path / "mine/Annotations")
    cfg = {"vos_datasets": {"CUSTOM": vos}, "image_datasets": {}, "main_training": {"datasets": ["CUSTOM"]}}
    with pytest.raises(DataValidationError, match=r"mine/JPEGImages does not exist \(fix: set data.custom_root to"):
        build_video_index(cfg, str(tmp_path), seq_length=3)
    (tmp_path / "mine/JPEGImages").mkdir(parents=True)
    with pytest.raises(DataValidationError, match=r"mine/Annotations does not exist \(fix: set data.custom_root to"):
        build_video_index(cfg, str(tmp_path), seq_length=3)


def test_masks_saved_as_jpegs_are_named_not_reported_as_unannotated_videos(tmp_path: Path) -> None:
    """Masks exported as .jpg are not read: the videos looked unannotated ('annotate more frames per video')."""
    make_video_dataset(str(tmp_path / "vid"), videos=2, frames=6)
    for png in (tmp_path / "vid/Annotations/video001").glob("*.png"):
        Image.open(png).convert("L").save(png.with_suffix(".jpg"))
        png.unlink()
    with pytest.raises(DataValidationError) as e:
        build_video_index(_cfg(), str(tmp_path), seq_length=3)
    msg = str(e.value)
    assert "1 videos with masks that are not PNGs" in msg and "video001/00000.jpg (6 masks that are not PNGs" in msg
    assert "save the masks as PNGs" in msg and "annotate more frames" not in msg
