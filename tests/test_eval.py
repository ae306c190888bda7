"""Evaluation entry point (cutie/eval.py), dataset config resolution and validation during training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from cutie.config.evaluation import parse_eval_config
from cutie.inference import validate
from cutie.inference.dataset_eval import EvalConfigError, resolve_dataset
from cutie.metrics import evaluate_folders
from cutie.model import build_network, load_model_config
from cutie.testing.weights_rule import load_weights_rule

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
    assert all(f.mask is not None for f in every)
    assert every[0].image.shape == (3, 64, 85) and every[0].mask.shape == (64, 85)  # shorter side 150 -> 64
    assert every[0].size == (150, 200)
    assert [f.save for f in every[:3]] == [False, True, False]
    # later annotations add objects that the first one does not have (the YouTube-VOS protocol)
    first_ids = set(every[0].mask.unique().tolist())
    assert any(set(f.mask.unique().tolist()) - first_ids for f in every[1:])
