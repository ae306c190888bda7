"""Clip sampling, rendering and the torch loader on small synthetic sources (flat-coloured objects)."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cutie.data.loaders.base import TooManyBadSamplesError
from cutie.data.loaders.build import build_train_loader, make_recipe_source
from cutie.data.render.cpu import render_recipe
from cutie.data.sampling.source import max_skip_at
from cutie.data.sampling.tps import tps_map
from cutie.testing.synthetic import OBJECT_COLOURS, make_static_dataset, make_video_dataset

MAIN = {
    "seq_length": 4,
    "num_objects": 3,
    "crop_size": [48, 48],
    "merge_probability": 0.5,
    "max_skip_schedule": [5, 10, 15, 5],
    "max_skip_schedule_fraction": [0.0, 0.1, 0.3, 0.8],
}
PRE = {"seq_length": 3, "num_objects": 1, "crop_size": [40, 40]}


def _data_cfg(videos: list[str], statics: list[str], **vos_kw) -> dict:
    vos = {
        v: {
            "image_directory": f"{v}/JPEGImages",
            "mask_directory": f"{v}/Annotations",
            "multiplier": 1,
            "frame_interval": 1,
            "subset": None,
            "empty_masks": None,
            **vos_kw,
        }
        for v in videos
    }
    img = {s: {"directory": s, "data_structure": 1, "multiplier": 1} for s in statics}
    return {
        "vos_datasets": vos,
        "image_datasets": img,
        "main_training": {"datasets": videos},
        "pre_training": {"datasets": statics},
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    make_video_dataset(str(root / "two"), videos=3, frames=12, size=(60, 90), object_ids=(2, 5))
    make_video_dataset(str(root / "one"), videos=2, frames=30, size=(60, 90), object_ids=(7,), seed=1)
    make_video_dataset(str(root / "five"), videos=2, frames=8, size=(60, 90), object_ids=(1, 2, 3, 4, 6), seed=2)
    make_static_dataset(str(root / "stat"), images=5, sizes=(50, 90))
    return root


def _source(
    root: Path,
    stage: str,
    data: dict,
    stage_cfg: dict,
    seed: int = 3,
    batch_size: int = 2,
    world: int = 1,
    total: int = 100,
):
    return make_recipe_source(
        data,
        stage_cfg,
        stage=stage,
        data_root=str(root),
        cache_root=str(root / "cache"),
        seed=seed,
        world_size=world,
        batch_size=batch_size,
        total_iterations=total,
    )


def _loader(
    root: Path,
    stage: str,
    data: dict,
    stage_cfg: dict,
    *,
    workers: int = 0,
    batch_size: int = 2,
    rank: int = 0,
    world: int = 1,
    max_bad: float = 0.01,
):
    return build_train_loader(
        data,
        stage_cfg,
        stage=stage,
        data_root=str(root),
        cache_root=str(root / "cache"),
        seed=3,
        rank=rank,
        world_size=world,
        batch_size=batch_size,
        num_workers=workers,
        device=torch.device("cpu"),
        backend="torch",
        total_iterations=100,
        max_bad_fraction=max_bad,
    )


def _neutral_colours(recipe) -> None:
    for layer in recipe.layers:
        layer.brightness[:] = layer.contrast[:] = layer.saturation[:] = 1.0
        layer.grayscale[:] = False
        layer.hue = None


def _assert_aligned(recipe, rgb: np.ndarray, layer_colours) -> int:
    """Interior pixels of output object k have the flat colour of its source object; returns pixels checked."""
    checked = 0
    for k, (layer, src_id) in enumerate(recipe.info["objects"], start=1):
        expected = np.array(layer_colours(layer, src_id), np.float32)
        for t in range(rgb.shape[0]):
            inner = cv2.erode((recipe.cls_gt[t] == k).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            if inner.sum() == 0:
                continue
            got = rgb[t].transpose(1, 2, 0)[inner] * 255
            assert np.abs(np.median(got, axis=0) - expected).max() < 12, (k, t, np.median(got, axis=0), expected)
            checked += int(inner.sum())
    return checked


def test_main_batches_shapes_dtypes_and_one_hot(sources: Path) -> None:
    loader = _loader(sources, "main_training", _data_cfg(["two", "one"], []), MAIN, batch_size=3)
    try:
        batch = next(loader.iterate(0))
    finally:
        loader.close()
    assert batch["rgb"].shape == (3, 4, 3, 48, 48) and batch["rgb"].dtype == torch.float32
    assert 0 <= batch["rgb"].min() and batch["rgb"].max() <= 1
    assert batch["cls_gt"].shape == (3, 4, 1, 48, 48) and batch["cls_gt"].dtype == torch.int64
    assert batch["first_frame_gt"].shape == (3, 1, 3, 48, 48) and batch["first_frame_gt"].dtype == torch.int64
    assert batch["selector"].shape == (3, 3) and batch["selector"].dtype == torch.float32
    assert batch["num_objects"].shape == (3,) and batch["num_objects"].dtype == torch.int64
    for b in range(3):
        n = int(batch["num_objects"][b])
        assert batch["selector"][b].tolist() == [1.0] * n + [0.0] * (3 - n)
        for k in range(3):
            assert torch.equal(batch["first_frame_gt"][b, 0, k], (batch["cls_gt"][b, 0, 0] == k + 1).long())
        assert 0 < batch["cls_gt"][b].max() <= n
        assert batch["first_frame_gt"][b, 0, :n].flatten(1).any(1).all()  # every selected object is in frame 0


def test_main_ids_come_from_sources_and_images_stay_aligned(sources: Path) -> None:
    source = _source(sources, "main_training", _data_cfg(["two", "one"], []), MAIN)
    try:
        merged = checked = 0
        for g in range(12):
            recipe = source(g)
            _neutral_colours(recipe)
            rgb, cls_gt = render_recipe(recipe)
            ids = {(lay, src) for lay, src in recipe.info["objects"]}
            for layer, src in ids:  # source ids of the layer's dataset
                assert src in ({2, 5} if recipe.info["layers"][layer]["dataset"] == "two" else {7})
            assert set(np.unique(cls_gt)) <= set(range(recipe.num_objects + 1))
            assert cls_gt[0].any()
            merged += len(recipe.layers) == 2
            checked += _assert_aligned(recipe, rgb, lambda _layer, src: OBJECT_COLOURS[src])
        assert merged > 0 and checked > 1000
    finally:
        source.close()


def test_pre_training_alignment_with_tps_and_multi_object(sources: Path) -> None:
    source = _source(sources, "pre_training", _data_cfg([], ["stat"]), {**PRE, "num_objects": 3})
    try:
        saw_tps = saw_layers = checked = 0
        for g in range(10):
            recipe = source(g)
            _neutral_colours(recipe)
            rgb, cls_gt = render_recipe(recipe)
            assert rgb.shape == (3, 3, 40, 40) and cls_gt.shape == (3, 40, 40)
            assert recipe.num_objects <= 3 and cls_gt.max() <= recipe.num_objects
            saw_tps += any(lay.dense_maps is not None for lay in recipe.layers)
            saw_layers += len(recipe.layers) > 1
            checked += _assert_aligned(recipe, rgb, lambda _layer, _src: OBJECT_COLOURS[1])
        assert saw_tps and saw_layers and checked > 500
    finally:
        source.close()


def test_same_samples_across_workers_batch_sizes_and_ranks(sources: Path) -> None:
    data = _data_cfg(["two", "one"], [])

    def first_samples(workers: int, batch_size: int, rank: int = 0, world: int = 1, iters: int = 1):
        loader = _loader(
            sources, "main_training", data, MAIN, workers=workers, batch_size=batch_size, rank=rank, world=world
        )
        try:
            it = loader.iterate(0)
            batches = [next(it) for _ in range(iters)]
        finally:
            loader.close()
        return torch.cat([b["rgb"] for b in batches]), torch.cat([b["cls_gt"] for b in batches])

    rgb4, gt4 = first_samples(workers=0, batch_size=4)
    rgb2, gt2 = first_samples(workers=2, batch_size=2, iters=2)  # iterations 0, 1 = samples 0..3
    assert torch.equal(rgb4, rgb2) and torch.equal(gt4, gt2)
    rgb_r1, _ = first_samples(workers=0, batch_size=2, rank=1, world=2)  # rank 1 of 2 = samples 2, 3
    assert torch.equal(rgb_r1, rgb4[2:])
    loader = _loader(sources, "main_training", data, MAIN, batch_size=2)  # resume at iteration 1
    try:
        assert torch.equal(next(loader.iterate(1))["rgb"], rgb4[2:])
    finally:
        loader.close()


def test_curriculum_schedule_override_and_frame_gaps(sources: Path) -> None:
    assert [max_skip_at(i, [5, 10, 15, 5], [0.0, 0.1, 0.3, 0.8], 100) for i in (0, 9, 10, 29, 30, 79, 80)] == [
        5,
        5,
        10,
        10,
        15,
        15,
        5,
    ]
    source = _source(
        sources, "main_training", _data_cfg(["one"], []), {**MAIN, "merge_probability": 0.0}, batch_size=1, total=100
    )
    try:

        def gaps(indices):
            out = []
            for g in indices:
                frames = sorted(int(f[:5]) for f in source(g).info["layers"][0]["frames"])
                out.append(np.diff(frames).max())
            return np.array(out)

        assert source.max_skip_for(0) == 5 and source.max_skip_for(35) == 15
        early, mid = gaps(range(0, 10)), gaps(range(30, 40))  # batch 1: index = iteration
        assert early.max() <= 5 and mid.max() <= 15 and mid.max() > 5
        worker_copy = pickle.loads(pickle.dumps(source))  # what a live worker holds
        source.set_max_skip(1)
        assert worker_copy.skip_for_index(35) == 1
        assert gaps(range(30, 40)).max() == 1
        source.set_max_skip(None)
        assert worker_copy.skip_for_index(35) == 15
    finally:
        source.close()


def test_object_subsampling_and_merge_respect_num_objects(sources: Path) -> None:
    source = _source(sources, "main_training", _data_cfg(["five"], []), {**MAIN, "merge_probability": 1.0})
    try:
        for g in range(6):
            recipe = source(g)
            assert len(recipe.layers) == 1  # already >= num_objects objects: no merge
            assert recipe.num_objects == 3 and set(np.unique(recipe.cls_gt[0])) == {0, 1, 2, 3}
            assert len({src for _, src in recipe.info["objects"]}) == 3
    finally:
        source.close()
    source = _source(
        sources, "main_training", _data_cfg(["one"], []), {**MAIN, "num_objects": 2, "merge_probability": 1.0}
    )
    try:
        for g in range(6):
            recipe = source(g)
            assert len(recipe.layers) == 2 and recipe.alpha.shape == (1, 4, 48, 48)
            assert 1 <= recipe.num_objects <= 2 and recipe.cls_gt.max() <= 2
            assert {lay for lay, _ in recipe.info["objects"]} <= {0, 1}
    finally:
        source.close()


def test_empty_first_frames_are_never_the_first_frame(tmp_path: Path) -> None:
    make_video_dataset(str(tmp_path / "late"), videos=2, frames=10, size=(40, 60), object_ids=(1,), empty_first=5)
    listed = tmp_path / "empty.txt"
    listed.write_text("".join(f"video00{v}/0000{f}.png\n" for v in range(2) for f in range(5)))
    for empty_masks in (None, str(listed)):
        source = _source(
            tmp_path,
            "main_training",
            _data_cfg(["late"], [], empty_masks=empty_masks),
            {**MAIN, "merge_probability": 0.0},
        )
        try:
            for g in range(8):
                recipe = source(g)
                assert int(recipe.info["layers"][0]["frames"][0][:5]) >= 5 and recipe.cls_gt[0].any()
        finally:
            source.close()


def _corrupt(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "garbage":
        path.write_bytes(b"not an image at all")
    else:  # JPEG markers intact, entropy data destroyed: only the decoder notices
        path.write_bytes(data[:2] + b"\x00" * 64 + b"\xff\xd9")


def test_corrupt_files_are_skipped_counted_and_the_fraction_rule_raises(tmp_path: Path) -> None:
    make_video_dataset(str(tmp_path / "v"), videos=4, frames=6, size=(40, 60), object_ids=(1, 2))
    for f in range(1, 6):  # frame 0 stays readable: the index checks it up front
        _corrupt(tmp_path / f"v/Annotations/video001/{f:05d}.png", "garbage")
        _corrupt(tmp_path / f"v/JPEGImages/video002/{f:05d}.jpg", "decoder")
    data = _data_cfg(["v"], [])
    stage = {**MAIN, "merge_probability": 0.0, "seq_length": 3}
    loader = _loader(tmp_path, "main_training", data, stage, batch_size=4, max_bad=1.0)
    try:
        it = loader.iterate(0)
        for _ in range(5):
            batch = next(it)
            assert batch["cls_gt"][:, 0].flatten(1).any(1).all()
        assert loader.bad_samples > 0 and loader.total_samples == 20 + loader.bad_samples
        assert any("video001" in p and p.endswith(".png") for p in loader.recent_bad_paths)
        assert any("video002" in p and p.endswith(".jpg") for p in loader.recent_bad_paths)
    finally:
        loader.close()
    loader = _loader(tmp_path, "main_training", data, stage, batch_size=4, max_bad=0.01)
    try:
        it = loader.iterate(0)
        with pytest.raises(TooManyBadSamplesError, match=r"max_bad_sample_fraction=0.01.*video00[12]"):
            for _ in range(50):
                next(it)
    finally:
        loader.close()


def test_tps_identity_and_smoothness() -> None:
    pts = np.random.default_rng(0).uniform(0, 1, (12, 2))
    mx, my = tps_map(pts, pts, 32, 48)
    gy, gx = np.mgrid[0:32, 0:48]
    assert np.abs(mx - gx).max() < 1e-3 and np.abs(my - gy).max() < 1e-3
    moved = pts + np.random.default_rng(1).normal(0, 0.02, pts.shape)
    mx, my = tps_map(moved, pts, 32, 48)
    assert 0 < np.abs(mx - gx).mean() < 3 and np.abs(np.diff(mx, axis=1) - 1).max() < 0.5  # small, smooth


def test_transform_distributions(sources: Path) -> None:
    """One matrix per main clip covering 36-100% of the source area, flipped about half the time; pre-training
    frames each get their own matrix."""
    source = _source(sources, "main_training", _data_cfg(["two"], []), {**MAIN, "merge_probability": 0.0})
    try:
        dets = []
        for g in range(40):
            m = source(g).layers[0].matrices
            assert np.allclose(m, m[0]) and np.allclose(m[:, 2], [0, 0, 1])
            dets.append(np.linalg.det(m[0, :2, :2]))
        covered = np.abs(dets) * 48 * 48 / (60 * 90)  # source area seen by the 48x48 output
        assert covered.min() > 0.35 and covered.max() < 1.01
        assert 8 <= sum(d < 0 for d in dets) <= 32  # horizontal flips
    finally:
        source.close()
    source = _source(sources, "pre_training", _data_cfg([], ["stat"]), PRE)
    try:
        m = source(0).layers[0].matrices
        assert not np.allclose(m[0], m[1]) and not np.allclose(m[1], m[2])
    finally:
        source.close()


def test_reduced_size_decoding_matches_full_decoding(tmp_path: Path) -> None:
    """Large sources shrunk >= 2x by the warp are decoded at reduced size: same picture, slightly smoother."""
    make_static_dataset(str(tmp_path / "big"), images=3, sizes=(400, 500), texture=True)
    source = _source(tmp_path, "pre_training", _data_cfg([], ["big"]), {**PRE, "crop_size": [64, 64]})
    try:
        for g in range(3):
            recipe = source(g)
            fast, gt_fast = render_recipe(recipe)
            full, gt_full = render_recipe(recipe, reduced_decode=False)
            assert np.array_equal(gt_fast, gt_full)
            assert np.abs(fast - full).mean() < 4 / 255
    finally:
        source.close()


def _colour_reference(x: np.ndarray, b: float, c: float, s: float, grey: bool) -> np.ndarray:
    """recipe.py's colour contract in float, clamping after each step (x: H*W*3 uint8 RGB)."""
    x = x.astype(np.float64) / 255
    luma = np.array([0.299, 0.587, 0.114])
    m = (x @ luma).mean()
    x = np.clip(b * (m + c * (x - m)), 0, 1)
    g = (x @ luma)[..., None]
    x = np.clip(g + s * (x - g), 0, 1)
    if grey:
        x = np.repeat((x @ luma)[..., None], 3, axis=2)
    return x * 255


def test_colour_steps_follow_the_recipe_contract() -> None:
    from cutie.data.render.cpu import _colour

    rng = np.random.default_rng(0)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8), (5, 5), 2)
    rgba = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    for b, c, s, grey in [(1.2, 1.05, 1.08, False), (0.8, 0.95, 0.9, False), (1.1, 1.0, 0.95, True), (1, 1, 1, False)]:
        got = _colour(rgba, b, c, s, grey)
        assert got.shape == (40, 50, 3) and got.dtype == np.uint8
        diff = np.abs(got - _colour_reference(rgb, b, c, s, grey))
        assert diff.max() <= 1.5, (b, c, s, grey, diff.max())  # uint8 rounding of the two steps
        region = _colour(rgba, b, c, s, grey, region=(5, 7, 20, 10))  # statistics from the whole frame
        assert np.array_equal(region, got[7:17, 5:25])


def test_merged_layers_blend_only_inside_the_pasted_alpha(sources: Path) -> None:
    from cutie.data.render.cpu import render_layer, render_recipe_uint8

    source = _source(sources, "main_training", _data_cfg(["two", "one"], []), MAIN)
    try:
        merged = 0
        for g in range(16):
            recipe = source(g)
            if len(recipe.layers) < 2:
                continue
            merged += 1
            got = render_recipe_uint8(recipe).transpose(0, 2, 3, 1).astype(np.float32)  # T*H*W*3
            base, top = (np.stack(render_layer(layer, recipe.out_size)).astype(np.float32) for layer in recipe.layers)
            a = recipe.alpha[0][..., None]  # T*H*W*1
            assert np.abs(got - (a * top + (1 - a) * base)).max() <= 1.0
            assert np.array_equal(got[recipe.alpha[0] == 0], base[recipe.alpha[0] == 0])
        assert merged > 0
    finally:
        source.close()


_GROUP_SIGNAL = """
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[2])
from test_data_loader import MAIN, _data_cfg, _loader
requested = []
signal.signal(signal.SIGTERM, lambda *_: requested.append(1))  # the trainer's stop request (training/signals.py)
loader = _loader(Path(sys.argv[1]), "main_training", _data_cfg(["two"], []), MAIN, workers=1)
batches = loader.iterate(0)
next(batches)
os.killpg(os.getpgrp(), signal.SIGTERM)  # what torchrun sends its workers on SIGTERM / Ctrl-C
for _ in range(4):
    next(batches)
loader.close()
print("requested", len(requested))
"""


def test_a_signal_to_the_trainers_process_group_leaves_the_loader_workers_running(sources: Path) -> None:
    """torchrun stops a trainer by signalling its whole process group: the loader workers must not die of it
    (the trainer would fail on its next batch, 'DataLoader worker ... killed by signal', instead of saving a
    checkpoint at the step boundary); the trainer alone handles the request."""
    import os
    import subprocess
    import sys

    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-c", _GROUP_SIGNAL, str(sources), tests],
        capture_output=True, text=True, start_new_session=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("requested 1")


def test_how_a_dead_worker_ended_is_named_with_its_usual_cause():
    from cutie.data.loaders.worker_watch import how_it_ended

    assert how_it_ended(41, -9) == "pid 41 killed by SIGKILL (usually the kernel's out-of-memory killer: see dmesg)"
    assert how_it_ended(41, -7).startswith("pid 41 killed by SIGBUS (usually /dev/shm full")
    assert how_it_ended(41, -11) == "pid 41 killed by SIGSEGV" and how_it_ended(41, -40) == "pid 41 killed by signal 40"
    assert how_it_ended(41, 1) == "pid 41 exited with code 1" and how_it_ended(41, None) == "pid 41 ended"
