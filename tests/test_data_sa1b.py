"""SA-1B as a static pre-training source: the tiny folder's schema, one sample per mask above the threshold, every
annotation file checked (file and JSON location named), the cache, single-object clips whose masks are the RLE's,
and pre-training through the torch and DALI loaders and cutie/train.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import repeat_key
from PIL import Image
from pycocotools import mask as mask_utils

from cutie.config.train import Sa1bMasks
from cutie.config.typed import ConfigError
from cutie.data.index import sa1b
from cutie.data.index.datasets import DataValidationError, StaticIndex, StaticSet, build_static_index, validate
from cutie.data.loaders.build import build_train_loader, make_recipe_source
from cutie.data.render.cpu import render_recipe
from cutie.data.sampling.masks import BadSampleError
from cutie.data.sampling.static import StaticClipSampler, read_sa1b_mask
from cutie.dataprep.imageio import encode_gray_png, encode_jpeg

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2
REPO = Path(__file__).resolve().parents[1]
PRE = {"seq_length": 3, "num_objects": 1, "crop_size": [48, 48]}


def _cfg(directory: str = "SA-1B", multiplier: int = 1, **masks: float) -> dict:
    entry = {"directory": directory, "data_structure": "sa1b", "multiplier": multiplier}
    if masks:
        entry["sa1b"] = masks
    return {"vos_datasets": {}, "image_datasets": {"SA1B": entry}, "main_training": {"datasets": []},
            "pre_training": {"datasets": ["SA1B"]}}  # fmt: skip


def _decoded(tiny: Path) -> list[tuple[Path, Path, int, np.ndarray, dict]]:
    """(jpg, json, index, decoded mask, annotation) of every annotation of the tiny folder, by pycocotools."""
    out = []
    for jp in sorted((tiny / "SA-1B").rglob("*.json")):
        doc = json.loads(jp.read_text())
        for k, ann in enumerate(doc["annotations"]):
            rle = {"size": ann["segmentation"]["size"], "counts": ann["segmentation"]["counts"].encode()}
            out.append((jp.parent / doc["image"]["file_name"], jp, k, mask_utils.decode(rle).astype(bool), ann))
    return out


@pytest.fixture
def copy(tiny_data: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny SA-1B folder under tmp_path/data."""
    shutil.copytree(tiny_data / "SA-1B", tmp_path / "data" / "SA-1B")
    return tmp_path / "data"


def test_tiny_folder_has_the_sa1b_schema_and_its_edge_cases(tiny_data: Path) -> None:
    folders = sorted(p.name for p in (tiny_data / "SA-1B").iterdir())
    assert folders == ["sa_000000", "sa_000001"]
    rows = _decoded(tiny_data)
    for jpg, jp, _, mask, ann in rows:
        doc = json.loads(jp.read_text())
        assert set(doc["image"]) == {"image_id", "width", "height", "file_name"} and jpg.stem == jp.stem
        with Image.open(jpg) as im:
            assert im.size == (doc["image"]["width"], doc["image"]["height"]) and im.mode == "RGB"
        keys = {"id", "segmentation", "bbox", "area", "predicted_iou", "stability_score", "crop_box", "point_coords"}
        assert set(ann) == keys and ann["segmentation"]["size"] == [im.size[1], im.size[0]]
        assert ann["area"] == int(mask.sum()) > 0
    fractions = [m.mean() for *_, m, _ in rows]
    assert min(fractions) < 0.01 and max(fractions) > 0.05  # small things and whole objects
    by_image: dict[Path, list[np.ndarray]] = {}
    for jpg, _, _, m, _ in rows:
        by_image.setdefault(jpg, []).append(m)
    assert any((m1 & m2).any() for ms in by_image.values() for i, m1 in enumerate(ms) for m2 in ms[i + 1 :])
    assert any(all(m.mean() < 0.02 for m in ms) for ms in by_image.values())  # an image without samples
    assert any(ann["predicted_iou"] < 0.88 for *_, ann in rows)


@pytest.mark.parametrize(
    ("masks", "keep"),
    [
        ({}, lambda m, a: m.mean() >= 0.02),  # the defaults
        ({"min_area_fraction": 0.0}, lambda m, a: True),
        ({"min_area_fraction": 0.05, "min_predicted_iou": 0.88},
         lambda m, a: m.mean() >= 0.05 and a["predicted_iou"] >= 0.88),
        ({"min_stability_score": 0.97}, lambda m, a: m.mean() >= 0.02 and a["stability_score"] >= 0.97),
    ],
)  # fmt: skip
def test_one_sample_per_mask_that_passes_the_filter_times_the_multiplier(tiny_data, tmp_path, masks, keep) -> None:
    index = build_static_index(_cfg(multiplier=3, **masks), str(tiny_data), cache_root=str(tmp_path))
    (sset,) = index.sets
    got = [sset.sample(k) for k in range(len(sset))]
    want = [(str(jpg), str(jp), k) for jpg, jp, k, m, ann in _decoded(tiny_data) if keep(m, ann)]
    assert sorted(got) == sorted(want) and len(got) == len(set(got)) and want
    assert len(index) == 3 * len(want) and sorted(np.bincount(index.seed_pair).tolist()) == [3] * len(want)


def test_samples_are_single_object_clips_of_the_decoded_rle(tiny_data: Path, tmp_path: Path) -> None:
    """Each SA-1B sample gives exactly the recipe of the same image with its mask as a saliency PNG: the RLE mask
    reaches the clip (and so both backends, which take the sampler's masks) warped like the image."""
    index = build_static_index(_cfg(), str(tiny_data), cache_root=str(tmp_path))
    (sset,) = index.sets
    sampler = StaticClipSampler(index, 3, 1, (48, 48))
    foreground = 0
    for k in range(len(sset)):
        jpg, jp, ann = sset.sample(k)
        mask = next(m for j, p, a, m, _ in _decoded(tiny_data) if (str(p), a) == (jp, ann))
        folder = tmp_path / f"pair{k}"
        folder.mkdir()
        shutil.copy(jpg, folder / "x.jpg")
        (folder / "x.png").write_bytes(encode_gray_png(mask.astype(np.uint8) * 255))
        pair = StaticIndex([StaticSet("P", str(folder), 1, [(str(folder / "x.jpg"), str(folder / "x.png"))])],
                           np.zeros(1, np.int32), np.zeros(1, np.int32))  # fmt: skip
        ours = sampler.sample(np.random.default_rng(k), int(np.flatnonzero(index.seed_pair == k)[0]))
        ref = StaticClipSampler(pair, 3, 1, (48, 48)).sample(np.random.default_rng(k), 0)
        assert ours.num_objects == 1 and len(ours.layers) == 1 and set(np.unique(ours.cls_gt)) <= {0, 1}
        np.testing.assert_array_equal(ours.cls_gt, ref.cls_gt)
        np.testing.assert_array_equal(ours.layers[0].matrices, ref.layers[0].matrices)
        assert ours.info["layers"][0]["image"] == jpg
        foreground += int(ours.cls_gt.sum())
    assert foreground > 0.05 * len(sset) * ours.cls_gt.size  # the masks are not lost on the way
    np.testing.assert_array_equal(read_sa1b_mask(jp, ann), mask)


def _edit(copy: Path, name: str, change) -> Path:
    jp = next((copy / "SA-1B").rglob(f"{name}.json"))
    doc = json.loads(jp.read_text())
    change(doc)
    jp.write_text(json.dumps(doc))
    return jp


def _counts_cut(doc: dict) -> None:
    doc["annotations"][1]["segmentation"]["counts"] = doc["annotations"][1]["segmentation"]["counts"][:-3]


BAD_FILES = {
    "escape": (lambda d: d["image"].update(file_name="../sa_2.jpg"), "image.file_name: must be a plain file name"),
    "missing_image": (lambda d: d["image"].update(file_name="sa_9.jpg"), "image.file_name: sa_9.jpg does not exist"),
    "not_jpeg": (lambda d: d["image"].update(file_name="sa_1.json"), "is not a JPEG name"),
    "width_bool": (lambda d: d["image"].update(width=True), "image.width: must be a positive integer"),
    "rle_size": (lambda d: d["annotations"][2]["segmentation"].update(size=[10, 20]),
                 "annotations[2].segmentation.size: [10, 20] differs from the image size [120, 180]"),
    "runs": (_counts_cut, "annotations[1].segmentation.counts: "),
    "counts_list": (lambda d: d["annotations"][0]["segmentation"].update(counts=[0, 5]),
                    "annotations[0].segmentation.counts: must be a compressed RLE string"),
    "score": (lambda d: d["annotations"][0].update(predicted_iou="high"),
              "annotations[0].predicted_iou: must be a number"),
    "huge_score": (lambda d: d["annotations"][3].update(stability_score=10**400),
                   "annotations[3].stability_score: must be a number"),
    "not_a_list": (lambda d: d.update(annotations={"0": 1}), "annotations: expected a list"),
    "no_image": (lambda d: d.pop("image"), "image: expected an object"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_annotation_files_name_the_file_and_the_json_location(copy: Path, tmp_path: Path, case: str) -> None:
    change, needle = BAD_FILES[case]
    jp = _edit(copy, "sa_1", change)
    with pytest.raises(DataValidationError) as e:
        validate(_cfg(), str(copy), stages=["pre_training"], cache_root=str(tmp_path / "cache"))
    line = next(ln for ln in str(e.value).splitlines() if "[SA1B]" in ln)
    assert str(jp) in line and needle in line and "fix:" in line, line
    assert "no annotation file names" not in str(e.value)  # its JPEG is not reported as well


def test_a_repeated_key_names_the_file_and_the_json_location(copy: Path, tmp_path: Path) -> None:
    # the second "segmentation" (json.loads kept it without a word) could be another mask than the first
    jp = next((copy / "SA-1B").rglob("sa_1.json"))
    doc = json.loads(jp.read_text())
    ann = doc["annotations"][2]
    jp.write_text(repeat_key(doc, ann, "segmentation", doc["annotations"][0]["segmentation"]))
    with pytest.raises(DataValidationError) as e:
        validate(_cfg(), str(copy), stages=["pre_training"], cache_root=str(tmp_path / "cache"))
    line = next(ln for ln in str(e.value).splitlines() if "[SA1B]" in ln)
    assert str(jp) in line and "annotations[2]: duplicate key 'segmentation'" in line and "fix:" in line, line


def test_file_level_problems(copy: Path, tmp_path: Path) -> None:
    folder = copy / "SA-1B" / "sa_000000"
    (folder / "sa_1.json").write_text("{not json")
    (folder / "sa_77.jpg").write_bytes((folder / "sa_2.jpg").read_bytes())  # no JSON names it
    jpg11 = copy / "SA-1B" / "sa_000001" / "sa_11.jpg"
    jpg11.write_bytes(jpg11.read_bytes()[:-600])  # cut short
    (copy / "SA-1B" / "sa_000001" / "sa_12.jpg").write_bytes(encode_jpeg(np.zeros((40, 30, 3), np.uint8)))
    outside = tmp_path / "outside.jpg"
    shutil.move(folder / "sa_2.jpg", outside)
    os.symlink(outside, folder / "sa_2.jpg")
    with pytest.raises(DataValidationError) as e:
        validate(_cfg(), str(copy), stages=["pre_training"], cache_root=str(tmp_path / "cache"))
    text = str(e.value)
    assert f"{folder / 'sa_1.json'} (top level: not valid JSON" in text
    assert f"1 SA-1B images that no annotation file names: {folder / 'sa_77.jpg'}" in text  # not sa_1.jpg
    assert f"truncated JPEGs: {jpg11}" in text
    assert "sa_12.json says 144x112, the JPEG is 30x40" in text
    assert "image.file_name 'sa_2.jpg' leads outside" in text


def test_config_of_the_mask_filter() -> None:
    with pytest.raises(ConfigError, match=r"`min_area_fraction`: must be within \[0, 1\]"):
        Sa1bMasks(min_area_fraction=2.0)
    # through the parse, the message names the option's full key
    with pytest.raises(ConfigError, match=r"`data.image_datasets.SA1B.sa1b.min_area_fraction`: must be within"):
        sa1b.masks_of({"sa1b": {"min_area_fraction": 2.0}}, "data.image_datasets.SA1B")
    with pytest.raises(ConfigError, match=r"`data.image_datasets.SA1B.sa1b.min_area`: unknown option"):
        sa1b.masks_of({"sa1b": {"min_area": 5}}, "data.image_datasets.SA1B")
    from hydra import compose, initialize_config_dir

    from cutie.config.train import parse_train_config

    with initialize_config_dir(config_dir=str(REPO / "cutie" / "config"), version_base="1.3"):
        cfg = parse_train_config(compose(config_name="train_config", overrides=["data=mega-sa1b"]))
        entry = cfg.data.image_datasets["SA1B"]
        assert "SA1B" in cfg.data.pre_training.datasets and entry.sa1b == Sa1bMasks()
        bad = ["data=tiny", "+data.image_datasets.FSS.sa1b.min_area_fraction=0.1"]
        with pytest.raises(ConfigError, match="apply to data_structure sa1b only"):
            parse_train_config(compose(config_name="train_config", overrides=bad))


def test_second_scan_parses_no_json_and_a_changed_file_is_parsed_again(copy: Path, tmp_path: Path) -> None:
    paths = sorted(str(p) for p in (copy / "SA-1B").rglob("*.json"))
    masks, cache, key = Sa1bMasks(), str(tmp_path / "cache"), "sa1b|test"
    first, parsed, _ = sa1b.parse_files(paths, masks, cache, key)
    assert parsed == len(paths) == 4
    again, parsed, notes = sa1b.parse_files(paths, masks, cache, key)
    assert parsed == 0 and again == first and not notes
    _edit(copy, "sa_11", lambda d: d["annotations"].pop(0))
    changed, parsed, _ = sa1b.parse_files(paths, masks, cache, key)
    assert parsed == 1 and changed[paths[2]].masks == first[paths[2]].masks - 1
    _, parsed, _ = sa1b.parse_files(paths, Sa1bMasks(min_area_fraction=0.1), cache, key + "|other")
    assert parsed == 4  # another filter is another cache
    next(Path(cache).rglob("sa1b-*.json")).write_text('{"version": 1, "key": "sa1b|test", "files": {"x": [1]}}')
    redone, parsed, _ = sa1b.parse_files(paths, masks, cache, key)
    assert parsed == 4 and redone == changed  # a malformed cache entry is ignored, never trusted


def test_a_json_changed_after_the_check_is_a_skipped_sample(copy: Path, tmp_path: Path) -> None:
    source = make_recipe_source(_cfg(), PRE, stage="pre_training", data_root=str(copy), cache_root=str(tmp_path),
                                seed=1, world_size=1, batch_size=1, total_iterations=10)  # fmt: skip
    try:
        jp = _edit(copy, "sa_1", lambda d: [a["segmentation"].update(size=[1, 1]) for a in d["annotations"]])
        with pytest.raises(BadSampleError, match=r"annotations\[0\].segmentation.size: \[1, 1\] differs"):
            read_sa1b_mask(str(jp), 0)
        bad = [p for g in range(12) for p in source(g).info["bad_paths"]]
        assert bad and set(bad) == {str(jp)}
    finally:
        source.close()


def _tiny_cfg(tiny: Path):
    from hydra import compose, initialize_config_dir

    overrides = ["data=tiny", f"data_root={tiny}", "data.pre_training.datasets=[SA1B]"]
    with initialize_config_dir(config_dir=str(REPO / "cutie" / "config"), version_base="1.3"):
        return compose(config_name="train_config", overrides=overrides)


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_loaders_give_single_object_batches_from_tiny_sa1b(tiny_data: Path, tmp_path: Path, backend: str) -> None:
    cfg = _tiny_cfg(tiny_data)
    st = cfg.pre_training
    validate(cfg.data, str(tiny_data), stages=["pre_training"], cache_root=str(tmp_path))  # as training starts
    loader = build_train_loader(
        cfg.data, st, stage="pre_training", data_root=str(tiny_data), cache_root=str(tmp_path), seed=3, rank=0,
        world_size=1, batch_size=2, num_workers=1, device=torch.device("cpu"), backend=backend, total_iterations=10,
    )  # fmt: skip
    try:
        t, (h, w) = int(st.seq_length), tuple(st.crop_size)
        batch = next(loader.iterate(2))
        assert batch["first_frame_gt"].shape == (2, 1, 1, h, w) and batch["cls_gt"].shape == (2, t, 1, h, w)
        assert batch["num_objects"].tolist() == [1, 1] and int(batch["cls_gt"].max()) <= 1
        for j, g in enumerate(loader.indices_of(2)):
            recipe = loader.source(g)
            assert recipe.info["layers"][0]["dataset"] == "SA1B"
            ref_rgb, ref_gt = render_recipe(recipe, reduced_decode=backend == "torch")  # DALI decodes in full
            np.testing.assert_array_equal(batch["cls_gt"][j, :, 0].numpy(), ref_gt)
            diff = np.abs(batch["rgb"][j].numpy() - ref_rgb) * 255
            assert diff.mean() < 0.5 and diff.max() <= 3.0 + 1e-3, (g, diff.mean(), diff.max())
    finally:
        loader.close()


def test_check_data_reports_sa1b(tiny_data: Path, copy: Path, tmp_path: Path) -> None:
    def run(root: Path) -> subprocess.CompletedProcess:
        args = [f"data_root={root}", f"cache_root={tmp_path / 'cache'}", "data=tiny",
                "data.pre_training.datasets=[SA1B]", "main_training.enabled=false"]  # fmt: skip
        return subprocess.run(
            [sys.executable, str(REPO / "scripts/check_data.py"), *args], capture_output=True, text=True
        )

    good = run(tiny_data)
    assert good.returncode == 0 and "OK: training" in good.stdout, good.stdout + good.stderr
    kept = sum(m.mean() >= 0.02 for *_, m, _ in _decoded(tiny_data))
    assert f"SA1B: {kept} of 18 masks kept as samples" in good.stdout
    _edit(copy, "sa_2", lambda d: d["annotations"][0]["segmentation"].update(size=[1, 2]))
    bad = run(copy)
    assert bad.returncode == 1 and "annotations[0].segmentation.size: [1, 2] differs" in bad.stdout


@pytest.mark.slow
def test_tiny_pre_training_on_sa1b(tiny_data: Path, tmp_path: Path) -> None:
    args = ["exp_id=sa1b", "model=small", "data=tiny", f"data_root={tiny_data}", "data.pre_training.datasets=[SA1B]",
            f"cache_root={tmp_path / 'cache'}", f"output_root={tmp_path / 'out'}", "device=cpu", "num_workers=1",
            "pre_training.num_iterations=2", "main_training.enabled=false", "log_text_interval=1",
            "log_image_interval=0", "eval_interval=0", "model.imagenet_dir=null"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(REPO / "cutie/train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(ln) for ln in (tmp_path / "out/sa1b/metrics.jsonl").read_text().splitlines()]
    losses = [r["total_loss"] for r in records if r["stage"] == "pre_training"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert (tmp_path / "out/sa1b/sa1b_pre_training_last.pth").is_file()


@pytest.mark.parametrize("k", [1, 2])
def test_max_masks_per_image_keeps_the_largest_passing_masks(tiny_data: Path, tmp_path: Path, k: int) -> None:
    index = build_static_index(_cfg(max_masks_per_image=k), str(tiny_data), cache_root=str(tmp_path))
    (sset,) = index.sets
    got = sorted(sset.sample(i) for i in range(len(sset)))
    passing: dict[str, list[tuple[int, int, str, int]]] = {}  # image -> (-area, index, json, index)
    for jpg, jp, i, m, _ in _decoded(tiny_data):
        if m.mean() >= 0.02:
            passing.setdefault(str(jpg), []).append((-int(m.sum()), i, str(jp), i))
    want = sorted((jpg, jp, i) for jpg, rows in passing.items() for _, _, jp, i in sorted(rows)[:k])
    assert got == want and any(len(rows) > k for rows in passing.values())  # the cap bites on the tiny folder
    with pytest.raises(ConfigError, match="max_masks_per_image`: must be >= 1 or null"):
        Sa1bMasks(max_masks_per_image=0)
