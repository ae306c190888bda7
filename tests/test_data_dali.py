"""DALI backend (CPU, device_id=None): same pixels as the torch renderer, exact masks, deterministic, batch dicts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cutie.data.loaders import build as loader_mod

# DALI is a dependency, not an option: a broken import fails here, it is never skipped.
from cutie.data.loaders import dali_loader
from cutie.data.loaders.dali_loader import DaliClipLoader, DaliSampleSource
from cutie.data.render import cpu as render
from cutie.data.render.dali_graph import OUTPUT_NAMES, SourceLayout, build_pipeline, jpeg_problem, pack_recipe
from cutie.data.sampling.recipe import ClipRecipe, ImageLayer

T, H, W = 3, 48, 64
SRC_H, SRC_W = 60, 90


def _jpeg(seed: int) -> bytes:
    """A smooth random colour image (JPEG-friendly, so decoders agree), as JPEG bytes."""
    r = np.random.default_rng(seed)
    img = cv2.resize((r.random((6, 9, 3)) * 255).astype(np.uint8), (SRC_W, SRC_H), interpolation=cv2.INTER_CUBIC)
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return enc.tobytes()


def _affine(r: np.random.Generator, flip: bool) -> np.ndarray:
    """Output -> source: rotation, scale, shift, optional horizontal flip (affine, as the sampler emits)."""
    a, s = r.uniform(-0.5, 0.5), r.uniform(0.7, 1.4)
    m = np.array(
        [
            [s * np.cos(a), -s * np.sin(a), r.uniform(-5, 25)],
            [s * np.sin(a), s * np.cos(a), r.uniform(-5, 15)],
            [0, 0, 1.0],
        ]
    )
    if flip:
        m = m @ np.array([[-1.0, 0, W - 1], [0, 1, 0], [0, 0, 1]])
    return m


def _dense(r: np.random.Generator) -> np.ndarray:
    """A smooth non-affine map (stands in for a thin-plate spline): T*H*W*2 source (x, y)."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    maps = []
    for _ in range(T):
        ph = r.uniform(0, 6)
        maps.append(np.stack([xs * 1.3 + 4 * np.sin(ys / 6 + ph) - 3, ys * 1.2 + 3 * np.cos(xs / 7 + ph)], -1))
    return np.stack(maps).astype(np.float32)


def _layer(
    r: np.random.Generator, dense: bool = False, grey: bool = False, same_image: bool = False, hue: bool = False
) -> ImageLayer:
    jpegs = [_jpeg(int(r.integers(1 << 30)))] * T if same_image else [_jpeg(int(r.integers(1 << 30))) for _ in range(T)]
    return ImageLayer(
        jpegs=jpegs,
        matrices=np.stack([_affine(r, flip=bool(t % 2)) for t in range(T)]),
        brightness=r.uniform(0.7, 1.3, T).astype(np.float32),
        contrast=r.uniform(0.7, 1.3, T).astype(np.float32),
        saturation=r.uniform(0.6, 1.0, T).astype(np.float32),
        grayscale=np.array([grey and t == 1 for t in range(T)]),
        dense_maps=_dense(r) if dense else None,
        hue=np.full(T, r.uniform(-0.05, 0.05), np.float32) if hue else None,  # pre-training: one per clip
        blur=np.array([0.0, *r.uniform(0.1, 1.5, T - 1)], np.float32),  # none, then 3- to 9-tap Gaussians
    )


def make_recipe(kind: str, seed: int) -> ClipRecipe:
    """Recipes of every shape the sampler makes: plain, merged (soft alpha), dense-map, multi-layer (hard alpha);
    the pre-training shapes (dense, multi) with a hue step, multi with one matrix layer that has it too."""
    r = np.random.default_rng(seed)
    if kind == "plain":
        layers = [_layer(r, grey=True)]
    elif kind == "merge":
        layers = [_layer(r), _layer(r, grey=True)]
    elif kind == "dense":
        layers = [_layer(r, dense=True, grey=True, same_image=True, hue=True)]
    elif kind == "multi":
        layers = [_layer(r, dense=k != 1, same_image=True, hue=True) for k in range(3)]
    else:
        raise ValueError(kind)
    alpha = None
    if len(layers) > 1:
        if kind == "merge":
            alpha = cv2.GaussianBlur(r.random((T, H, W)).astype(np.float32), (5, 5), 2)[None]
        else:
            alpha = (r.random((len(layers) - 1, T, H, W)) < 0.3).astype(np.float32)
    for k, layer in enumerate(layers):
        layer.source_paths = [f"s{seed}/l{k}/{t}.jpg" for t in range(T)]
    return ClipRecipe(
        layers=layers,
        alpha=alpha,
        cls_gt=r.integers(0, 3, (T, H, W)).astype(np.uint8),
        num_objects=int(1 + seed % 3),
        out_size=(H, W),
        info={"bad_paths": ["mask.png"] if seed % 4 == 3 else [], "attempt": 0},
    )


KINDS = ["plain", "merge", "dense", "multi"]


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


class FakeRecipeSource:
    """Picklable `source(global index, attempt) -> ClipRecipe` (the real one: cutie.data.source.RecipeSource).
    With `corrupt`, the first draw of those indices carries a truncated JPEG; replacements are fine."""

    def __init__(self, corrupt: tuple[int, ...] = ()) -> None:
        self.corrupt = set(corrupt)

    def __call__(self, index: int, attempt: int = 0) -> ClipRecipe:
        kind = KINDS[index % len(KINDS)] if attempt == 0 else "plain"
        recipe = make_recipe(kind, index + 1000 * attempt)
        recipe.info["attempt"] = attempt
        if index in self.corrupt and attempt == 0:
            layer = recipe.layers[0]
            layer.jpegs[1] = _truncated(layer.jpegs[1])
            layer.source_paths[1] = f"corrupt{index}.jpg"
        return recipe

    def max_skip_for(self, iteration: int) -> int:
        return 5 + iteration

    def close(self) -> None:
        pass


LAYOUT = SourceLayout(T, (H, W), max_layers=3)


def _run(source, batch_size: int, iterations: int, **kw) -> dict[str, list[np.ndarray]]:
    pipe = build_pipeline(source, LAYOUT, batch_size=batch_size, device_id=None, **kw)
    got: dict[str, list[np.ndarray]] = {n: [] for n in OUTPUT_NAMES}
    for _ in range(iterations):
        outs = pipe.run()
        for name, tl in zip(OUTPUT_NAMES, outs, strict=True):
            got[name] += [np.array(tl[j]) for j in range(batch_size)]
    del pipe
    return got


def test_warp_uses_opencv_pixel_centres() -> None:
    """Identity colour: the graph's warp equals cv2.warpAffine with WARP_INVERSE_MAP (the sampler's convention)."""
    r = np.random.default_rng(0)
    layer = _layer(r)
    layer.brightness[:] = 1
    layer.contrast[:] = 1
    layer.saturation[:] = 1
    layer.hue, layer.blur = None, None
    recipe = ClipRecipe(
        layers=[layer], alpha=None, cls_gt=np.zeros((T, H, W), np.uint8), num_objects=1, out_size=(H, W)
    )
    layout = SourceLayout(T, (H, W), 1)
    packed = pack_recipe(recipe, layout)
    pipe = build_pipeline(lambda info: packed, layout, batch_size=1, device_id=None, num_threads=1, parallel=False)
    rgb = np.array(pipe.run()[0][0])  # T*3*H*W uint8
    for t in range(T):
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(layer.jpegs[t], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        ref = cv2.warpAffine(
            img,
            layer.matrices[t][:2],
            (W, H),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(124, 116, 104),
        )
        diff = np.abs(rgb[t].transpose(1, 2, 0).astype(np.float32) - ref)
        # OpenCV's uint8 bilinear uses 1/32-pixel fixed point; a half-pixel convention error is ~5x larger on average.
        assert diff.mean() < 0.3 and diff.max() <= 3.0, (t, diff.mean(), diff.max())


@pytest.fixture(scope="module")
def dali_out() -> dict[str, list[np.ndarray]]:
    src = DaliSampleSource(FakeRecipeSource(), LAYOUT, batch_size=4)
    return _run(src, batch_size=4, iterations=2, num_threads=1, py_num_workers=1)


def test_matches_torch_renderer(dali_out) -> None:
    """Every recipe shape (flips, rotations, grayscale frames, hue, blur, merge, dense maps, multi-layer): masks
    identical; images within mean 0.3/255 and max 3/255 of render_recipe (both decode with libjpeg-turbo and round
    to uint8 after each step; they differ in bilinear and blur fixed point, grey weights and the alpha's 1/255
    steps)."""
    assert [int(i) for i in dali_out["index"]] == list(range(8))
    for g in range(8):
        recipe = FakeRecipeSource()(g)
        ref_rgb, ref_gt = render.render_recipe(recipe, reduced_decode=False)
        rgb = dali_out["rgb"][g]
        assert rgb.shape == (T, 3, H, W) and rgb.dtype == np.uint8
        np.testing.assert_array_equal(dali_out["cls_gt"][g], ref_gt)
        diff = np.abs(rgb.astype(np.float32) - ref_rgb * 255)
        assert diff.mean() < 0.3 and diff.max() <= 3.0, (KINDS[g % 4], diff.mean(), diff.max())
        assert int(dali_out["num_objects"][g]) == recipe.num_objects
        assert dali_out["bad_paths"][g].tobytes().decode() == "\n".join(recipe.info["bad_paths"])


def test_deterministic_across_threads_workers_and_batch(dali_out) -> None:
    """Samples depend only on the global index: other threads, workers and batch size give the same bytes."""
    src = DaliSampleSource(FakeRecipeSource(), LAYOUT, batch_size=2)
    other = _run(src, batch_size=2, iterations=4, num_threads=2, py_num_workers=2)
    assert [int(i) for i in other["index"]] == [int(i) for i in dali_out["index"]]
    for a, b in zip(other["rgb"], dali_out["rgb"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_global_index_follows_rank_and_start_iteration() -> None:
    src = DaliSampleSource(FakeRecipeSource(), LAYOUT, batch_size=2, rank=1, world_size=3, start_iteration=5)
    # iteration 5 of rank 1: 5 * 2 * 3 + 1 * 2 + slot
    assert [src.global_index(0, j) for j in range(2)] == [32, 33]
    assert [src.global_index(1, j) for j in range(2)] == [38, 39]
    loader = DaliClipLoader(
        FakeRecipeSource(),
        num_objects=3,
        batch_size=2,
        rank=1,
        world_size=3,
        device=torch.device("cpu"),
        num_workers=1,
        seq_length=T,
        crop_size=(H, W),
        max_layers=3,
    )
    assert [src.global_index(2, j) for j in range(2)] == loader.indices_of(7)  # the torch backend's rule


def test_jpeg_screen() -> None:
    good = _jpeg(1)
    assert jpeg_problem(good) is None
    assert "truncated" in jpeg_problem(_truncated(good))
    assert "start-of-image" in jpeg_problem(b"GIF89a" + good)
    sos = good.find(b"\xff\xda")
    broken = bytearray(good)
    broken[sos + 40 : sos + 42] = b"\xff\x42"  # an invalid marker inside the image data
    assert "invalid marker" in jpeg_problem(bytes(broken))


def _loader(source, **kw) -> DaliClipLoader:
    return DaliClipLoader(
        source,
        num_objects=3,
        batch_size=2,
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
        num_workers=1,
        num_threads=1,
        seq_length=T,
        crop_size=(H, W),
        max_layers=3,
        **kw,
    )


def test_loader_batches_and_bad_sample_accounting() -> None:
    """TrainLoader's batch dict; corrupt JPEGs are screened in the source, replaced and counted like the torch
    backend (a truncated JPEG would fail the whole DALI batch)."""
    loader = _loader(FakeRecipeSource(corrupt=(5,)))
    try:
        batches = loader.iterate(start_iteration=1)  # global indices 2, 3, then 4, 5
        first, second = next(batches), next(batches)
        assert first["rgb"].shape == (2, T, 3, H, W) and first["rgb"].dtype == torch.float32
        assert 0.0 <= float(first["rgb"].min()) and float(first["rgb"].max()) <= 1.0
        assert first["cls_gt"].shape == (2, T, 1, H, W) and first["cls_gt"].dtype == torch.int64
        assert first["first_frame_gt"].shape == (2, 1, 3, H, W) and first["first_frame_gt"].dtype == torch.int64
        assert torch.equal(first["first_frame_gt"][:, 0, 1], (first["cls_gt"][:, 0, 0] == 2).long())
        assert first["selector"].tolist() == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]  # 3 and 1 objects
        assert first["num_objects"].tolist() == [3, 1]
        assert torch.equal(second["cls_gt"][0, :, 0], torch.from_numpy(make_recipe("plain", 4).cls_gt).long())
        replacement = FakeRecipeSource()(5, attempt=1)
        assert torch.equal(second["cls_gt"][1, :, 0], torch.from_numpy(replacement.cls_gt).long())
        # index 3 skipped a mask file in the sampler; index 5's first draw had a truncated JPEG
        assert loader.bad_samples == 2 and loader.total_samples == 6
        assert set(loader.recent_bad_paths) == {"mask.png", "corrupt5.jpg"}
        assert loader.max_skip_for(2) == 7
    finally:
        loader.close()


def test_loader_recovers_from_a_decode_failure_inside_dali(monkeypatch) -> None:
    """A file that passes the screen but fails in DALI's decoder: found, blocked, the pipeline restarts at the same
    iteration and the batches go on (the forked source workers inherit the blinded screen)."""
    monkeypatch.setattr(dali_loader, "jpeg_problem", lambda data: None)
    loader = _loader(FakeRecipeSource(corrupt=(1,)))
    try:
        batches = loader.iterate(start_iteration=0)
        first = next(batches)
        assert loader.blocked == {"corrupt1.jpg"} and "corrupt1.jpg" in loader.recent_bad_paths
        replacement = FakeRecipeSource()(1, attempt=1)
        assert torch.equal(first["cls_gt"][1, :, 0], torch.from_numpy(replacement.cls_gt).long())
        assert next(batches)["rgb"].shape == (2, T, 3, H, W)
    finally:
        loader.close()


@pytest.mark.parametrize("stage", ["pre_training", "main_training"])
def test_build_train_loader_dali_on_tiny_data(stage: str, tiny_data, repo_root, tmp_path) -> None:
    """backend='dali' through the trainer's entry point on the generated dataset: the batch contract, the clip
    layout read from the recipe source, and the same pixels/masks as the torch renderer for the same indices."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(repo_root / "cutie" / "config"), version_base="1.3"):
        cfg = compose(config_name="train_config", overrides=["data=tiny", f"data_root={tiny_data}"])
    st = cfg[stage]
    loader = loader_mod.build_train_loader(
        cfg.data, st, stage=stage, data_root=str(tiny_data), cache_root=str(tmp_path), seed=3, rank=0, world_size=1,
        batch_size=2, num_workers=1, device=torch.device("cpu"), backend="dali", total_iterations=10,
    )  # fmt: skip
    try:
        assert isinstance(loader, DaliClipLoader)
        t, (h, w), o = int(st.seq_length), tuple(st.crop_size), int(st.num_objects)
        batch = next(loader.iterate(4))
        assert batch["rgb"].shape == (2, t, 3, h, w) and batch["rgb"].dtype == torch.float32
        assert batch["first_frame_gt"].shape == (2, 1, o, h, w) and batch["cls_gt"].shape == (2, t, 1, h, w)
        assert batch["selector"].shape == (2, o) and batch["num_objects"].dtype == torch.int64
        for j, g in enumerate(loader.indices_of(4)):
            ref_rgb, ref_gt = render.render_recipe(loader.source(g), reduced_decode=False)
            np.testing.assert_array_equal(batch["cls_gt"][j, :, 0].numpy(), ref_gt)
            diff = np.abs(batch["rgb"][j].numpy() - ref_rgb) * 255
            assert diff.mean() < 0.3 and diff.max() <= 3.0 + 1e-3, (g, diff.mean(), diff.max())  # float of 3 levels
    finally:
        loader.close()


class SkipEchoSource(FakeRecipeSource):
    """Writes the live max-skip override into every mask, to see what the DALI source workers read."""

    def __init__(self) -> None:
        super().__init__()
        from cutie.data.sampling.source import SharedInt

        self.override = SharedInt(1)

    def __call__(self, index: int, attempt: int = 0) -> ClipRecipe:
        recipe = make_recipe("plain", index)
        recipe.cls_gt[:] = self.override.get()
        return recipe

    def set_max_skip(self, value: int | None) -> None:
        self.override.set(value)

    def close(self) -> None:
        self.override.close()


def test_max_skip_override_reaches_running_source_workers() -> None:
    loader = _loader(SkipEchoSource())
    try:
        batches = loader.iterate(0)
        assert int(next(batches)["cls_gt"].max()) == 1
        loader.set_max_skip(2)  # workers already run: no rebuild
        seen = [int(next(batches)["cls_gt"].max()) for _ in range(8)]
        assert seen[-1] == 2 and seen == sorted(seen), seen  # after what was prefetched before the change
    finally:
        loader.close()


def test_gpu_graph_is_defined_with_the_same_code(monkeypatch) -> None:
    """No GPU here: the GPU variant of the graph (mixed decoders, .gpu()/.cpu() moves inside the conditionals) is
    at least defined and placed: frames and masks on the GPU, the other outputs on the CPU. Not built or run."""
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.pipeline import do_not_convert

    from cutie.data.render.dali_graph import clip_graph

    devices = []
    decoders = []  # the decoders' arguments: nvJPEG must upsample chroma as the CPU decoders do
    original = fn.decoders.image

    @do_not_convert  # called inside the conditionals' graph: not for DALI's AutoGraph
    def recording(*a, **k):
        decoders.append(k)
        return original(*a, **k)

    monkeypatch.setattr(fn.decoders, "image", recording)

    @pipeline_def(enable_conditionals=True)
    def gpu_pipe():
        out = clip_graph(DaliSampleSource(FakeRecipeSource(), LAYOUT, 2), LAYOUT, gpu=True, parallel=False)
        devices.extend(node.device for node in out)
        return out

    gpu_pipe(batch_size=2, num_threads=1, device_id=0)  # defines the graph; build() would need CUDA
    assert devices == ["gpu", "gpu", "cpu", "cpu", "cpu"]  # rgb, cls_gt on the device; the rest on the host
    assert decoders and all(k["device"] == "mixed" and k.get("jpeg_fancy_upsampling") for k in decoders)


_GROUP_SIGNAL = """
import os
import signal
import sys
import time

sys.path.insert(0, sys.argv[2])
from test_data_dali import FakeRecipeSource, _loader
from cutie.training.signals import StopSignals

with StopSignals() as stop:  # as in training: the loader is built inside the trainer's stop handler
    loader = _loader(FakeRecipeSource(), start_method=sys.argv[1])
    batches = loader.iterate(0)
    next(batches)
    workers = os.popen(f"pgrep -P {os.getpid()}").read().split()
    os.killpg(os.getpgrp(), signal.SIGTERM)  # what torchrun sends its workers on SIGTERM / Ctrl-C
    time.sleep(1)
    for _ in range(4):
        next(batches)
    print("requested", stop.requested, "workers", " ".join(workers), flush=True)
    if sys.argv[3] == "die":  # the trainer killed outright: its workers must not live on
        os.kill(os.getpid(), signal.SIGKILL)
    loader.close()
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_signal_to_the_trainers_process_group_leaves_the_source_workers_running(start_method: str) -> None:
    """torchrun stops a trainer by signalling its whole process group. DALI's Python workers must not die of it
    (the trainer's next batch failed with 'Worker data receiving interrupted' instead of the checkpoint being
    saved at the step boundary; with spawn, the start method once CUDA is initialized, i.e. on every GPU). Out of
    the group, they still die with the trainer."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), tests])}
    for end in ("close", "die"):
        proc = subprocess.run(
            [sys.executable, "-c", _GROUP_SIGNAL, start_method, tests, end],
            capture_output=True, text=True, start_new_session=True, env=env, timeout=600,
        )  # fmt: skip
        assert proc.stdout.startswith("requested True workers "), proc.stdout + proc.stderr[-3000:]
        workers = [int(p) for p in proc.stdout.split("workers")[1].split()]
        assert workers, proc.stdout
        if end == "close":
            assert proc.returncode == 0, proc.stderr[-3000:]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
            time.sleep(0.2)
        assert not any(Path(f"/proc/{p}").exists() for p in workers), f"workers {workers} outlived the trainer"


_WORKER_KILLED = """
import multiprocessing, os, signal, sys, time
sys.path.insert(0, sys.argv[2])
from test_data_dali import FakeRecipeSource, _loader
from cutie.data.loaders.base import LoaderFailure

loader = _loader(FakeRecipeSource(), start_method=sys.argv[1])
batches = loader.iterate(0)
next(batches)
next(batches)
(worker,) = multiprocessing.active_children()  # num_workers=1
os.kill(worker.pid, signal.SIGKILL)  # as the kernel's out-of-memory killer does
t0 = time.monotonic()
try:
    for _ in range(50):
        next(batches)
    print("no failure")
except LoaderFailure as e:
    print(f"failure after {time.monotonic() - t0:.1f}s: {e}", flush=True)
loader.close()
print("closed", flush=True)
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_source_worker_killed_is_a_loader_failure_not_a_hang(start_method: str) -> None:
    """A DALI Python worker SIGKILLed left the trainer blocked for ever inside DALI (its task queue's
    multiprocessing Condition waits for the dead sleeper): the job hung until its time limit. Now the next batch
    raises LoaderFailure naming the worker, and the loader still closes (the stage then saves its checkpoint:
    tests/test_train_step_failures.py)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), tests])}
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER_KILLED, start_method, tests],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )  # fmt: skip  (the timeout is the hang check)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    first, second = proc.stdout.splitlines()[-2:]
    assert first.startswith("failure after ") and second == "closed", proc.stdout
    assert ": data loader worker(s) ended during training: pid " in first
    assert "killed by SIGKILL (usually the kernel's out-of-memory killer" in first and "num_workers (now 1)" in first
