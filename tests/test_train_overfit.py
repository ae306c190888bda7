"""The network, losses and optimiser together can learn: one tiny clip is overfitted to a high IoU."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from cutie.config.train import parse_train_config
from cutie.data.loaders.build import build_train_loader
from cutie.model import build_network
from cutie.model.losses import LossComputer, LossSettings
from cutie.training.clip_model import ClipModel
from cutie.training.optim import build_optimizer
from cutie.training.plan import plan_stage
from cutie.training.step import train_step

pytestmark = pytest.mark.slow
MAX_STEPS = 200


def _mean_iou(batch: dict, output: dict) -> float:
    """Mean IoU over frames 1..T-1 and the objects present in each sample."""
    ious = []
    t_len = batch["rgb"].shape[1]
    for ti in range(1, t_len):
        pred = output[f"logits_{ti}"].argmax(1)  # B*H*W
        gt = batch["cls_gt"][:, ti, 0]
        for b in range(pred.shape[0]):
            for k in range(1, int(batch["num_objects"][b]) + 1):
                p, g = pred[b] == k, gt[b] == k
                union = (p | g).sum().item()
                if union:
                    ious.append((p & g).sum().item() / union)
    return sum(ious) / len(ious)


def test_overfits_one_tiny_clip(tiny_data, repo_root):
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(repo_root / "cutie" / "config"), version_base="1.3"):
        cfg = parse_train_config(
            compose(
                "train_config",
                overrides=[
                    "data=tiny",
                    "model=small",
                    "main_training.seq_length=3",
                    "main_training.crop_size=[48,48]",
                    "main_training.batch_size=1",
                    "main_training.learning_rate=1e-3",
                    "main_training.num_ref_frames=2",
                    "main_training.train_num_points=2048",
                ],
            )
        )
    stage_cfg = cfg.main_training
    loader = build_train_loader(
        cfg.data,
        stage_cfg,
        stage="main_training",
        data_root=str(tiny_data),
        cache_root=str(tiny_data / "none"),
        seed=0,
        rank=0,
        world_size=1,
        batch_size=1,
        num_workers=0,
        device=torch.device("cpu"),
        backend="torch",
        total_iterations=100,
    )
    batch = next(loader.iterate(0))
    loader.close()
    assert int(batch["num_objects"][0]) >= 1
    plan = plan_stage(cfg, "main_training", world_size=1, device=torch.device("cpu"))
    net = build_network(cfg.model, single_object=False)
    model = ClipModel(net, num_ref_frames=2, deep_update_prob=0.0)
    loss = LossComputer(LossSettings.of(stage_cfg, cfg.model))
    opt = build_optimizer(net, stage_cfg, plan.adam_eps)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    history = []
    for _ in range(MAX_STEPS):
        result = train_step(model, batch, loss.compute, opt, scaler, plan, 3.0)
        assert result.finite
        history.append(_mean_iou(batch, result.output))
        if history[-1] > 0.8:
            break
    print(f"mean IoU {history[-1]:.3f} after {len(history)} steps")
    assert history[-1] > 0.8, f"mean IoU after {len(history)} steps: {history[-5:]}"
    assert history[0] < 0.8  # it really learned, it did not start there
