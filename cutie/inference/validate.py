"""Validation during training: the inference procedure over a DAVIS-layout set, scored with J&F in memory."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from cutie.inference.runner import Timer, run_video
from cutie.inference.settings import InferenceSettings
from cutie.inference.video_io import VideoReader, list_videos, save_index_png
from cutie.metrics.davis import DavisReport, check_prediction_size, evaluate_sequence, read_ground_truth

log = logging.getLogger(__name__)


def evaluate_video_masks(
    name: str, mask_dir: Path, predictions: dict[str, np.ndarray], report: DavisReport, late_objects: bool = False
) -> None:
    """Scores one video's predicted index masks (frame stem -> H*W) against its ground-truth folder (DAVIS
    protocol, or with `late_objects` each object after its first mask) into `report`; every ground-truth frame
    is checked against the first one and its prediction."""
    stems, gt = read_ground_truth(mask_dir)
    missing = [s for s in stems if s not in predictions]
    if missing:
        raise ValueError(f"{name}: no prediction for ground-truth frames {missing[:5]} (no such image frame?)")
    for s in stems:
        check_prediction_size(f"{name}/{s} (prediction)", predictions[s].shape, gt.shape[1:])
    pred = np.stack([predictions[s].astype(np.int64) for s in stems])
    scored, unscored = evaluate_sequence(name, gt, pred, late_objects=late_objects, frames=stems)
    report.objects += scored
    report.unscored += unscored


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
    use_all_masks: bool = False,
) -> dict[str, float]:
    """Segments every video of `subset` (default: every folder of mask_dir) from its first-frame masks (with
    `use_all_masks`, objects that appear later from their first mask, and scored after it) and
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
    report = DavisReport([])
    network.eval()
    try:
        for name in videos:
            reader = VideoReader(name, image_dir, mask_dir, size=480, use_all_masks=use_all_masks)
            predictions: dict[str, np.ndarray] = {}
            for frame, ids in run_video(network, reader, settings, device, timer):
                predictions[frame.name] = ids
                if out_dir is not None:
                    save_index_png(Path(out_dir) / name / f"{frame.name}.png", ids, reader.palette)
            evaluate_video_masks(name, Path(mask_dir) / name, predictions, report, late_objects=use_all_masks)
    finally:
        network.train(was_training)
    for note in report.notes():
        log.warning("validation: %s: %s%s", note[0], "" if note[1] == "yes" else "not scored: ", note[2])
    metrics = report.summary()
    metrics["fps"] = timer.fps
    log.info("validation on %d videos: J&F %.4f (%.1f frames/s)", len(videos), metrics["J&F-Mean"], timer.fps)
    return metrics
