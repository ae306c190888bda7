"""DALI backend (CPU, device_id=None): same pixels as the torch renderer, exact masks, deterministic, batch dicts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from cutie.data.dali_loader import DaliClipLoader, DaliSampleSource, make_batch  # noqa: E402
from cutie.data.dali_pipeline import OUTPUT_NAMES, SourceLayout, build_pipeline, pack_recipe  # noqa: E402
from cutie.data.recipe import ClipRecipe, ImageLayer  # noqa: E402

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


def _layer(r: np.random.Generator, dense: bool = False, grey: bool = False, same_image: bool = False) -> ImageLayer:
    jpegs = [_jpeg(int(r.integers(1 << 30)))] * T if same_image else [_jpeg(int(r.integers(1 << 30))) for _ in range(T)]
    return ImageLayer(
        jpegs=jpegs,
        matrices=np.stack([_affine(r, flip=bool(t % 2)) for t in range(T)]),
        brightness=r.uniform(0.7, 1.3, T).astype(np.float32),
        contrast=r.uniform(0.7, 1.3, T).astype(np.float32),
        saturation=r.uniform(0.6, 1.0, T).astype(np.float32),
        grayscale=np.array([grey and t == 1 for t in range(T)]),
        dense_maps=_dense(r) if dense else None,
    )


def make_recipe(kind: str, seed: int) -> ClipRecipe:
    """Recipes of every shape the sampler makes: plain, merged (soft alpha), dense-map, multi-layer (hard alpha)."""
    r = np.random.default_rng(seed)
    if kind == "plain":
        layers = [_layer(r, grey=True)]
    elif kind == "merge":
        layers = [_layer(r), _layer(r, grey=True)]
    elif kind == "dense":
        layers = [_layer(r, dense=True, grey=True, same_image=True)]
    elif kind == "multi":
        layers = [_layer(r, dense=True, same_image=True) for _ in range(3)]
    else:
        raise ValueError(kind)
    alpha = None
    if len(layers) > 1:
        if kind == "merge":
            alpha = cv2.GaussianBlur(r.random((T, H, W)).astype(np.float32), (5, 5), 2)[None]
        else:
            alpha = (r.random((len(layers) - 1, T, H, W)) < 0.3).astype(np.float32)
    cls_gt = r.integers(0, 3, (T, H, W)).astype(np.uint8)
    return ClipRecipe(
        layers=layers,
        alpha=alpha,
        cls_gt=cls_gt,
        num_objects=int(1 + seed % 3),
        out_size=(H, W),
        info={"bad_paths": ["x.jpg"] if seed % 4 == 3 else []},
    )


KINDS = ["plain", "merge", "dense", "multi"]


class FakeRecipeSource:
    """Picklable `global index -> ClipRecipe` (the real one is cutie.data.source.RecipeSource)."""

    def __call__(self, index: int) -> ClipRecipe:
        return make_recipe(KINDS[index % len(KINDS)], index)

    def max_skip_for(self, iteration: int) -> int:
        return 5 + iteration


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
    recipe = ClipRecipe(
        layers=[layer], alpha=None, cls_gt=np.zeros((T, H, W), np.uint8), num_objects=1, out_size=(H, W)
    )
    layout = SourceLayout(T, (H, W), 1)
    packed = pack_recipe(recipe, layout)
    pipe = build_pipeline(lambda info: packed, layout, batch_size=1, device_id=None, num_threads=1, parallel=False)
    rgb = np.array(pipe.run()[0][0])  # T*3*H*W
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
        diff = np.abs(rgb[t].transpose(1, 2, 0) * 255 - ref)
        # OpenCV's uint8 bilinear uses 1/32-pixel fixed point; a half-pixel convention error would be ~10x larger.
        assert diff.mean() < 0.5 and diff.max() <= 3.0, (t, diff.mean(), diff.max())


@pytest.fixture(scope="module")
def dali_out() -> dict[str, list[np.ndarray]]:
    src = DaliSampleSource(FakeRecipeSource(), LAYOUT, batch_size=4)
    return _run(src, batch_size=4, iterations=2, num_threads=1, py_num_workers=1)


def test_matches_torch_renderer(dali_out) -> None:
    """Every recipe shape: masks identical; images within mean 0.6/255 and max 2.5/255 of render_recipe (the torch
    backend rounds to uint8 after each colour step and at the blend; DALI stays in float after the warp)."""
    render = pytest.importorskip("cutie.data.render")
    assert dali_out["index"] == list(range(8))
    for g in range(8):
        recipe = FakeRecipeSource()(g)
        ref_rgb, ref_gt = render.render_recipe(recipe, reduced_decode=False)
        rgb = dali_out["rgb"][g]
        assert rgb.shape == (T, 3, H, W) and rgb.dtype == np.float32
        np.testing.assert_array_equal(dali_out["cls_gt"][g], ref_gt)
        diff = np.abs(rgb - ref_rgb) * 255
        assert diff.mean() < 0.6 and diff.max() <= 2.5, (KINDS[g % 4], diff.mean(), diff.max())
        assert int(dali_out["num_objects"][g]) == recipe.num_objects
        assert int(dali_out["bad_samples"][g]) == len(recipe.info["bad_paths"])


def test_deterministic_across_threads_workers_and_batch(dali_out) -> None:
    """Samples depend only on the global index: other threads, workers and batch size give the same bytes."""
    src = DaliSampleSource(FakeRecipeSource(), LAYOUT, batch_size=2)
    other = _run(src, batch_size=2, iterations=4, num_threads=2, py_num_workers=2)
    assert other["index"] == dali_out["index"]
    for a, b in zip(other["rgb"], dali_out["rgb"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_global_index_follows_rank_and_start_iteration() -> None:
    src = DaliSampleSource(FakeRecipeSource(), LAYOUT, batch_size=2, rank=1, world_size=3, start_iteration=5)
    # iteration 5 of rank 1: 5 * 2 * 3 + 1 * 2 + slot
    assert [src.global_index(0, j) for j in range(2)] == [32, 33]
    assert [src.global_index(1, j) for j in range(2)] == [38, 39]


def test_make_batch_layout() -> None:
    cls_gt = torch.tensor([[[[0, 1], [2, 3]]] * T, [[[1, 1], [0, 0]]] * T], dtype=torch.uint8)  # B*T*H*W
    rgb = torch.rand(2, T, 3, 2, 2)
    b = make_batch(rgb, cls_gt, torch.tensor([3, 1], dtype=torch.int32), 3, torch.device("cpu"))
    assert b["rgb"].dtype == torch.float32 and b["rgb"].shape == (2, T, 3, 2, 2)
    assert b["cls_gt"].dtype == torch.int64 and b["cls_gt"].shape == (2, T, 1, 2, 2)
    assert b["first_frame_gt"].dtype == torch.int64 and b["first_frame_gt"].shape == (2, 1, 3, 2, 2)
    assert b["first_frame_gt"][0, 0, :, 0, 1].tolist() == [1, 0, 0]
    assert b["first_frame_gt"][0, 0, :, 1, 1].tolist() == [0, 0, 1]
    assert b["selector"].tolist() == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert b["num_objects"].dtype == torch.int64 and b["num_objects"].tolist() == [3, 1]


def test_loader_yields_batches_and_counts_bad_samples() -> None:
    loader = DaliClipLoader(
        FakeRecipeSource(),
        batch_size=2,
        seq_length=T,
        crop_size=(H, W),
        num_objects=3,
        max_layers=3,
        num_threads=1,
        num_workers=1,
    )
    try:
        batches = loader.iterate(start_iteration=1)  # global indices 2, 3 then 4, 5
        first, second = next(batches), next(batches)
        assert first["rgb"].shape == (2, T, 3, H, W) and first["rgb"].dtype == torch.float32
        assert first["first_frame_gt"].shape == (2, 1, 3, H, W)
        assert first["num_objects"].tolist() == [make_recipe("dense", 2).num_objects, 1]
        assert torch.equal(second["cls_gt"][0, :, 0], torch.from_numpy(make_recipe("plain", 4).cls_gt).long())
        assert loader.bad_samples == 1  # index 3 reported one replaced file
        assert loader.max_skip_for(2) == 7
    finally:
        loader.close()
