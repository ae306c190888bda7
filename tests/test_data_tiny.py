"""build_train_loader on the generated tiny dataset with the real configs (data=tiny, data=custom)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cutie.data.loaders.build import build_train_loader
from cutie.dataprep.config import compose_train_config


def _batches(cfg, stage: str, data_root: Path, n: int, tmp_path: Path, batch_size: int = 2):
    stage_cfg = cfg[stage]
    loader = build_train_loader(
        cfg.data,
        stage_cfg,
        stage=stage,
        data_root=str(data_root),
        cache_root=str(tmp_path / "cache"),
        seed=cfg.seed,
        rank=0,
        world_size=1,
        batch_size=batch_size,
        num_workers=0,
        device=torch.device("cpu"),
        backend="torch",
        total_iterations=int(stage_cfg.num_iterations),
    )
    try:
        it = loader.iterate(0)
        return [next(it) for _ in range(n)], loader
    finally:
        loader.close()


@pytest.mark.parametrize("stage", ["pre_training", "main_training"])
def test_tiny_config_both_stages(tiny_data: Path, tmp_path: Path, stage: str) -> None:
    cfg = compose_train_config(["data=tiny", f"data_root={tiny_data}", f"cache_root={tmp_path / 'cache'}"])
    batches, loader = _batches(cfg, stage, tiny_data, 3, tmp_path)
    s = cfg[stage]
    t, o, (h, w) = int(s.seq_length), int(s.num_objects), s.crop_size
    for b in batches:
        assert b["rgb"].shape == (2, t, 3, h, w) and b["cls_gt"].shape == (2, t, 1, h, w)
        assert b["first_frame_gt"].shape == (2, 1, o, h, w) and b["selector"].shape == (2, o)
        assert int(b["cls_gt"].max()) <= o and (b["num_objects"] >= 1).all()
    if stage == "main_training":  # main clips always show an object in frame 0
        assert all(b["first_frame_gt"].flatten(2).any(2).any(1).all() for b in batches)
        assert loader.max_skip_for(0) == 5
    assert loader.bad_samples == 0 and loader.total_samples == 6


def test_custom_folder_mixed_with_davis(tiny_data: Path, tmp_path: Path) -> None:
    davis = tiny_data / "DAVIS/2017/trainval"
    custom = tmp_path / "mine"
    custom.mkdir()
    (custom / "JPEGImages").symlink_to(davis / "JPEGImages/480p", target_is_directory=True)
    (custom / "Annotations").symlink_to(davis / "Annotations/480p", target_is_directory=True)
    cfg = compose_train_config(
        [
            "data=custom",
            f"data.custom_root={custom}",
            f"data_root={tiny_data}",
            "data.main_training.datasets=[CUSTOM,DAVIS]",
            "main_training.seq_length=4",
            "main_training.crop_size=[64,64]",
        ]
    )
    batches, _ = _batches(cfg, "main_training", tiny_data, 2, tmp_path)
    assert batches[0]["rgb"].shape == (2, 4, 3, 64, 64)
