"""Converters confined to their folders: frame paths from the JSON stay inside --frames_path, writes and deletions
stay inside --output_path and never go through a symlink, bad JSON values are named before anything is written,
and the output gets ordinary permissions."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
from _helpers import REPO, folder_state, run_converter

from cutie.dataprep import burst, convert, ovis
from cutie.utils.paths import Confiner, PathEscapeError, check_no_symlink_inside, confined

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools
_ovis_cli = functools.partial(run_converter, "convert_ovis_to_vos.py")
_burst_cli = functools.partial(run_converter, "convert_burst_to_vos_train.py")


def _layout(tmp_path: Path, src_frames: Path, video: str, victim_files: list[Path]) -> tuple[Path, Path, Path]:
    """data/frames (a copy of the source frames), data/out (not created) and data/victim beside them: a folder
    named like the first video holding copies of its frames, plus an unrelated file."""
    base = tmp_path / "data"
    frames = base / "frames"
    shutil.copytree(src_frames, frames, symlinks=True)
    victim = base / "victim"
    (victim / video).mkdir(parents=True)
    for f in victim_files:
        shutil.copy(f, victim / video / f.name)
    (victim / "keep.txt").write_text("unrelated data that must survive\n")
    return frames, base / "out", victim


def _video0(doc: dict) -> tuple[str, list[str]]:
    v = doc["videos"][0]
    return ovis.video_name(v), [PurePosixPath(f).name for f in v["file_names"]]


def _plant_ovis(how: str, doc: dict, frames: Path, out: Path, victim: Path) -> list[str]:
    """Applies one attack to the OVIS document / folders; returns what the error must name."""
    video, names = _video0(doc)
    v = doc["videos"][0]
    if how == "absolute":  # the old clean-up ran rmtree(<output>/JPEGImages/<absolute victim folder>)
        v["file_names"] = [str(victim / video / n) for n in names]
        return ["videos[0].file_names[0]", "is absolute"]
    if how == "dotdot":  # video name '../../victim/<video>': the clean-up pointed at data/victim/<video>
        v["file_names"] = [f"../../victim/{video}/{n}" for n in names]
        return ["videos[0].file_names[0]", "contains '..'"]
    if how == "dotdot_sources":  # ... or at the source frames themselves
        other = ovis.video_name(doc["videos"][1])
        v["file_names"] = [f"../../frames/{other}/{n}" for n in names]
        return ["videos[0].file_names[0]", "contains '..'"]
    if how == "symlinked_folder_in_frames":
        (frames / "evil").symlink_to(victim / video)
        v["file_names"] = [f"evil/{n}" for n in names]
        return ["videos[0].file_names[0]", "through a symlink"]
    if how == "symlinked_file_in_frames":
        (frames / video / names[2]).unlink()
        (frames / video / names[2]).symlink_to(victim / video / names[2])
        return ["videos[0].file_names[2]", "through a symlink"]
    if how == "link_in_output_video_folder":  # writes used to land in the victim
        (out / "JPEGImages").mkdir(parents=True)
        (out / "JPEGImages" / video).symlink_to(victim / video)
        return [f"{out / 'JPEGImages' / video} is a symlink"]
    if how == "link_in_output_top_folder":  # rmtree(<output>/Annotations/<video>) used to delete victim/<video>
        out.mkdir()
        (out / "Annotations").symlink_to(victim)
        return [f"{out / 'Annotations'} is a symlink"]
    if how == "link_inside_video_folder":  # a planted file link in an earlier attempt's folder
        (out / "Annotations" / video).mkdir(parents=True)
        (out / "Annotations" / video / f"{PurePosixPath(names[0]).stem}.png").symlink_to(victim / "keep.txt")
        return [f"{out / 'Annotations' / video / PurePosixPath(names[0]).stem}.png is a symlink"]
    if how == "link_as_marker":
        (out / "_meta").mkdir(parents=True)
        (out / "_meta" / f"{video}.json").symlink_to(victim / "keep.txt")
        return [f"{out / '_meta' / video}.json is a symlink"]
    raise AssertionError(how)


OVIS_ATTACKS = [
    "absolute",
    "dotdot",
    "dotdot_sources",
    "symlinked_folder_in_frames",
    "symlinked_file_in_frames",
    "link_in_output_video_folder",
    "link_in_output_top_folder",
    "link_inside_video_folder",
    "link_as_marker",
]


@pytest.mark.parametrize("how", OVIS_ATTACKS)
def test_ovis_paths_outside_their_folders_are_refused(tiny_data: Path, tmp_path: Path, how: str) -> None:
    doc = json.loads((tiny_data / "OVIS/annotations_train.json").read_text())
    video, names = _video0(doc)
    victim_files = [tiny_data / "OVIS/train" / video / n for n in names]
    frames, out, victim = _layout(tmp_path, tiny_data / "OVIS/train", video, victim_files)
    expected = _plant_ovis(how, doc, frames, out, victim)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    before = {p: folder_state(p) for p in (victim, frames, out) if p.exists()}
    r = _ovis_cli(tmp_path / "bad.json", frames, out, "--workers", "1")
    assert r.returncode == 2, r.stdout + r.stderr
    assert all(e in r.stderr for e in expected), r.stderr
    assert "Traceback" not in r.stderr and "fix:" in r.stderr and "nothing was written" in r.stderr
    assert {p: folder_state(p) for p in (victim, frames, out) if p.exists()} == before  # victim byte-identical
    assert out.exists() == (how.startswith("link_"))  # nothing was created either


def _seq0(doc: dict) -> tuple[dict, str]:
    seq = doc["sequences"][0]
    return seq, burst.video_name(seq)


def _plant_burst(how: str, doc: dict, frames: Path, out: Path, victim: Path) -> list[str]:
    """Applies one attack to the BURST document / folders; returns what the error must name."""
    seq, video = _seq0(doc)
    first = seq["annotated_image_paths"][0]
    seq_dir = frames / seq["dataset"] / seq["seq_name"]
    if how == "absolute":  # an absolute frame path was copied whatever it named
        seq["annotated_image_paths"][0] = str(victim / video / first)
        return ["sequences[0].annotated_image_paths[0]", "is absolute"]
    if how == "dotdot":
        seq["annotated_image_paths"][0] = f"../../../victim/{video}/{first}"
        return ["sequences[0].annotated_image_paths[0]", "contains '..'"]
    if how == "dotdot_dataset":
        seq["dataset"] = ".."
        return ["sequences[0].dataset", "'..' is not a usable name"]
    if how == "symlinked_file_in_frames":
        (seq_dir / first).unlink()
        (seq_dir / first).symlink_to(victim / video / first)
        return ["sequences[0].annotated_image_paths[0]", "through a symlink"]
    if how == "symlinked_sequence_folder":
        (frames / seq["dataset"] / "evil").symlink_to(victim / video)
        seq["seq_name"] = "evil"
        return ["sequences[0].dataset/seq_name", "through a symlink"]
    if how == "link_in_output_video_folder":
        (out / "JPEGImages").mkdir(parents=True)
        (out / "JPEGImages" / video).symlink_to(victim / video)
        return [f"{out / 'JPEGImages' / video} is a symlink"]
    if how == "link_in_output_all_frames":
        out.mkdir()
        (out / "JPEGImages_all_frames").symlink_to(victim)
        return [f"{out / 'JPEGImages_all_frames'} is a symlink"]
    raise AssertionError(how)


BURST_ATTACKS = [
    "absolute",
    "dotdot",
    "dotdot_dataset",
    "symlinked_file_in_frames",
    "symlinked_sequence_folder",
    "link_in_output_video_folder",
    "link_in_output_all_frames",
]


@pytest.mark.parametrize("how", BURST_ATTACKS)
def test_burst_paths_outside_their_folders_are_refused(tiny_data: Path, tmp_path: Path, how: str) -> None:
    doc = json.loads((tiny_data / "BURST/train/train.json").read_text())
    seq, video = _seq0(doc)
    src_dir = tiny_data / "BURST/frames/train" / seq["dataset"] / seq["seq_name"]
    victim_files = [src_dir / f for f in seq["annotated_image_paths"]]
    frames, out, victim = _layout(tmp_path, tiny_data / "BURST/frames/train", video, victim_files)
    expected = _plant_burst(how, doc, frames, out, victim)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    before = {p: folder_state(p) for p in (victim, frames, out) if p.exists()}
    r = _burst_cli(tmp_path / "bad.json", frames, out, "--save_all_image", "--workers", "1")
    assert r.returncode == 2, r.stdout + r.stderr
    assert all(e in r.stderr for e in expected), r.stderr
    assert "Traceback" not in r.stderr and "fix:" in r.stderr and "nothing was written" in r.stderr
    assert {p: folder_state(p) for p in (victim, frames, out) if p.exists()} == before
    assert out.exists() == (how.startswith("link_"))


def test_etc_hostname_as_a_frame_is_not_copied(tiny_data: Path, tmp_path: Path) -> None:
    doc = json.loads((tiny_data / "BURST/train/train.json").read_text())
    doc["sequences"][2]["all_image_paths"][1] = "/etc/hostname"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    r = _burst_cli(tmp_path / "bad.json", tiny_data / "BURST/frames/train", tmp_path / "out", "--save_all_image")
    assert r.returncode == 2 and "sequences[2].all_image_paths[1]: '/etc/hostname' is absolute" in r.stderr
    assert not (tmp_path / "out").exists()


def test_output_overlapping_the_frames_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    frames = tmp_path / "train"
    shutil.copytree(tiny_data / "OVIS/train", frames)
    before = folder_state(frames)
    for out in (frames / "out", frames, tmp_path):  # inside the frames, the frames themselves, around them
        r = _ovis_cli(tiny_data / "OVIS/annotations_train.json", frames, out)
        assert r.returncode == 2 and "overlap" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert folder_state(frames) == before


def test_missing_frame_deletes_nothing_of_the_old_output(tiny_data: Path, tmp_path: Path) -> None:
    """A video whose inputs are unusable keeps its earlier output: the clean-up comes after the input check."""
    frames = tmp_path / "frames"
    shutil.copytree(tiny_data / "OVIS/train", frames)
    doc = json.loads((tiny_data / "OVIS/annotations_train.json").read_text())
    out = tmp_path / "out"
    assert ovis.convert(doc, frames, out, workers=1).converted == 3
    video, names = _video0(doc)
    before = folder_state(out)
    next(a for a in doc["annotations"] if a["video_id"] == doc["videos"][0]["id"])["segmentations"][0] = None
    (frames / video / names[3]).unlink()  # the video must be redone, but one of its frames is gone
    summary = ovis.convert(doc, frames, out, workers=1)
    assert (summary.converted, summary.skipped, [r.video for r in summary.failed]) == (0, 2, [video])
    assert str(frames / video / names[3]) in summary.failed[0].error
    assert folder_state(out) == before


def _damage_frame(path: Path, how: str) -> None:
    from PIL import Image

    if how == "empty":
        path.write_bytes(b"")
    elif how == "cut":
        path.write_bytes(path.read_bytes()[:-40])
    elif how == "png_named_jpg":
        Image.open(path).save(path, format="PNG")
    elif how == "other_size":
        Image.open(path).resize((40, 30)).save(path, format="JPEG")
    elif how == "folder":
        path.unlink()
        path.mkdir()
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:  # "bomb": the frame header claims 20000x20000
        data = bytearray(path.read_bytes())
        sof = min(i for i in (data.find(b"\xff\xc0"), data.find(b"\xff\xc2")) if i > 0)
        data[sof + 5 : sof + 9] = (20000).to_bytes(2, "big") * 2
        path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("empty", "0 bytes"),
        ("cut", "no end-of-image marker"),
        ("png_named_jpg", "not a JPEG"),
        ("other_size", "is 40x30 but the JSON gives 160x120"),
        ("folder", "(it is a folder)"),
        ("fifo", "does not exist as a regular file"),
        ("bomb", "20000x20000"),
    ],
)
def test_a_damaged_source_frame_fails_its_video_without_being_copied(
    tiny_data: Path, tmp_path: Path, how: str, words: str
) -> None:
    """Each frame is checked as training will check it, and against the JSON's size, before its video is
    written: the video fails naming the source file (the others convert), instead of the damaged copy being
    reported under the output at the start of training."""
    frames = tmp_path / "frames"
    shutil.copytree(tiny_data / "OVIS/train", frames)
    doc = json.loads((tiny_data / "OVIS/annotations_train.json").read_text())
    video, names = _video0(doc)
    bad = frames / video / names[2]
    _damage_frame(bad, how)
    summary = ovis.convert(doc, frames, tmp_path / "out", workers=1)
    assert (summary.converted, [r.video for r in summary.failed]) == (2, [video])
    assert str(bad) in summary.failed[0].error and words in summary.failed[0].error, summary.failed[0].error
    assert not (tmp_path / "out" / "JPEGImages" / video).exists()


def test_writes_and_deletions_refuse_links_met_at_run_time(tmp_path: Path) -> None:
    """The second line of defence: a link planted after the up-front check is refused when met."""
    out, victim = tmp_path / "out", tmp_path / "victim"
    (victim / "v").mkdir(parents=True)
    (victim / "v" / "a.png").write_bytes(b"precious")
    (out / "JPEGImages").mkdir(parents=True)
    (out / "JPEGImages" / "v").symlink_to(victim / "v")
    before = folder_state(victim)
    with pytest.raises(PathEscapeError, match="is a symlink"):
        convert.clear_video(out, "v")
    with pytest.raises(PathEscapeError, match="is a symlink"):
        convert.write_output(out, out / "JPEGImages" / "v" / "a.png", b"x")
    (out / "Annotations").symlink_to(out / "JPEGImages")  # pointing back inside is refused too
    with pytest.raises(PathEscapeError, match="is a symlink"):
        check_no_symlink_inside(out, out / "Annotations" / "w" / "b.png")
    with pytest.raises(PathEscapeError, match="not inside"):
        convert.write_output(out, tmp_path / "elsewhere.png", b"x")
    assert folder_state(victim) == before
    assert not (tmp_path / "elsewhere.png").exists()


def test_confiner_agrees_with_confined(tmp_path: Path) -> None:
    """The fast per-frame check used by the validators refuses exactly what `confined` refuses."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (root / "a" / "f.jpg").write_bytes(b"x")
    (outside / "g.jpg").write_bytes(b"y")
    (root / "in_link").symlink_to(root / "a")  # stays inside
    (root / "out_link").symlink_to(outside)
    (root / "a" / "b" / "up").symlink_to("../../out_link")  # a chain that ends outside
    (root / "back").symlink_to(tmp_path / "outside" / ".." / "root" / "a")  # leaves lexically, lands inside
    (root / "file_link").symlink_to(outside / "g.jpg")
    cases = ["a/f.jpg", "in_link/f.jpg", "a/./f.jpg", "missing/x.jpg", "back/f.jpg", "out_link/g.jpg",
             "a/b/up/g.jpg", "file_link", "/etc/hostname", "../outside/g.jpg", "a/../../outside", ""]  # fmt: skip
    check = Confiner(root)
    refused = set()
    for rel in cases:
        try:
            expected: object = confined(root, rel)
        except PathEscapeError as e:
            expected = type(e)
            refused.add(rel)
        try:
            got: object = check(rel)
        except PathEscapeError as e:
            got = type(e)
        assert got == expected, rel
    assert refused == {"out_link/g.jpg", "a/b/up/g.jpg", "file_link", "/etc/hostname", "../outside/g.jpg",
                       "a/../../outside", ""}  # fmt: skip


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), REPO / "scripts" / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_dict_seg(doc: dict) -> tuple[int, int]:
    """(annotation index, frame index) of the first RLE-dict segmentation in the OVIS document."""
    for j, a in enumerate(doc["annotations"]):
        for t, s in enumerate(a["segmentations"]):
            if isinstance(s, dict):
                return j, t
    raise AssertionError("no RLE dict in the tiny OVIS set")


def _set(path: str, value: object) -> Callable[[dict], None]:
    """A mutation setting the value at a JSON location written as the messages write it (`videos[1].width`)."""
    keys: list[str | int] = [int(k) if k.isdigit() else k for k in re.split(r"[.\[\]]+", path) if k]

    def apply(doc: dict) -> None:
        target: Any = doc
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return apply


def _ovis_seg(doc: dict, value: object, key: str | None = None) -> str:
    j, t = _first_dict_seg(doc)
    if key is None:
        doc["annotations"][j]["segmentations"][t] = value
    else:
        doc["annotations"][j]["segmentations"][t][key] = value
    return f"annotations[{j}].segmentations[{t}]:"


OVIS_BAD_VALUES: dict[str, tuple[Callable[[dict], object], str]] = {
    "width_string": (_set("videos[1].width", "160"), "videos[1].width: must be a positive integer"),
    "height_null": (_set("videos[2].height", None), "videos[2].height: must be a positive integer"),
    "height_bool": (_set("videos[0].height", True), "videos[0].height: must be a positive integer"),
    "name_null": (_set("videos[0].file_names[2]", None), "videos[0].file_names[2]: must be a non-empty string"),
    "name_number": (_set("videos[1].file_names[0]", 7), "videos[1].file_names[0]: must be a non-empty string"),
    "name_nested": (_set("videos[0].file_names[0]", "a/b/c.jpg"), "videos[0].file_names"),
    "file_names_string": (_set("videos[0].file_names", "x.jpg"), "videos[0].file_names: must be a non-empty list"),
    "video_id_list": (_set("videos[0].id", [1]), "videos[0].id: must be an integer or a string"),
    "length_string": (
        _set("videos[0].length", "12"),
        'videos[0].length: must equal the number of file_names (12), got "12"',
    ),
    "videos_object": (_set("videos", {}), "top level: expected an object with 'videos'"),
    "annotation_string": (_set("annotations[0]", "x"), "annotations[0]: must be an object"),
    "ann_video_id_null": (_set("annotations[1].video_id", None), "annotations[1].video_id: must be an integer"),
    "segmentations_object": (_set("annotations[0].segmentations", {"a": 1}), "annotations[0].segmentations:"),
    "rle_size_strings": (lambda d: _ovis_seg(d, ["a", 160], "size"), "RLE size must be [height, width] integers"),
    "rle_counts_strings": (lambda d: _ovis_seg(d, ["x", 3], "counts"), "RLE counts list must hold integers"),
    "rle_counts_number": (lambda d: _ovis_seg(d, 5, "counts"), "RLE counts must be a string or a list of ints"),
    "rle_bad_chars": (lambda d: _ovis_seg(d, "\u00e9\u00e9", "counts"), "RLE counts string is not ASCII"),
    "polygon_strings": (lambda d: _ovis_seg(d, [["1", "2", "3", "4", "5", "6"]]), "coordinates must be finite"),
    "segmentation_number": (lambda d: _ovis_seg(d, 3), "unsupported segmentation type int"),
    # pycocotools casts coordinates to C ints unchecked: ~1e9 crashed the converter (SIGSEGV)
    "polygon_far": (lambda d: _ovis_seg(d, [[0, 0, 1e12, 0, 1e12, 1e12]]), "polygon coordinates must lie within"),
}


@pytest.mark.parametrize("case", sorted(OVIS_BAD_VALUES))
def test_ovis_bad_values_named_before_writing(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    mutate, message = OVIS_BAD_VALUES[case]
    doc = json.loads((tiny_data / "OVIS/annotations_train.json").read_text())
    located = mutate(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    main = _load_script("convert_ovis_to_vos.py").main
    args = ["--json_path", str(tmp_path / "bad.json"), "--frames_path", str(tiny_data / "OVIS/train")]
    code = main([*args, "--output_path", str(tmp_path / "out"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "fix:" in err, err
    assert located is None or located in err, err
    assert not (tmp_path / "out").exists()


def _burst_track(doc: dict) -> tuple[int, str]:
    """(frame index, track id) of the first annotated track of sequences[0]."""
    for k, seg in enumerate(doc["sequences"][0]["segmentations"]):
        for track in seg:
            return k, track
    raise AssertionError("no track in sequences[0]")


def _set_rle(doc: dict, value: object) -> str:
    k, track = _burst_track(doc)
    doc["sequences"][0]["segmentations"][k][track]["rle"] = value
    return f'sequences[0].segmentations[{k}]["{track}"]'


def _set_track_key(doc: dict, key: str) -> str:
    k, track = _burst_track(doc)
    seg = doc["sequences"][0]["segmentations"][k]
    seg[key] = seg.pop(track)
    return f"sequences[0].segmentations[{k}]: track id {key!r} is not a positive integer"


BURST_BAD_VALUES: dict[str, tuple[Callable[[dict], object], str]] = {
    "width_string": (_set("sequences[0].width", "160"), "sequences[0].width: must be a positive integer"),
    "height_zero": (_set("sequences[1].height", 0), "sequences[1].height: must be a positive integer"),
    "seq_name_null": (_set("sequences[0].seq_name", None), "sequences[0].seq_name: must be a string, got null"),
    "dataset_number": (_set("sequences[2].dataset", 5), "sequences[2].dataset: must be a string, got 5"),
    "seq_name_slash": (_set("sequences[0].seq_name", "a/b"), "sequences[0].seq_name: 'a/b' must be a single"),
    "frame_null": (
        _set("sequences[0].annotated_image_paths[1]", None),
        "sequences[0].annotated_image_paths[1]: must be a non-empty string",
    ),
    "frames_string": (
        _set("sequences[0].annotated_image_paths", "x"),
        "sequences[0].annotated_image_paths: must be a list",
    ),
    "all_frames_number": (_set("sequences[1].all_image_paths[0]", 3), "sequences[1].all_image_paths[0]: must be"),
    "segmentation_list": (_set("sequences[0].segmentations[1]", []), "sequences[0].segmentations[1]: must be a"),
    "segmentations_null": (_set("sequences[0].segmentations", None), "sequences[0].segmentations: must be a list"),
    "track_not_digits": (lambda d: _set_track_key(d, "\u00b2"), "is not a positive integer"),
    "rle_number": (lambda d: _set_rle(d, 5), "missing the 'rle' string"),
    "rle_bad_chars": (lambda d: _set_rle(d, "!!!"), "RLE counts string has characters outside"),
    "track_categories_number": (
        _set("sequences[0].track_category_ids", 3),
        "sequences[0].track_category_ids: must be an object",
    ),
    "sequences_string": (_set("sequences", "x"), "top level: expected an object with a 'sequences' list"),
    "sequence_number": (_set("sequences[1]", 7), "sequences[1]: must be an object, got 7"),
}


@pytest.mark.parametrize("case", sorted(BURST_BAD_VALUES))
def test_burst_bad_values_named_before_writing(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    mutate, message = BURST_BAD_VALUES[case]
    doc = json.loads((tiny_data / "BURST/train/train.json").read_text())
    located = mutate(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    main = _load_script("convert_burst_to_vos_train.py").main
    args = ["--json_path", str(tmp_path / "bad.json"), "--frames_path", str(tiny_data / "BURST/frames/train")]
    code = main([*args, "--output_path", str(tmp_path / "out"), "--save_all_image", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "fix:" in err, err
    assert located is None or located in err, err
    assert not (tmp_path / "out").exists()


def test_bad_values_exit_2_without_traceback_as_processes(tiny_data: Path, tmp_path: Path) -> None:
    """The same reports from real processes: exit status 2, the field named, no traceback, nothing written."""
    doc = json.loads((tiny_data / "OVIS/annotations_train.json").read_text())
    doc["videos"][1]["width"] = "wide"
    doc["videos"][0]["file_names"][3] = None
    (tmp_path / "ovis.json").write_text(json.dumps(doc))
    r = _ovis_cli(tmp_path / "ovis.json", tiny_data / "OVIS/train", tmp_path / "out")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "videos[1].width" in r.stderr and "videos[0].file_names[3]" in r.stderr and "2 problem(s)" in r.stderr
    doc = json.loads((tiny_data / "BURST/train/train.json").read_text())
    doc["sequences"][1]["height"] = "tall"
    (tmp_path / "burst.json").write_text(json.dumps(doc))
    r = _burst_cli(tmp_path / "burst.json", tiny_data / "BURST/frames/train", tmp_path / "out")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "sequences[1].height" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def _modes(root: Path) -> tuple[set[int], set[int]]:
    files, dirs = set(), {stat.S_IMODE(root.stat().st_mode)}
    for here, ds, fs in os.walk(root):
        dirs |= {stat.S_IMODE((Path(here) / d).stat().st_mode) for d in ds}
        files |= {stat.S_IMODE((Path(here) / f).stat().st_mode) for f in fs}
    return files, dirs


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_converted_files_get_ordinary_permissions(
    tiny_data: Path, tmp_path: Path, umask: int, file_mode: int, dir_mode: int
) -> None:
    runs = [
        (_ovis_cli, tiny_data / "OVIS/annotations_train.json", tiny_data / "OVIS/train", ()),
        (_burst_cli, tiny_data / "BURST/train/train.json", tiny_data / "BURST/frames/train", ("--save_all_image",)),
    ]
    for k, (cli, json_path, frames, extra) in enumerate(runs):
        out = tmp_path / f"out{k}"
        r = cli(json_path, frames, out, *extra, "--workers", "2", umask=umask)
        assert r.returncode == 0, r.stdout + r.stderr
        files, dirs = _modes(out)
        assert (files, dirs) == ({file_mode}, {dir_mode}), (oct(umask), [oct(m) for m in files | dirs])
