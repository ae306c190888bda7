"""Evaluation entry point (cutie/eval.py), dataset config resolution and validation during training."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _damage import truncated_jpeg, wrong_size_mask
from hydra import compose, initialize_config_dir
from PIL import Image

from cutie.config.evaluation import parse_eval_config
from cutie.data.index.datasets import summarize
from cutie.data.index.scan import scan_val_dataset, val_paths
from cutie.inference import validate
from cutie.inference.dataset_eval import EvalConfigError, resolve_dataset
from cutie.inference.video_io import list_videos
from cutie.metrics import evaluate_folders
from cutie.model import build_network, load_model_config
from cutie.testing.weights_rule import load_weights_rule
from cutie.utils.paths import PathEscapeError

REPO = Path(__file__).resolve().parents[1]
DAVIS_VAL = Path("DAVIS/2017/trainval")


@pytest.fixture(scope="module")
def small_net() -> torch.nn.Module:
    net = build_network(load_model_config("small"))
    rule = load_weights_rule(REPO.parent / "shared" / "reference")
    net.load_state_dict(rule.fill_state_dict(net.state_dict(), seed=7))
    return net


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "cutie" / "config"), version_base="1.3"):
        return parse_eval_config(compose(config_name="eval_config", overrides=overrides))


def test_dataset_resolution_and_clear_errors(tmp_path: Path) -> None:
    cfg = _compose(["dataset=d17-val", f"data_root={tmp_path}"])
    with pytest.raises(EvalConfigError, match="image_directory .*DAVIS/2017/trainval/JPEGImages/480p.*data_root"):
        resolve_dataset(cfg)
    with pytest.raises(EvalConfigError, match="custom needs image_directory=DIR"):
        resolve_dataset(_compose(["dataset=custom"]))
    with pytest.raises(EvalConfigError, match="dataset=nope is unknown"):
        resolve_dataset(_compose(["dataset=nope"]))
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    spec = resolve_dataset(
        _compose(
            [
                "dataset=custom",
                f"image_directory={tmp_path / 'img'}",
                f"mask_directory={tmp_path / 'ann'}",
                "mem_every=3",
            ]
        )  # fmt: skip
    )
    assert spec.mem_every == 3 and spec.subset is None and spec.evaluate == "auto" and spec.size == -1
    y19 = _compose(["dataset=y19-val", "data_root=/data"]).datasets["y19-val"]
    assert y19.use_all_masks and not y19.save_all and y19.json_directory == "/data/YouTube/valid/meta.json"


def test_validate_matches_folder_evaluation_and_restores_mode(
    tiny_data: Path, small_net: torch.nn.Module, tmp_path: Path
) -> None:
    root = tiny_data / DAVIS_VAL
    small_net.train()
    metrics = validate(
        small_net,
        image_dir=str(root / "JPEGImages/480p"),
        mask_dir=str(root / "Annotations/480p"),
        subset=str(root / "ImageSets/2017/val.txt"),
        device="cpu",
        out_dir=str(tmp_path / "val"),
        max_videos=1,
    )
    assert small_net.training  # train mode restored
    assert {"J&F-Mean", "J-Mean", "F-Mean", "J-Recall", "F-Decay", "fps"} <= set(metrics)
    assert 0.0 <= metrics["J&F-Mean"] <= 1.0
    (video,) = [p.name for p in (tmp_path / "val").iterdir()]
    # the masks written and the in-memory scores agree with the folder evaluation
    report = evaluate_folders(root / "Annotations/480p", tmp_path / "val", [video])
    for key in ("J&F-Mean", "J-Mean", "F-Mean"):
        assert metrics[key] == pytest.approx(report.summary()[key])
    # the given first frame comes back as given
    first = sorted((root / "Annotations/480p" / video).glob("*.png"))[0]
    np.testing.assert_array_equal(
        np.array(Image.open(tmp_path / "val" / video / first.name)), np.array(Image.open(first))
    )


def test_eval_cli_on_tiny_val(tiny_data: Path, small_net: torch.nn.Module, tmp_path: Path) -> None:
    weights = tmp_path / "small.pth"
    torch.save(small_net.state_dict(), weights)
    out = tmp_path / "output"
    cmd = [sys.executable, str(REPO / "cutie" / "eval.py"), f"weights={weights}", "dataset=tiny-val", "model=small",
           f"data_root={tiny_data}", f"output_root={out}", "exp_id=tinyeval", "max_videos=1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"J&F-Mean", "J-Mean", "F-Mean", "fps", "peak_memory_mb"} <= set(result)
    assert "Global results for tiny-val" in proc.stdout
    run_dir = out / "tinyeval" / "eval" / "tiny-val"
    videos = [p for p in (run_dir / "Annotations").iterdir()]
    assert len(videos) == 1
    frames = sorted((tiny_data / DAVIS_VAL / "JPEGImages/480p" / videos[0].name).glob("*.jpg"))
    pngs = sorted(videos[0].glob("*.png"))
    assert [p.stem for p in pngs] == [f.stem for f in frames]
    assert Image.open(pngs[1]).mode == "P"
    assert (run_dir / "global_results-tiny-val.csv").is_file()
    assert "evaluating tiny-val" in (run_dir / "eval.log").read_text()  # opened late (delay), still written
    # a missing weights argument is a clear configuration error
    bad = subprocess.run(cmd[:2] + cmd[3:], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and "weights=PATH is required" in bad.stderr
    # a damaged weights file: one line naming it, no traceback
    broken = tmp_path / "broken.pth"
    broken.write_bytes(weights.read_bytes()[:5000])
    bad = subprocess.run([*cmd[:2], f"weights={broken}", *cmd[3:]], capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and str(broken) in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) <= 3


def test_video_reader_masks_and_resize(tiny_data: Path) -> None:
    from cutie.inference.video_io import VideoReader

    images, masks = tiny_data / "YouTube/train/JPEGImages", tiny_data / "YouTube/train/Annotations"
    video = "0065b171f9"  # 200x150, objects entering half-way
    first_only = list(VideoReader(video, images, masks))
    assert first_only[0].mask is not None and all(f.mask is None for f in first_only[1:])
    every = list(VideoReader(video, images, masks, use_all_masks=True, size=64, to_save={first_only[1].name}))
    assert every[0].image.shape == (3, 64, 85) and every[0].mask.shape == (64, 85)  # shorter side 150 -> 64
    assert every[0].size == (150, 200)
    assert [f.save for f in every[:3]] == [False, True, False]
    # this folder is annotated on every frame: a later mask gives only the objects not seen before (the ground
    # truth of tracked objects is never fed back), so most frames carry no mask at all
    given = [set(f.mask.unique().tolist()) - {0} if f.mask is not None else set() for f in every]
    truth = [set(np.unique(np.array(Image.open(masks / video / f"{f.name}.png"))).tolist()) - {0} for f in every]
    seen: set[int] = set()
    for t, ids in enumerate(truth):
        assert given[t] == ids - seen, t
        seen |= ids
    assert any(given[1:]) and sum(1 for g in given if g) < len(given) - 2


def test_eval_dataset_entries() -> None:
    cfg = _compose(["dataset=custom"])
    assert cfg.datasets["custom"].use_all_masks  # late objects are added by default on custom folders
    assert not cfg.datasets["d17-val"].use_all_masks and cfg.datasets["d17-val"].layout == "davis"
    sav = _compose(["dataset=sav-val", "data_root=/data"]).datasets["sav-val"]
    assert sav.layout == "sav" and sav.use_all_masks and not sav.save_all and sav.evaluate is True
    assert sav.mask_directory == "/data/SA-V/sav_val/Annotations_6fps"
    assert sav.subset == "/data/SA-V/sav_val/sav_val.txt"


# ---- a sparse custom folder and SA-V val, through run_evaluation ----------------------------------------------


def _write_sparse_custom(root: Path, length: int = 13, step: int = 3) -> np.ndarray:
    """JPEGs on every frame, PNGs every `step`-th; object 1 from frame 0, object 2 appears on frame 6.
    Returns the T*H*W ids of every frame."""
    from cutie.dataprep.imageio import encode_jpeg, encode_palette_png

    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    ids = np.zeros((length, h, w), dtype=np.uint8)
    for t in range(length):
        ids[t][(yy - 20) ** 2 + (xx - 12 - 2 * t) ** 2 < 64] = 1
        if t >= 6:
            ids[t][(yy > 30) & (yy < 42) & (xx > 40) & (xx < 56)] = 2
        rgb = np.zeros((h, w, 3), dtype=np.uint8)
        rgb[..., 2] = 40 + (xx * 2).astype(np.uint8)
        rgb[ids[t] == 1] = (230, 40, 40)
        rgb[ids[t] == 2] = (40, 220, 60)
        (root / "JPEGImages" / "vid").mkdir(parents=True, exist_ok=True)
        (root / "JPEGImages" / "vid" / f"{t:05d}.jpg").write_bytes(encode_jpeg(rgb))
        if t % step == 0:
            (root / "Annotations" / "vid").mkdir(parents=True, exist_ok=True)
            (root / "Annotations" / "vid" / f"{t:05d}.png").write_bytes(encode_palette_png(ids[t]))
    return ids


def _run(overrides: list[str], small_net: torch.nn.Module, tmp_path: Path) -> dict[str, float]:
    from cutie.inference.dataset_eval import run_evaluation

    weights = tmp_path / "small.pth"
    if not weights.exists():
        torch.save(small_net.state_dict(), weights)
    base = [f"weights={weights}", "model=small", "device=cpu", f"output_root={tmp_path / 'out'}", "exp_id=t"]
    return run_evaluation(_compose(base + overrides))


def test_sparse_custom_folder_adds_late_objects(
    small_net: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _write_sparse_custom(tmp_path / "data")
    folders = [f"image_directory={tmp_path / 'data/JPEGImages'}", f"mask_directory={tmp_path / 'data/Annotations'}"]
    result = _run(["dataset=custom", *folders], small_net, tmp_path)
    run_dir = tmp_path / "out/t/eval/custom"
    pred = np.stack([np.array(Image.open(run_dir / "Annotations/vid" / f"{t:05d}.png")) for t in range(13)])
    assert pred.shape == ids.shape  # a mask for every frame (save_all), at the frames' size
    # object 2 is unknown before its first mask (frame 6) and given exactly there
    assert not (pred[:6] == 2).any()
    np.testing.assert_array_equal(pred[6] == 2, ids[6] == 2)
    # J&F on the annotated frames 0, 3, 6, 9, 12 (evaluate=auto sees sparse ground truth to score): object 1 on
    # frames 3, 6, 9; object 2, given on frame 6, on frame 9
    assert 0.0 <= result["J&F-Mean"] <= 1.0 and result["unscored"] == 0.0
    rows = (run_dir / "per-sequence_results-custom.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["Sequence", "vid_1", "vid_2"]
    assert (run_dir / "notes-custom.csv").read_text().splitlines() == ["Sequence,Scored,Note"]
    # with use_all_masks=false only the first mask's objects are tracked, and object 2 is listed as not scored
    result = _run(["dataset=custom", *folders, "use_all_masks=false", "exp_id=first"], small_net, tmp_path)
    first = np.stack([np.array(Image.open(tmp_path / f"out/first/eval/custom/Annotations/vid/{t:05d}.png"))
                      for t in range(13)])  # fmt: skip
    assert not (first == 2).any() and result["unscored"] == 1.0
    assert "not scored: vid_2: first annotated after the first frame" in capsys.readouterr().out


def test_sav_reader_inputs_and_overlaps(tiny_data: Path) -> None:
    from cutie.inference.sav_io import SavVideoReader

    root = tiny_data / "SA-V/sav_val"
    video = "sav_val_000011"
    reader = SavVideoReader(video, root / "JPEGImages_24fps", root / "Annotations_6fps")
    assert reader.object_names == ["000", "001", "002"] and len(reader) == 17

    def gt(obj: str, t: int) -> np.ndarray:
        return np.array(Image.open(root / "Annotations_6fps" / video / obj / f"{t:05d}.png")) > 0

    frames = list(reader)
    given = {f.name: f.mask for f in frames if f.mask is not None}
    assert sorted(given) == ["00000", "00008"]  # the first frame, and the late object's first non-empty mask
    first = given["00000"].numpy()
    assert (gt("000", 0) & gt("002", 0)).any()  # 002 (a part) lies inside 000 (the whole)
    np.testing.assert_array_equal(first == 3, gt("002", 0))  # the smaller one wins the overlap
    np.testing.assert_array_equal(first == 1, gt("000", 0) & ~gt("002", 0))
    assert set(np.unique(given["00008"].numpy())) == {0, 2}  # only the new object: known ones are not fed back
    np.testing.assert_array_equal(given["00008"].numpy() == 2, gt("001", 8))
    assert [f.save for f in frames] == [t % 4 == 0 for t in range(17)]
    only_first = [f for f in SavVideoReader(video, root / "JPEGImages_24fps", root / "Annotations_6fps",
                                             use_all_masks=False) if f.mask is not None]  # fmt: skip
    assert [f.name for f in only_first] == ["00000"]


def test_sav_val_evaluates_per_object(
    tiny_data: Path, small_net: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = _run(["dataset=sav-val", f"data_root={tiny_data}"], small_net, tmp_path)
    root = tiny_data / "SA-V/sav_val/Annotations_6fps"
    out = tmp_path / "out/t/eval/sav-val"
    # SA-V's layout: every object of every video on the annotated frames only, 0/1 masks
    gt_files = sorted(p.relative_to(root) for p in root.rglob("*.png"))
    assert sorted(p.relative_to(out / "Annotations") for p in (out / "Annotations").rglob("*.png")) == gt_files
    late = out / "Annotations/sav_val_000011/001"
    assert not np.array(Image.open(late / "00004.png")).any()  # not given yet
    np.testing.assert_array_equal(
        np.array(Image.open(late / "00008.png")), np.array(Image.open(root / "sav_val_000011/001/00008.png")) > 0
    )
    assert {"J&F-Mean", "J-Mean", "F-Mean", "fps", "unscored"} <= set(result)
    assert result["frames"] == 17 + 13  # inference ran on every 24 fps frame
    rows = (out / "per-object_results-sav-val.csv").read_text().splitlines()
    assert len(rows) == 1 + 5  # five objects, each scored
    assert "Per object results for sav-val" in capsys.readouterr().out


def test_reader_names_a_mask_of_another_size(tmp_path: Path) -> None:
    from cutie.inference.video_io import VideoReader

    _write_sparse_custom(tmp_path)
    bad = tmp_path / "Annotations/vid/00003.png"
    Image.open(bad).crop((0, 0, 60, 48)).save(bad)
    with pytest.raises(ValueError) as err:
        list(VideoReader("vid", tmp_path / "JPEGImages", tmp_path / "Annotations", use_all_masks=True))
    assert str(bad) in str(err.value) and "60x48" in str(err.value) and "64x48" in str(err.value)


def test_a_wrong_size_mask_stops_evaluation_before_any_inference(small_net: torch.nn.Module, tmp_path: Path) -> None:
    """A later video's wrong-size mask is found up front: no video has been run (nothing written) when it stops."""
    _write_sparse_custom(tmp_path / "data")
    shutil.copytree(tmp_path / "data/JPEGImages/vid", tmp_path / "data/JPEGImages/zz-late")
    shutil.copytree(tmp_path / "data/Annotations/vid", tmp_path / "data/Annotations/zz-late")
    bad = tmp_path / "data/Annotations/zz-late/00009.png"
    Image.open(bad).crop((0, 0, 63, 48)).save(bad)
    folders = [f"image_directory={tmp_path / 'data/JPEGImages'}", f"mask_directory={tmp_path / 'data/Annotations'}"]
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        _run(["dataset=custom", "wrong_size_masks=error", *folders], small_net, tmp_path)
    assert not (tmp_path / "out/t/eval/custom/Annotations").exists()  # the first video was not run either


def test_custom_folder_with_a_wrong_size_mask_evaluates_with_it_left_out(
    small_net: torch.nn.Module, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """dataset=custom (wrong_size_masks=skip): the mask is named and its frame treated as unannotated: neither
    given to the network nor scored; the late object is still added and scored."""
    from cutie.inference.dataset_eval import DatasetSpec, score_predictions

    _write_sparse_custom(tmp_path / "data")
    bad = tmp_path / "data/Annotations/vid/00009.png"
    Image.open(bad).crop((0, 0, 63, 48)).save(bad)
    folders = [f"image_directory={tmp_path / 'data/JPEGImages'}", f"mask_directory={tmp_path / 'data/Annotations'}"]
    with caplog.at_level("WARNING"):
        result = _run(["dataset=custom", *folders], small_net, tmp_path)
    assert any(str(bad) in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)
    # Annotated frames left: 0, 3, 6, 12. Object 1 is scored on 3 and 6 (12 is the last); object 2, first annotated
    # on 6, would be scored on 9 alone, which is left out: it is listed as not scored.
    assert result["unscored"] == 1.0 and 0.0 <= result["J&F-Mean"] <= 1.0
    notes = (tmp_path / "out/t/eval/custom/notes-custom.csv").read_text()
    assert "vid" in notes
    spec = DatasetSpec("custom", tmp_path / "data/JPEGImages", tmp_path / "data/Annotations", None, None, -1, True,
                       True, 5, False, "auto")  # fmt: skip
    with pytest.raises(ValueError, match="00009"):  # without the skip, the scorer refuses the wrong-size frame
        score_predictions(spec, tmp_path / "out/t/eval/custom/Annotations", ["vid"])


@pytest.mark.parametrize("use_all_masks", [False, True])
def test_validate_gives_and_scores_late_objects_with_use_all_masks(
    tiny_data: Path, small_net: torch.nn.Module, tmp_path: Path, use_all_masks: bool
) -> None:
    """A custom val set whose object enters late (hop-sparse: a mask every 2nd frame): with use_all_masks the
    network is given the late object at its first mask and it is scored after it, as the folder evaluation of
    eval.py scores it; without, it is neither given nor scored (the DAVIS protocol)."""
    root = tiny_data / "custom-sparse"
    subset = tmp_path / "val.txt"
    subset.write_text("hop-sparse\n")
    masks = sorted((root / "Annotations" / "hop-sparse").glob("*.png"))
    first_ids = set(np.unique(np.array(Image.open(masks[0])))) - {0}
    all_ids = set().union(*(set(np.unique(np.array(Image.open(m)))) for m in masks)) - {0}
    assert all_ids > first_ids  # the tiny video has a late object
    out = tmp_path / "val"
    metrics = validate(
        small_net, image_dir=str(root / "JPEGImages"), mask_dir=str(root / "Annotations"), subset=str(subset),
        device="cpu", out_dir=str(out), use_all_masks=use_all_masks,
    )  # fmt: skip
    predicted = set().union(*(set(np.unique(np.array(Image.open(p)))) for p in (out / "hop-sparse").glob("*.png")))
    late = all_ids - first_ids
    assert (late <= predicted) == use_all_masks  # the late object was given to the network only with the flag
    report = evaluate_folders(root / "Annotations", out, ["hop-sparse"], late_objects=use_all_masks,
                              extra_frames_ok=True)  # fmt: skip
    assert {o.object_id for o in report.objects} == (all_ids if use_all_masks else first_ids)
    for key in ("J&F-Mean", "J-Mean", "F-Mean"):
        assert metrics[key] == pytest.approx(report.summary()[key])


@pytest.mark.parametrize("line", ["../../outside", "/abs/video", "a/b", "..\\up"])
def test_subset_names_stay_folder_names(tmp_path: Path, line: str) -> None:
    """A subset file is untrusted: each line becomes a folder read under the masks and written under the output."""
    masks = tmp_path / "Annotations"
    (masks / "ok-video").mkdir(parents=True)
    subset = tmp_path / "val.txt"
    subset.write_text(f"ok-video\n{line}\n")
    with pytest.raises(PathEscapeError, match=re.escape(str(subset))):
        list_videos(masks, subset)
    subset.write_text("ok-video\n\n")
    assert list_videos(masks, subset) == ["ok-video"]


def test_eval_refuses_a_subset_climbing_out(tiny_data: Path, small_net: torch.nn.Module, tmp_path: Path) -> None:
    weights = tmp_path / "small.pth"
    torch.save(small_net.state_dict(), weights)
    root = tiny_data / DAVIS_VAL
    subset = tmp_path / "evil.txt"
    subset.write_text("../../../../escaped\n")
    out = tmp_path / "output"
    cmd = [sys.executable, str(REPO / "cutie" / "eval.py"), f"weights={weights}", "dataset=custom", "model=small",
           f"image_directory={root / 'JPEGImages/480p'}", f"mask_directory={root / 'Annotations/480p'}",
           f"subset={subset}", f"output_root={out}", "exp_id=evil"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "contains '..'" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not list(tmp_path.rglob("escaped"))


def test_the_validation_set_is_checked_like_training_data(tiny_data: Path, tmp_path: Path) -> None:
    """Every frame (unannotated ones too: inference reads them) and mask of the validation videos, cached, and
    masks against their frames; summarize() adds the set to the main-training reports (check_data, training)."""
    shutil.copytree(tiny_data / "DAVIS", tmp_path / "DAVIS")
    val = tmp_path / DAVIS_VAL
    cfg = {"name": "my-val", "image_directory": str(val / "JPEGImages/480p"),
           "mask_directory": str(val / "Annotations/480p"), "subset": str(val / "ImageSets/2017/val.txt")}  # fmt: skip
    cache = str(tmp_path / "cache")
    rep = scan_val_dataset(cfg, str(tmp_path), cache)
    videos = list_videos(cfg["mask_directory"], cfg["subset"])
    assert rep.ok and rep.videos == len(videos) and rep.checked.read > 0
    assert scan_val_dataset(cfg, str(tmp_path), cache).checked.read == 0  # the second check reads nothing
    frames = sorted((val / "JPEGImages/480p" / videos[-1]).glob("*.jpg"))
    (val / "Annotations/480p" / videos[-1] / f"{frames[4].stem}.png").unlink()  # frame 4 is now unannotated
    truncated_jpeg(frames[4])
    mask = sorted((val / "Annotations/480p" / videos[0]).glob("*.png"))[2]
    wrong_size_mask(mask)
    rep = scan_val_dataset(cfg, str(tmp_path), cache)
    assert {(p.kind, p.path) for p in rep.issues} == {("truncated_jpeg", str(frames[4])), ("size_mismatch", str(mask))}
    data = {"pre_training": {"datasets": []}, "main_training": {"datasets": []}, "val_dataset": cfg}
    assert [r.name for r in summarize(data, str(tmp_path), stages=["main_training"], cache_root=cache)] == ["my-val"]
    assert summarize(data, str(tmp_path), stages=["pre_training"], cache_root=cache) == []
    cfg["subset"] = str(val / "absent.txt")  # an absent set is skipped by training (a log line), not a problem
    assert summarize(data, str(tmp_path), stages=["main_training"], cache_root=cache) == []


def test_validation_uses_the_paths_the_start_up_check_resolved(tmp_path: Path, monkeypatch) -> None:
    """One resolver for the check and the hook: `~` and `..` are resolved the same way for both."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for d in ("val/JPEGImages", "val/Annotations"):
        (tmp_path / d).mkdir(parents=True)
    cfg = {"image_directory": "~/val/JPEGImages", "mask_directory": "sub/../../val/Annotations", "subset": None}
    root = str(tmp_path / "data")
    assert val_paths(cfg, root) == (str(tmp_path / "val/JPEGImages"), str(tmp_path / "val/Annotations"), None)
    assert val_paths({**cfg, "subset": "absent.txt"}, root) is None


def test_eval_refuses_symlinks_in_its_output_folder(
    tiny_data: Path, small_net: torch.nn.Module, tmp_path: Path
) -> None:
    """A link planted at eval.log (opened by Hydra's log handler) or in Annotations/ is named before anything is
    written: exit 2, one line, nothing created behind it. The exp_id folder itself may be a link."""
    weights = tmp_path / "small.pth"
    torch.save(small_net.state_dict(), weights)
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "disk" / "e" / "eval" / "tiny-val" / "Annotations").mkdir(parents=True)
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "e").symlink_to(tmp_path / "disk" / "e", target_is_directory=True)
    run_dir = tmp_path / "output" / "e" / "eval" / "tiny-val"
    (run_dir / "eval.log").symlink_to(victim / "eval.log")
    (run_dir / "Annotations" / "juggle").symlink_to(victim, target_is_directory=True)
    cmd = [sys.executable, str(REPO / "cutie" / "eval.py"), f"weights={weights}", "dataset=tiny-val", "model=small",
           f"data_root={tiny_data}", f"output_root={tmp_path / 'output'}", "exp_id=e", "device=cpu"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip()
    assert err.startswith("path error: ") and len(err.splitlines()) == 1, err
    assert "2 symlink(s)" in err and str(run_dir / "eval.log") in err and "Traceback" not in err
    assert list(victim.iterdir()) == []


def _png_declaring(width: int, height: int) -> bytes:
    """A palette PNG header declaring width x height (a decompression bomb), with a little data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"PLTE", b"\0\0\0\x80\0\0") + chunk(b"IDAT", idat)


def _damage_mask(how: str, path: Path) -> None:
    ids = np.array(Image.open(path))
    if how == "bomb":
        path.write_bytes(_png_declaring(100_000, 100_000))
    elif how == "16bit":
        Image.fromarray(ids.astype(np.uint16) * 300).save(path)
    elif how == "rgba":
        Image.open(path).convert("RGBA").save(path)
    elif how == "jpeg_named_png":
        Image.fromarray(ids * 100).save(path, format="JPEG")
    elif how == "folder":
        path.unlink()
        path.mkdir()


def _damage_frame(how: str, path: Path) -> None:
    if how == "zero_byte":
        path.write_bytes(b"")
    elif how == "truncated":
        truncated_jpeg(path)
    elif how == "cut_tail":
        path.write_bytes(path.read_bytes()[:-20])  # the header and most of the data are still there
    elif how == "folder":
        path.unlink()
        path.mkdir()
    elif how == "bomb":  # the frame header (SOF0, after the encoder's APP0/DQT segments) declares 100000x100000
        data = bytearray(path.read_bytes())
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = (100_000 // 2).to_bytes(2, "big") * 2
        path.write_bytes(bytes(data))
    elif how == "png_named_jpg":
        path.write_bytes(_png_declaring(8, 8))


@pytest.mark.parametrize(
    ("kind", "how", "phrase"),
    [
        ("mask", "bomb", "decompression bomb"),
        ("mask", "16bit", "mode I;16"),
        ("mask", "rgba", "mode RGBA"),
        ("mask", "jpeg_named_png", "not a PNG (its content is JPEG)"),
        ("mask", "folder", "not a readable mask PNG"),
        ("frame", "zero_byte", "not a readable frame"),
        ("frame", "truncated", "not a readable frame"),
        ("frame", "cut_tail", "no end-of-image marker"),
        ("frame", "folder", "not a readable frame (Is a directory)"),
        ("frame", "bomb", "decompression bomb"),
        ("frame", "png_named_jpg", "not a JPEG"),
    ],
)
def test_an_unusable_eval_file_stops_before_any_inference(
    small_net: torch.nn.Module, tmp_path: Path, kind: str, how: str, phrase: str
) -> None:
    """Every frame and mask of every video is checked up front: a bad file of the last video is named (with the
    fix) before the first video runs, instead of failing mid-evaluation or as an internal error."""
    _write_sparse_custom(tmp_path / "data")
    shutil.copytree(tmp_path / "data/JPEGImages/vid", tmp_path / "data/JPEGImages/zz-late")
    shutil.copytree(tmp_path / "data/Annotations/vid", tmp_path / "data/Annotations/zz-late")
    if kind == "mask":
        bad = tmp_path / "data/Annotations/zz-late/00006.png"
        _damage_mask(how, bad)
    else:
        bad = tmp_path / "data/JPEGImages/zz-late/00004.jpg"
        _damage_frame(how, bad)
    folders = [f"image_directory={tmp_path / 'data/JPEGImages'}", f"mask_directory={tmp_path / 'data/Annotations'}"]
    with pytest.raises(ValueError) as info:
        _run(["dataset=custom", *folders], small_net, tmp_path)
    message = str(info.value)
    assert message.startswith(str(bad)) and phrase in message and "fix:" in message, message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "out/t/eval/custom/Annotations").exists()  # the first video was not run either


@pytest.mark.parametrize(
    "doc",
    ['[1, 2]', '{"videos": []}', '{"videos": {"v": {"objects": [1]}}}', '{"videos": {"v": {"objects": '
     '{"1": {"frames": [[0]]}}}}}', '{"videos": {"v": {"objects": {"1": {"frames": [7]}}}}}', "{not json",
     '{"videos": {"v": {"objects": {"1": {"frames": ["00000"]}}}, "v": {"objects": {}}}}'],  # v twice: one lost
)  # fmt: skip
def test_a_malformed_meta_json_is_named(tmp_path: Path, doc: str) -> None:
    """json_directory (YouTube-VOS meta.json) is untrusted: any other shape is a ValueError naming the file (the
    entry point's one-line data error), not a KeyError or TypeError ending as an internal error."""
    from cutie.inference.video_io import required_frames

    good = tmp_path / "good.json"
    good.write_text('{"videos": {"v": {"objects": {"1": {"frames": ["00000", "00005"]}, "2": {"frames": ["00005"]}}}}}')
    assert required_frames(good) == {"v": {"00000", "00005"}}
    bad = tmp_path / "meta.json"
    bad.write_text(doc)
    with pytest.raises(ValueError, match=re.escape(str(bad))) as info:
        required_frames(bad)
    assert "fix:" in str(info.value) and len(str(info.value).splitlines()) == 1


def test_a_fifo_named_like_a_frame_or_mask_is_refused_without_opening_it(tmp_path: Path) -> None:
    """Opening a FIFO would block evaluation forever: the up-front check names it instead."""
    import os

    from cutie.inference.video_io import check_video_files

    _write_sparse_custom(tmp_path / "data")
    for kind, name in (("JPEGImages", "00004.jpg"), ("Annotations", "00003.png")):
        bad = tmp_path / "data" / kind / "vid" / name
        saved = bad.read_bytes()
        bad.unlink()
        os.mkfifo(bad)
        with pytest.raises(ValueError, match=re.escape(f"{bad}: not a regular file")):
            check_video_files(tmp_path / "data/JPEGImages", tmp_path / "data/Annotations", "vid")
        bad.unlink()
        bad.write_bytes(saved)
    assert check_video_files(tmp_path / "data/JPEGImages", tmp_path / "data/Annotations", "vid") == []


# ---- a video's structure is checked up front too (audit: late failures) -----------------------------------------


def _two_videos(tmp_path: Path) -> tuple[Path, list[str]]:
    """The sparse custom folder with a second video `zz-late` (run last); returns the data root and the folders."""
    data = tmp_path / "data"
    _write_sparse_custom(data)
    shutil.copytree(data / "JPEGImages/vid", data / "JPEGImages/zz-late")
    shutil.copytree(data / "Annotations/vid", data / "Annotations/zz-late")
    return data, [f"image_directory={data / 'JPEGImages'}", f"mask_directory={data / 'Annotations'}"]


@pytest.mark.parametrize("empty", ["JPEGImages", "Annotations"])
def test_a_later_video_without_frames_or_masks_stops_before_any_inference(
    small_net: torch.nn.Module, tmp_path: Path, empty: str
) -> None:
    """A video with zero frames (or no mask at all) is named before the first video runs, not when its turn comes
    after the others have been segmented."""
    data, folders = _two_videos(tmp_path)
    for p in (data / empty / "zz-late").iterdir():
        p.unlink()
    with pytest.raises((FileNotFoundError, ValueError), match=re.escape(str(data / empty / "zz-late"))):
        _run(["dataset=custom", *folders], small_net, tmp_path)
    assert not (tmp_path / "out/t/eval/custom/Annotations").exists()  # the first video was not run either


@pytest.mark.parametrize(("stem", "protocol"), [("00006", "use_all_masks=true"), ("00000", "use_all_masks=false")])
def test_a_mask_without_its_frame_stops_before_any_inference(
    small_net: torch.nn.Module, tmp_path: Path, stem: str, protocol: str
) -> None:
    """A mask whose frame is missing: in the middle it used to fail only at scoring, after every video had run;
    as the first mask (the DAVIS protocol's only input) the video was silently segmented as all background."""
    data, folders = _two_videos(tmp_path)
    (data / "JPEGImages/zz-late" / f"{stem}.jpg").unlink()
    with pytest.raises(ValueError) as info:
        _run(["dataset=custom", protocol, *folders], small_net, tmp_path)
    message = str(info.value)
    assert str(data / "Annotations/zz-late" / f"{stem}.png") in message and "fix:" in message, message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "out/t/eval/custom/Annotations").exists()


@pytest.mark.parametrize("link", ["video_folder", "video_folder_to_empty", "frame", "mask"])
def test_a_symlink_leading_out_of_the_dataset_is_refused_before_any_inference(
    small_net: torch.nn.Module, tmp_path: Path, link: str
) -> None:
    """A video folder, frame or mask of the listing that is a symlink out of its dataset folder is refused (as
    the SA-V reader already refuses a video folder), before anything runs. Nothing outside is listed first: a link
    to an empty folder is refused as a link out, not reported as a video without frames."""
    data, folders = _two_videos(tmp_path)
    outside = tmp_path / "elsewhere"
    shutil.copytree(data / "JPEGImages/zz-late", outside / "frames")
    shutil.copytree(data / "Annotations/zz-late", outside / "masks")
    (outside / "empty").mkdir()
    if link == "video_folder_to_empty":
        shutil.rmtree(data / "JPEGImages/zz-late")
        (data / "JPEGImages/zz-late").symlink_to(outside / "empty", target_is_directory=True)
    elif link == "video_folder":
        shutil.rmtree(data / "JPEGImages/zz-late")
        (data / "JPEGImages/zz-late").symlink_to(outside / "frames", target_is_directory=True)
    elif link == "frame":
        (data / "JPEGImages/zz-late/00004.jpg").unlink()
        (data / "JPEGImages/zz-late/00004.jpg").symlink_to(outside / "frames/00004.jpg")
    else:
        (data / "Annotations/zz-late/00003.png").unlink()
        (data / "Annotations/zz-late/00003.png").symlink_to(outside / "masks/00003.png")
    with pytest.raises(PathEscapeError, match="zz-late") as info:
        _run(["dataset=custom", *folders], small_net, tmp_path)
    assert len(str(info.value).splitlines()) == 1 and "fix:" in str(info.value)
    assert not (tmp_path / "out/t/eval/custom/Annotations").exists()
    if link == "video_folder":  # a link that stays inside the dataset (a video listed twice) is fine
        (data / "JPEGImages/zz-late").unlink()
        (data / "JPEGImages/zz-late").symlink_to(data / "JPEGImages/vid", target_is_directory=True)
        _run(["dataset=custom", *folders, "exp_id=inside"], small_net, tmp_path)
        assert (tmp_path / "out/inside/eval/custom/Annotations/zz-late/00012.png").is_file()


def test_evaluation_shows_one_progress_bar_over_every_frame_and_one_for_scoring(
    small_net: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ETA covers the whole run (all frames of all videos), not only the current video, and scoring (minutes
    on a large set) shows progress too."""
    _, folders = _two_videos(tmp_path)
    _run(["dataset=custom", *folders], small_net, tmp_path)
    err = capsys.readouterr().err
    # 2 videos of 13 frames in one bar. The bar stays when it closes (tqdm draws its final count then); a bar that
    # cleared itself lost the final count whenever the last frames came within tqdm's 0.1 s redraw interval.
    assert re.search(r"\[2/2\] zz-late: 100%.*\b26/26\b", err), err[-2000:]
    assert re.search(r"J&F.*\b2/2\b", err), err[-2000:]


def test_a_short_palette_of_the_first_mask_keeps_every_object_id(tmp_path: Path) -> None:
    """Predictions are written with the palette of the video's first mask. A mask saved with only a few palette
    entries (2 here) made PIL pack the written PNG to 1 bit per pixel, so object 2 came out as background and 5
    as object 1 (silently wrong masks and scores); the palette is padded to 256 entries."""
    from cutie.inference.video_io import VideoReader, save_index_png

    _write_sparse_custom(tmp_path)
    first = tmp_path / "Annotations/vid/00000.png"
    with Image.open(first) as im:
        ids = np.array(im)
    short = Image.fromarray(ids, mode="P")
    short.putpalette([0, 0, 0, 200, 30, 30])  # 2 colours: background and object 1
    short.save(first)
    reader = VideoReader("vid", tmp_path / "JPEGImages", tmp_path / "Annotations", use_all_masks=True)
    pred = np.zeros((48, 64), dtype=np.uint8)
    pred[:10], pred[10:20], pred[20:30] = 1, 2, 5
    save_index_png(tmp_path / "out.png", pred, reader.palette)
    with Image.open(tmp_path / "out.png") as im:
        np.testing.assert_array_equal(np.array(im), pred)
        assert im.getpalette()[:6] == [0, 0, 0, 200, 30, 30]  # the dataset's own colours are kept


@pytest.mark.parametrize(("dataset", "top"), [("y19-val", "Annotations/vid/"), ("mose-val", "vid/")])
def test_the_benchmark_archive_is_written_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset: str, top: str
) -> None:
    """The zip for the benchmark server (YouTube-VOS: an Annotations/ folder inside, MOSE: the videos) is built in
    a temporary sibling and renamed: a write that fails half way (disk full, a kill) leaves no truncated archive
    under the name printed for upload."""
    import zipfile

    from cutie.inference.dataset_eval import DatasetSpec, make_zip

    run_dir = tmp_path / "run"
    written = [run_dir / "Annotations/vid" / f"{stem}.png" for stem in ("00000", "00005")]
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png " + path.stem.encode())
    (run_dir / "Annotations/vid/.00010.png.x1y2.cutie-tmp").write_bytes(b"half")  # left by a killed run
    spec = DatasetSpec(dataset, Path("i"), Path("m"), None, None, 480, False, True, 5, False, "false")
    archive = make_zip(spec, run_dir, "e", written)
    assert archive == run_dir / f"e_{dataset}.zip"
    with zipfile.ZipFile(archive) as z:
        files = sorted(n for n in z.namelist() if not n.endswith("/"))
        assert files == [f"{top}00000.png", f"{top}00005.png"]
        assert z.read(f"{top}00005.png") == b"png 00005"
    archive.unlink()
    real_write = zipfile.ZipFile.write
    calls = []

    def failing_write(self, *args, **kwargs):
        calls.append(args)
        if len(calls) > 1:  # the first member is written, the second fails
            raise OSError(28, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "write", failing_write)
    with pytest.raises(OSError):
        make_zip(spec, run_dir, "e", written)
    assert sorted(p.name for p in run_dir.iterdir()) == ["Annotations"]  # no archive, no temporary left


def test_the_benchmark_archive_of_a_rerun_with_fewer_videos_holds_only_that_runs_masks(
    small_net: torch.nn.Module, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rerun into the same folder with fewer videos (max_videos=, another subset) leaves the earlier run's
    masks in Annotations/; the archive printed for upload holds this run's masks only, else the server would
    score the earlier videos as this run's."""
    import zipfile

    _two_videos(tmp_path / "MOSE/valid")  # mose-val's layout under data_root: JPEGImages/, Annotations/
    (tmp_path / "MOSE/valid/data/JPEGImages").rename(tmp_path / "MOSE/valid/JPEGImages")
    (tmp_path / "MOSE/valid/data/Annotations").rename(tmp_path / "MOSE/valid/Annotations")
    archive = tmp_path / "out/t/eval/mose-val/t_mose-val.zip"

    def members() -> set[str]:
        with zipfile.ZipFile(archive) as z:
            return {n.split("/")[0] for n in z.namelist() if not n.endswith("/")}

    _run(["dataset=mose-val", f"data_root={tmp_path}"], small_net, tmp_path)
    assert members() == {"vid", "zz-late"}
    assert "earlier run" not in caplog.text
    _run(["dataset=mose-val", f"data_root={tmp_path}", "max_videos=1"], small_net, tmp_path)
    assert (tmp_path / "out/t/eval/mose-val/Annotations/zz-late").is_dir()  # the earlier run's masks stay
    assert members() == {"vid"}
    assert "also holds 1 videos of an earlier run (zz-late)" in caplog.text  # and the log says so


def test_a_void_label_given_to_the_network_is_refused_before_inference_when_scoring(
    small_net: torch.nn.Module, tmp_path: Path
) -> None:
    """255 is the DAVIS void label: the scorer counts it as background, but a mask given to the network hands it
    over as object 255, whose predictions the scorer then rejects, after every video has run. With scoring on,
    that is named up front; without scoring (evaluate=false) the masks are written as before."""
    from cutie.dataprep.imageio import encode_palette_png

    data = tmp_path / "data"
    _write_sparse_custom(data)
    first = data / "Annotations/vid/00000.png"
    with Image.open(first) as im:
        ids = np.array(im)
    ids[:4, :4] = 255
    first.write_bytes(encode_palette_png(ids))
    folders = [f"image_directory={data / 'JPEGImages'}", f"mask_directory={data / 'Annotations'}"]
    with pytest.raises(ValueError) as info:
        _run(["dataset=custom", "evaluate=true", *folders], small_net, tmp_path)
    message = str(info.value)
    assert message.startswith(str(first)) and "255" in message and "fix:" in message, message
    assert len(message.splitlines()) == 1
    assert not (tmp_path / "out/t/eval/custom/Annotations").exists()
    _run(["dataset=custom", "evaluate=false", *folders], small_net, tmp_path)
    assert (tmp_path / "out/t/eval/custom/Annotations/vid/00012.png").is_file()


def test_frames_numbered_without_zero_padding_or_named_twice_are_refused(tmp_path: Path) -> None:
    """Frames are read in name order: 10.jpg before 2.jpg (ffmpeg's %d.jpg) would shuffle the video, and a frame
    as both 00004.jpg and 00004.png would be segmented twice into one output PNG. Both are named up front."""
    from cutie.inference.video_io import check_video_files

    root = tmp_path / "data"
    _write_sparse_custom(root)
    frames, masks = root / "JPEGImages/vid", root / "Annotations/vid"
    (frames / "00004.png").write_bytes((frames / "00004.jpg").read_bytes())
    with pytest.raises(ValueError, match=r"00004.png: a second frame named 00004 \(beside 00004.jpg\)"):
        check_video_files(root / "JPEGImages", root / "Annotations", "vid")
    (frames / "00004.png").unlink()
    for folder, suffix in ((frames, ".jpg"), (masks, ".png")):
        for path in folder.glob(f"*{suffix}"):
            path.rename(folder / f"{int(path.stem)}{suffix}")
    with pytest.raises(ValueError, match=r"frame 12.jpg sorts before 2.jpg.*fix: rename .* zero-padded") as info:
        check_video_files(root / "JPEGImages", root / "Annotations", "vid")
    assert len(str(info.value).splitlines()) == 1


def test_folders_in_the_wrong_layout_are_named_with_the_layout_before_inference(tmp_path: Path) -> None:
    """The mistakes of a first evaluation of one's own videos: the dataset folder (what training's
    data.custom_root takes) given as a folder of videos, the frames of one video given without their video
    folder, the two folders swapped. Each is one line naming what is where, not a missing file or an 'or'."""
    import shutil

    from cutie.inference.dataset_eval import resolve_dataset
    from cutie.inference.video_io import check_video_files

    root = tmp_path / "data"
    _write_sparse_custom(root)
    as_root = _compose(["dataset=custom", f"image_directory={root}", f"mask_directory={root / 'Annotations'}"])
    with pytest.raises(ValueError, match=re.escape(
        f"image_directory={root} (dataset=custom) is a dataset folder, holding JPEGImages/ and Annotations/; fix: "
        f"image_directory={root / 'JPEGImages'} mask_directory={root / 'Annotations'}"
    )):  # fmt: skip
        resolve_dataset(as_root)
    flat = tmp_path / "flat"
    shutil.copytree(root / "JPEGImages/vid", flat)
    with pytest.raises(ValueError, match=rf"video vid of .* has no frame folder {flat}/vid \({flat} holds frames"):
        check_video_files(flat, root / "Annotations", "vid")
    for frames in (root / "Annotations", root / "JPEGImages"):  # swapped; the frame folder given twice
        with pytest.raises(ValueError, match=r"JPEGImages/vid: no masks \(<frame>.png\) .*\(it holds JPEGs: .*swapped"):
            check_video_files(frames, root / "JPEGImages", "vid")
    (tmp_path / "empty/vid").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"empty/vid: no frames \(.jpg, .jpeg or .png\) in video vid's folder; fix"):
        check_video_files(tmp_path / "empty", root / "Annotations", "vid")


def test_evaluate_auto_says_which_video_has_nothing_to_score(tmp_path: Path) -> None:
    """A custom folder where one video only has first-appearance masks is not scored under evaluate=auto: the
    line says which video and why, and how to score the others, instead of 'no ground truth'."""
    from cutie.dataprep.imageio import encode_palette_png
    from cutie.inference.dataset_eval import resolve_dataset, unscorable_video

    root = tmp_path / "data"
    ids = _write_sparse_custom(root)
    folders = [f"image_directory={root / 'JPEGImages'}", f"mask_directory={root / 'Annotations'}"]
    spec = resolve_dataset(_compose(["dataset=custom", *folders]))
    assert unscorable_video(spec, ["vid"]) is None
    for t, path in enumerate(sorted((root / "Annotations/vid").glob("*.png"))):  # each mask: a new object only
        path.write_bytes(encode_palette_png(np.where(ids[3 * t] > 0, t + 1, 0).astype(np.uint8)))
    assert unscorable_video(spec, ["vid"]) == (
        "no object of video vid is annotated on more than one frame (first-appearance masks only)"
    )


def test_an_evaluation_folder_of_other_weights_is_not_overwritten(small_net: torch.nn.Module, tmp_path: Path) -> None:
    """Every evaluation without exp_id= goes to output/default/eval/<dataset>: evaluating a second checkpoint
    there would silently replace the first one's masks and tables (and mix with them where the videos differ).
    It is refused before anything is written, naming both; the same weights again rewrite the folder."""
    from cutie.inference.dataset_eval import OWNER_FILE

    _write_sparse_custom(tmp_path / "data")
    folders = [f"image_directory={tmp_path / 'data/JPEGImages'}", f"mask_directory={tmp_path / 'data/Annotations'}"]
    args = ["dataset=custom", *folders, "evaluate=false"]
    _run(args, small_net, tmp_path)
    run_dir = tmp_path / "out/t/eval/custom"
    written = {p: p.stat().st_mtime_ns for p in (run_dir / "Annotations/vid").iterdir()}
    other = tmp_path / "other.pth"
    other.write_bytes((tmp_path / "small.pth").read_bytes())
    with pytest.raises(EvalConfigError, match=re.escape(
        f"{run_dir} holds the evaluation of weights={tmp_path / 'small.pth'}; this run (weights={other}) would "
        "overwrite it (fix: exp_id=<new id>"
    )):  # fmt: skip
        _run([*args, f"weights={other}"], small_net, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "Annotations/vid").iterdir()} == written
    _run(args, small_net, tmp_path)  # the same weights: a rerun rewrites its own folder
    assert json.loads((run_dir / OWNER_FILE).read_text())["weights"] == str(tmp_path / "small.pth")


def test_a_frame_out_of_memory_names_the_video_and_the_options_that_help(
    small_net: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CUDA out-of-memory in the network (a long 4K video with many objects) used to be 'internal error ... a
    bug'; now one line, exit 2, with the video, the frame, its size and objects, and the options that lower the
    memory (those that keep the masks first)."""
    from cutie.eval import _INPUT_ERRORS
    from cutie.inference.processor import VideoProcessor
    from cutie.inference.runner import InferenceOutOfMemory
    from cutie.utils.cli import EXIT_INPUT, run_reporting_errors

    _write_sparse_custom(tmp_path / "data")  # object 1 from frame 0, object 2 from frame 6
    folders = [f"image_directory={tmp_path / 'data/JPEGImages'}", f"mask_directory={tmp_path / 'data/Annotations'}"]
    step = VideoProcessor._step

    def out_of_memory_at_frame_8(self, image, mask, objects, *, end):
        if self.frame_index == 7:  # the 9th call: frame 00008, both objects known
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return step(self, image, mask, objects, end=end)

    monkeypatch.setattr(VideoProcessor, "_step", out_of_memory_at_frame_8)
    with pytest.raises(InferenceOutOfMemory) as info:
        _run(["dataset=custom", *folders], small_net, tmp_path)
    message = str(info.value)
    assert message.startswith("video vid, frame 00008 (") and "2 object(s)): the network needs more memory" in message
    assert "fix: chunk_size=1 (objects in groups: the same masks up to rounding), or max_internal_size=480" in message
    assert "max_mem_frames=3" in message and "amp=true" not in message  # autocast is a CUDA setting
    assert isinstance(info.value.__cause__.__cause__, torch.OutOfMemoryError)
    with pytest.raises(SystemExit) as stop:
        run_reporting_errors(lambda: (_ for _ in ()).throw(info.value), _INPUT_ERRORS)
    assert stop.value.code == EXIT_INPUT
    assert capsys.readouterr().err.splitlines()[-1] == f"out of memory: {message}"
