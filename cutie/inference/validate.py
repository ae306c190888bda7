"""Validation during training: the inference procedure over a DAVIS-layout set, scored with J&F in memory."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from cutie.inference.runner import Timer, run_video
from cutie.inference.settings import InferenceSettings
from cutie.inference.video_io import VideoReader, list_videos, save_index_png
from cutie.metrics.davis import DavisReport, ObjectResult, evaluate_sequence, read_index_mask

log = logging.getLogger(__name__)


def evaluate_video_masks(
    name: str, mask_dir: Path, predictions: dict[str, np.ndarray], void_label: int = 255
) -> list[ObjectResult]:
    """Scores one video's predicted index masks (frame stem -> H*W) against its ground-truth folder."""
    stems = sorted(p.stem for p in mask_dir.glob("*.png"))
    missing = [s for s in stems if s not in predictions]
    if missing:
        raise ValueError(f"{name}: no prediction for ground-truth frames {missing[:5]} (no such image frame?)")
    gt = np.stack([read_index_mask(mask_dir / f"{s}.png") for s in stems])
    gt[gt == void_label] = 0
    pred = np.stack([predictions[s].astype(np.int64) for s in stems])
    return evaluate_sequence(name, gt, pred)


def validate(
    net: torch.nn.Module,
    *,
    image_dir: str,
    mask_dir: str,
    subset: str | None,
    device: torch.device | str,
    out_dir: str | None = None,
    max_videos: int | None = None,
    settings: InferenceSettings | None = None,
) -> dict[str, float]:
    """Segments every video of `subset` (default: every folder of mask_dir) from its first-frame masks and
    returns the DAVIS global table (J&F-Mean, J-Mean, F-Mean, recalls, decays) plus `fps` (network steps
    only). The network runs in eval mode and gets its previous mode back. `settings`: the procedure's
    settings (default: the official eval settings, AMP on CUDA). `out_dir`: also write the masks as PNGs
    (<out_dir>/<video>/<frame>.png)."""
    from cutie.model.weights import unwrap

    device = torch.device(device)
    settings = settings or InferenceSettings(amp=device.type == "cuda")
    network = unwrap(net)
    was_training = network.training
    videos = list_videos(mask_dir, subset)
    if max_videos is not None:
        videos = videos[:max_videos]
    timer = Timer()
    objects: list[ObjectResult] = []
    network.eval()
    try:
        for name in videos:
            reader = VideoReader(name, image_dir, mask_dir, size=480)
            predictions: dict[str, np.ndarray] = {}
            for frame, ids in run_video(network, reader, settings, device, timer):
                predictions[frame.name] = ids
                if out_dir is not None:
                    save_index_png(Path(out_dir) / name / f"{frame.name}.png", ids, reader.palette)
            objects += evaluate_video_masks(name, Path(mask_dir) / name, predictions)
    finally:
        network.train(was_training)
    metrics = DavisReport(objects).summary()
    metrics["fps"] = timer.fps
    log.info("validation on %d videos: J&F %.4f (%.1f frames/s)", len(videos), metrics["J&F-Mean"], timer.fps)
    return metrics
