"""The generated tiny dataset: deterministic, decodable, in the layouts the loader and the converters expect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers import file_tree as _tree
from PIL import Image
from pycocotools import mask as mask_utils

from cutie.utils.palette import davis_palette

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2
REPO = Path(__file__).resolve().parents[1]
VOS_ROOTS = {
    "DAVIS": ("DAVIS/2017/trainval/JPEGImages/480p", "DAVIS/2017/trainval/Annotations/480p"),
    "YouTube": ("YouTube/train/JPEGImages", "YouTube/train/Annotations"),
    "MOSE": ("MOSE/train/JPEGImages", "MOSE/train/Annotations"),
}


def _generate(out: Path, seed: int) -> None:
    cmd = [sys.executable, str(REPO / "scripts" / "make_tiny_dataset.py"), "--out", str(out), "--seed", str(seed)]
    subprocess.run(cmd, check=True, capture_output=True)


def _video_masks(mask_dir: Path) -> np.ndarray:
    return np.stack([np.array(Image.open(p)) for p in sorted(mask_dir.glob("*.png"))])  # T*H*W


def test_same_seed_same_bytes_other_seed_differs(tiny_data: Path, tmp_path: Path) -> None:
    _generate(tmp_path / "again", 0)
    _generate(tmp_path / "other", 1)
    first, again, other = _tree(tiny_data), _tree(tmp_path / "again"), _tree(tmp_path / "other")
    assert first.keys() == again.keys()
    assert [k for k in first if first[k] != again[k]] == []
    assert first.keys() == other.keys()  # same layout ...
    differing = [k for k in first if k.endswith(".jpg") and first[k] != other[k]]
    assert len(differing) > 0.9 * sum(k.endswith(".jpg") for k in first)  # ... different content
    assert sum(len(b) for b in first.values()) < 30 * 2**20


def test_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    cmd = [sys.executable, str(REPO / "scripts" / "make_tiny_dataset.py"), "--out", str(tmp_path), "--force"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode != 0 and "refusing" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "user data"
    # a manifest that is a link (to any regular file) does not make the folder a tiny dataset
    (tmp_path / "elsewhere.json").write_text("{}")
    (tmp_path / "TINY_DATASET.json").symlink_to(tmp_path / "elsewhere.json")
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode != 0 and "refusing" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_force_on_a_linked_folder_replaces_its_contents_and_a_file_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    """--out may be a symlink to a folder: --force empties the folder (never what a link inside points to) and
    regenerates; an --out that is a file is one line, no traceback."""
    script = [sys.executable, str(REPO / "scripts" / "make_tiny_dataset.py")]
    real, link, outside = tmp_path / "real", tmp_path / "link", tmp_path / "outside"
    real.mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("user data")
    (real / "TINY_DATASET.json").write_text("{}")
    (real / "stale").mkdir()
    (real / "pointer").symlink_to(outside, target_is_directory=True)
    link.symlink_to(real, target_is_directory=True)
    result = subprocess.run([*script, "--out", str(link), "--force"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert link.is_symlink() and not (real / "stale").exists() and not (real / "pointer").exists()
    assert (outside / "keep.txt").read_text() == "user data"
    assert _tree(real) == _tree(tiny_data)
    (tmp_path / "file").write_text("x")
    result = subprocess.run([*script, "--out", str(tmp_path / "file")], capture_output=True, text=True)
    assert result.returncode == 2 and "is not a folder" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("dataset", sorted(VOS_ROOTS))
def test_vos_layout_pairs_and_palette(tiny_data: Path, dataset: str) -> None:
    img_root, mask_root = (tiny_data / p for p in VOS_ROOTS[dataset])
    videos = sorted(p.name for p in img_root.iterdir())
    assert videos and videos == sorted(p.name for p in mask_root.iterdir())
    palette = davis_palette()
    for video in videos:
        jpgs = sorted(p.stem for p in (img_root / video).iterdir())
        pngs = sorted(p.stem for p in (mask_root / video).iterdir())
        assert jpgs == pngs, f"{dataset}/{video}: frames and masks must pair by name"
        step = 5 if dataset == "YouTube" else 1
        assert jpgs == [f"{t * step:05d}" for t in range(len(jpgs))]
        for stem in jpgs:
            with Image.open(img_root / video / f"{stem}.jpg") as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                size = im.size
                im.load()
            with Image.open(mask_root / video / f"{stem}.png") as m:
                assert m.mode == "P" and m.size == size
                assert m.getpalette()[:48] == palette[:48]
                ids = np.array(m)
            assert ids.max() <= 5


def test_vos_edge_cases_present(tiny_data: Path) -> None:
    lengths, empty_first, leaves, counts = [], 0, 0, set()
    for _, mask_root in VOS_ROOTS.values():
        for video_dir in sorted((tiny_data / mask_root).iterdir()):
            masks = _video_masks(video_dir)
            lengths.append(len(masks))
            present = [set(np.unique(m).tolist()) - {0} for m in masks]
            empty_first += not present[0]
            leaves += any(present[t] - present[t + 1] for t in range(len(masks) - 1))
            counts.add(len(set().union(*present)))
            # Objects are big enough to survive a 96x96 crop of these small frames.
            for obj in set().union(*present):
                assert max((m == obj).sum() for m in masks) > 150
    assert min(lengths) < 8 and sum(n >= 10 for n in lengths) > len(lengths) / 2
    assert empty_first >= 2 and leaves >= 2
    assert min(counts) == 1 and max(counts) == 5


def test_davis_imagesets_list_existing_videos(tiny_data: Path) -> None:
    root = tiny_data / "DAVIS/2017/trainval"
    train = (root / "ImageSets/2017/train.txt").read_text().split()
    val = (root / "ImageSets/2017/val.txt").read_text().split()
    assert len(train) >= 3 and len(val) == 2 and not set(train) & set(val)
    for video in train + val:
        assert (root / "JPEGImages/480p" / video).is_dir() and (root / "Annotations/480p" / video).is_dir()


def test_static_sets(tiny_data: Path) -> None:
    flat = ["DUTS-TR", "DUTS-TE", "ecssd", "BIG_small", "HRSOD_small"]
    pairs = [(d / p.stem) for d in (tiny_data / "static/fss").iterdir() for p in d.glob("*.jpg")]
    assert all(p.name.isdigit() for p in pairs) and len(pairs) >= 6
    for name in flat:
        stems = sorted(p.stem for p in (tiny_data / "static" / name).glob("*.jpg"))
        assert stems == sorted(p.stem for p in (tiny_data / "static" / name).glob("*.png")) and stems
        pairs += [tiny_data / "static" / name / s for s in stems]
    sizes = set()
    for stem in pairs:
        with Image.open(stem.with_suffix(".jpg")) as im, Image.open(stem.with_suffix(".png")) as m:
            assert im.mode == "RGB" and m.mode == "L" and im.size == m.size
            assert 100 <= min(im.size) and max(im.size) <= 240
            sizes.add(im.size)
            values = set(np.unique(np.array(m)).tolist())
        assert values == {0, 255}
    assert len(sizes) > 5


def test_burst_schema_and_edge_cases(tiny_data: Path) -> None:
    doc = json.loads((tiny_data / "BURST/train/train.json").read_text())
    assert doc["split"] == "train" and doc["categories"]
    big_id = overlap = empty_frame = False
    for seq in doc["sequences"]:
        for key in (
            "id",
            "width",
            "height",
            "dataset",
            "seq_name",
            "fps",
            "all_image_paths",
            "annotated_image_paths",
            "segmentations",
            "track_category_ids",
        ):
            assert key in seq
        h, w = seq["height"], seq["width"]
        assert set(seq["annotated_image_paths"]) <= set(seq["all_image_paths"])
        assert len(seq["segmentations"]) == len(seq["annotated_image_paths"])
        folder = tiny_data / "BURST/frames/train" / seq["dataset"] / seq["seq_name"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(seq["all_image_paths"])
        with Image.open(folder / seq["all_image_paths"][0]) as im:
            assert im.size == (w, h)
        for frame in seq["segmentations"]:
            empty_frame |= not frame
            union = np.zeros((h, w), dtype=np.int32)
            for track, ann in frame.items():
                assert track in seq["track_category_ids"]
                big_id |= int(track) > 255
                m = mask_utils.decode({"size": [h, w], "counts": ann["rle"].encode("ascii")})
                assert m.shape == (h, w) and m.any()
                union += m
            overlap |= bool((union > 1).any())
    assert big_id and overlap and empty_frame


def test_ovis_schema_and_encodings(tiny_data: Path) -> None:
    doc = json.loads((tiny_data / "OVIS/annotations_train.json").read_text())
    videos = {v["id"]: v for v in doc["videos"]}
    kinds = set()
    for v in videos.values():
        assert len(v["file_names"]) == v["length"]
        for name in v["file_names"]:
            assert (tiny_data / "OVIS/train" / name).is_file()
    for ann in doc["annotations"]:
        v = videos[ann["video_id"]]
        h, w = v["height"], v["width"]
        assert len(ann["segmentations"]) == v["length"]
        assert ann["category_id"] in {c["id"] for c in doc["categories"]}
        for seg in ann["segmentations"]:
            if seg is None:
                kinds.add("null")
                continue
            if isinstance(seg, list):
                kinds.add("polygon")
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg["counts"], list):
                kinds.add("uncompressed")
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                kinds.add("compressed")
                rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
            assert mask_utils.decode(rle).shape == (h, w) and mask_utils.area(rle) > 0
    assert kinds == {"null", "polygon", "uncompressed", "compressed"}


def test_custom_sparse_folder(tiny_data: Path) -> None:
    root = tiny_data / "custom-sparse"
    annotated = {}
    for video_dir in sorted((root / "JPEGImages").iterdir()):
        jpgs = sorted(p.stem for p in video_dir.glob("*.jpg"))
        pngs = sorted(p.stem for p in (root / "Annotations" / video_dir.name).glob("*.png"))
        assert jpgs == [f"{t:05d}" for t in range(len(jpgs))] and set(pngs) < set(jpgs)  # a JPEG on every frame
        annotated[video_dir.name] = [int(s) for s in pngs]
    assert annotated == {
        "hop-sparse": list(range(0, 14, 2)),
        "judo-like": [0, 5, 8, 13],
        "walk-sparse": list(range(0, 24, 3)),
    }
    judo = _video_masks(root / "Annotations/judo-like")
    assert [sorted(set(np.unique(m).tolist()) - {0}) for m in judo] == [[1], [2], [3], [4]]  # one object each
    sizes = {p.name: Image.open(p).size for p in sorted((root / "Annotations/walk-sparse").glob("*.png"))}
    assert {n for n, s in sizes.items() if s != (160, 120)} == {"00009.png"} and sizes["00009.png"] == (159, 120)
    walk = [
        set(np.unique(np.array(Image.open(p))).tolist()) - {0}
        for p in sorted((root / "Annotations/walk-sparse").glob("*.png"))
    ]
    assert walk[0] == {1, 2} and walk[-1] == {1, 2, 3}  # an object entering late
