"""OVIS -> OVIS-VOS-train conversion: pixel-exact masks for every segmentation encoding, resumability, errors."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from _helpers import file_tree as _tree
from _helpers import repeat_key, run_converter
from PIL import Image
from pycocotools import mask as mask_utils

from cutie.dataprep import ovis
from cutie.dataprep.convert import InputError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools
_cli = functools.partial(run_converter, "convert_ovis_to_vos.py")


def _reference_decode(seg: object, h: int, w: int) -> np.ndarray:
    """pycocotools directly, independent of cutie.dataprep.rle."""
    if seg is None:
        return np.zeros((h, w), bool)
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


@pytest.fixture(scope="module")
def converted(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ovis_out") / "OVIS-VOS-train"
    r = _cli(tiny_data / "OVIS/annotations_train.json", tiny_data / "OVIS/train", out, "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_masks_equal_decoded_instances_in_id_order(tiny_data: Path, converted: Path) -> None:
    doc = json.loads((tiny_data / "OVIS/annotations_train.json").read_text())
    kinds = set()
    for v in doc["videos"]:
        name = str(PurePosixPath(v["file_names"][0]).parent)
        anns = sorted((a for a in doc["annotations"] if a["video_id"] == v["id"]), key=lambda a: a["id"])
        meta = json.loads((converted / "_meta" / f"{name}.json").read_text())
        assert meta["id_map"] == {str(a["id"]): k for k, a in enumerate(anns, start=1)}
        h, w = v["height"], v["width"]
        for t, f in enumerate(v["file_names"]):
            expected = np.zeros((h, w), np.uint8)
            for k, a in enumerate(anns, start=1):
                seg = a["segmentations"][t]
                kinds.add("null" if seg is None else "polygon" if isinstance(seg, list) else type(seg["counts"]))
                expected[_reference_decode(seg, h, w)] = k
            stem = PurePosixPath(f).stem
            with Image.open(converted / "Annotations" / name / f"{stem}.png") as png:
                assert png.mode == "P"
                assert np.array_equal(np.array(png), expected), f"{name}/{stem}"
            assert (converted / "JPEGImages" / name / f"{stem}.jpg").read_bytes() == (
                tiny_data / "OVIS/train" / f
            ).read_bytes()
        assert len(list((converted / "JPEGImages" / name).iterdir())) == len(v["file_names"])
    assert kinds == {"null", "polygon", str, list}


def test_rerun_no_op_and_interrupted_rerun_identical(tiny_data: Path, converted: Path, tmp_path: Path) -> None:
    r = _cli(tiny_data / "OVIS/annotations_train.json", tiny_data / "OVIS/train", converted)
    assert r.returncode == 0 and "0 converted, 3 already done" in r.stdout
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    video = sorted(p.name for p in (out / "Annotations").iterdir())[1]
    (out / "_meta" / f"{video}.json").unlink()
    for p in sorted((out / "Annotations" / video).iterdir())[2:]:
        p.unlink()  # killed half-way through the video
    summary = ovis.convert(
        json.loads((tiny_data / "OVIS/annotations_train.json").read_text()), tiny_data / "OVIS/train", out, workers=1
    )
    assert (summary.converted, summary.skipped) == (1, 2)
    assert _tree(out) == _tree(converted)


@pytest.mark.parametrize("how", ["rle_size", "length", "twice", "video_id"])
def test_malformed_json_is_rejected_before_writing(tiny_data: Path, tmp_path: Path, how: str) -> None:
    doc = json.loads((tiny_data / "OVIS/annotations_train.json").read_text())
    v = doc["videos"][0]
    ann = next(a for a in doc["annotations"] if a["video_id"] == v["id"])
    t = next(i for i, s in enumerate(ann["segmentations"]) if isinstance(s, dict))
    if how == "rle_size":
        ann["segmentations"][t]["size"] = [v["height"] + 1, v["width"]]
        message = f"annotation {ann['id']}, frame {v['file_names'][t]}: RLE size"
    elif how == "length":
        ann["segmentations"].pop()
        message = f"annotation {ann['id']}: {v['length'] - 1} segmentations for {v['length']} frames"
    elif how == "twice":
        v["file_names"][1] = v["file_names"][0]
        message = f"frame {v['file_names'][0]} is listed twice"
    else:
        ann["video_id"] = 999
        message = f"annotation {ann['id']}: video_id 999 is not in 'videos'"
    with pytest.raises(InputError) as err:
        ovis.convert(doc, tiny_data / "OVIS/train", tmp_path / "out", workers=1)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_repeated_key_is_refused_naming_where(tiny_data: Path, tmp_path: Path) -> None:
    # a video whose "id" is given twice: json.loads kept the last, and its annotations went to another video
    doc = json.loads((tiny_data / "OVIS/annotations_train.json").read_text())
    video = doc["videos"][1]
    (tmp_path / "twice.json").write_text(repeat_key(doc, video, "id", video["id"] + 1000))
    r = _cli(tmp_path / "twice.json", tiny_data / "OVIS/train", tmp_path / "out")
    assert r.returncode == 2 and "videos[1]: duplicate key 'id'" in r.stderr, r.stderr
    assert "nothing was written" in r.stderr and not (tmp_path / "out").exists()


def test_missing_frame_fails_only_its_video(tiny_data: Path, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    shutil.copytree(tiny_data / "OVIS/train", frames)
    doc = json.loads((tiny_data / "OVIS/annotations_train.json").read_text())
    missing = frames / doc["videos"][2]["file_names"][4]
    missing.unlink()
    r = _cli(tiny_data / "OVIS/annotations_train.json", frames, tmp_path / "out", "--workers", "1")
    assert r.returncode == 1 and str(missing) in r.stdout and "2 converted" in r.stdout
    name = str(PurePosixPath(doc["videos"][2]["file_names"][0]).parent)
    assert not (tmp_path / "out" / "_meta" / f"{name}.json").exists()


@pytest.mark.parametrize("during", ["reading the json", "converting"])
def test_ctrl_c_is_one_line_and_exit_130(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, during: str
) -> None:
    # the BURST/OVIS command-line flow: Ctrl-C used to end in a traceback (the SA-V test covers the workers)
    from cutie.dataprep import convert

    (tmp_path / "a.json").write_text('{"videos": [], "annotations": []}')

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    if during == "reading the json":
        monkeypatch.setattr(convert.strict_json, "loads", interrupted)
    try:
        rc = convert.run_cli(tmp_path / "a.json", tmp_path, interrupted)  # type: ignore[arg-type]
    except KeyboardInterrupt:  # not raised on: it would end the whole pytest session
        pytest.fail("Ctrl-C escaped run_cli: the user sees a traceback")
    assert rc == 130
    assert capsys.readouterr().err.startswith("interrupted: the videos finished so far are kept; rerun")


@pytest.mark.parametrize("which", ["ovis", "burst"])
def test_an_annotation_file_without_videos_is_refused_with_the_fix(tmp_path: Path, which: str) -> None:
    """A JSON of another split or a stub (no videos / sequences) converted nothing and exited 0, leaving an empty
    dataset that training then refuses with a less direct message."""
    from cutie.dataprep import burst, convert, ovis

    doc = {"videos": [], "annotations": []} if which == "ovis" else {"sequences": []}
    (tmp_path / "frames").mkdir()
    with pytest.raises(convert.InputError, match="the list is empty, nothing to convert") as err:
        (ovis if which == "ovis" else burst).convert(doc, tmp_path / "frames", tmp_path / "out", workers=1)
    assert "fix: point --json_path" in str(err.value)
    assert not (tmp_path / "out").exists()
