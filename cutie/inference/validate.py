"""Validation during training: the inference procedure over a DAVIS-layout set, scored with J&F in memory."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import numpy as np
import torch

from cutie.inference.runner import InferenceOutOfMemory, Timer, run_video
from cutie.inference.settings import InferenceSettings
from cutie.inference.shards import RankShare, VideoScores, balanced_shards, merge
from cutie.inference.video_io import VideoReader, count_frames, list_videos, save_index_png
from cutie.metrics.davis import DavisReport, check_prediction_size, evaluate_sequence, read_ground_truth
from cutie.utils import dist
from cutie.utils.dist import DistState

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


def segment_and_score(
    network: torch.nn.Module,
    name: str,
    *,
    image_dir: str,
    mask_dir: str,
    settings: InferenceSettings,
    device: torch.device,
    timer: Timer,
    out_dir: str | None,
    use_all_masks: bool,
    report: DavisReport,
) -> None:
    """Segments one video from its first-frame masks (with `use_all_masks` each object from its first mask)
    and scores it into `report`; `out_dir`: also writes its masks (<out_dir>/<video>/<frame>.png)."""
    reader = VideoReader(name, image_dir, mask_dir, size=480, use_all_masks=use_all_masks)
    predictions: dict[str, np.ndarray] = {}
    for frame, ids in run_video(network, reader, settings, device, timer):
        predictions[frame.name] = ids
        if out_dir is not None:
            save_index_png(Path(out_dir) / name / f"{frame.name}.png", ids, reader.palette)
    evaluate_video_masks(name, Path(mask_dir) / name, predictions, report, late_objects=use_all_masks)


def _one_process(network: torch.nn.Module, videos: list[str], **kw) -> tuple[DavisReport, Timer]:
    timer = Timer()
    report = DavisReport([])
    for name in videos:
        segment_and_score(network, name, timer=timer, report=report, **kw)
    return report, timer


def _sharded(
    network: torch.nn.Module, state: DistState, videos: list[str] | None, listing: Exception | None, **kw
) -> tuple[DavisReport, Timer]:
    """This rank's share of the videos (cutie/inference/shards.py) merged with every other rank's: the report
    over all videos and a Timer of all frames over the slowest rank's seconds, the same on every rank. Every
    rank calls the one collective exactly once whatever happens (no video for this rank, a failure), so none
    is left waiting: an error travels with the scores and every rank raises it (the failing one chained to its
    own). `listing`: the error listing the videos raised on this rank (then `videos` is None)."""
    share = RankShare(state.rank, tuple(videos or ()))
    timer = Timer()
    cause, name = listing, "(listing the videos)"
    if listing is None:
        try:
            counts = []
            for name in share.videos:  # `name` labels an error with the video it came from
                counts.append(count_frames(kw["image_dir"], name))
            for i in balanced_shards(counts, state.world_size)[state.rank]:
                name = share.videos[i]
                part = DavisReport([])
                segment_and_score(network, name, timer=timer, report=part, **kw)
                share.scores.append(VideoScores(i, part.objects, part.unscored))
        except Exception as e:  # sent to the others below and raised on every rank by merge()
            cause = e
    if cause is not None:
        share.error = f"{name}: {type(cause).__name__}: {cause}"
        share.disk_full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
        share.out_of_memory = cause.objects if isinstance(cause, InferenceOutOfMemory) else None
    share.frames, share.seconds = timer.frames, timer.seconds
    shares = dist.all_gather_object(share, host=True)
    if len(shares) != state.world_size:
        raise RuntimeError(f"validation over {state.world_size} processes without their process group (dist.init)")
    try:
        report, frames, seconds = merge(shares)  # type: ignore[arg-type]
    except Exception as e:
        if cause is None:
            raise
        raise e from cause
    return report, Timer(frames, seconds)


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
    dist_state: DistState | None = None,
) -> dict[str, float]:
    """Segments every video of `subset` (default: every folder of mask_dir) from its first-frame masks (with
    `use_all_masks`, objects that appear later from their first mask, and scored after it) and
    returns the DAVIS global table (J&F-Mean, J-Mean, F-Mean, recalls, decays) plus `fps` (network steps
    only). The network runs in eval mode and gets its previous mode back. `settings`: the procedure's
    settings (default: the official eval settings, AMP on CUDA). `out_dir`: also write the masks as PNGs
    (<out_dir>/<video>/<frame>.png).

    `dist_state` of several processes: every rank must call this; each segments its share of the videos on
    its `device` (and writes their PNGs), and every rank returns the same table, bit-identical to one
    process's; `fps` is then all frames over the slowest rank's network seconds (the group's throughput).
    Only rank 0 logs. A frame that does not fit the device's memory raises InferenceOutOfMemory (on every
    rank)."""
    from cutie.model.weights import unwrap

    device = torch.device(device)
    settings = settings or InferenceSettings(amp=device.type == "cuda")
    state = dist_state or DistState()
    network = unwrap(net)
    was_training = network.training
    kw = dict(image_dir=image_dir, mask_dir=mask_dir, settings=settings, device=device, out_dir=out_dir,
              use_all_masks=use_all_masks)  # fmt: skip
    videos: list[str] | None = None
    listing: Exception | None = None
    try:
        videos = list_videos(mask_dir, subset)
    except Exception as e:
        if not state.distributed:
            raise
        listing = e  # raised on every rank after the collective
    if videos is not None and max_videos is not None:
        videos = videos[:max_videos]
    network.eval()
    try:
        if state.distributed:
            report, timer = _sharded(network, state, videos, listing, **kw)
        else:
            report, timer = _one_process(network, videos, **kw)
    finally:
        network.train(was_training)
    if state.is_main:
        for note in report.notes():
            log.warning("validation: %s: %s%s", note[0], "" if note[1] == "yes" else "not scored: ", note[2])
    metrics = report.summary()
    metrics["fps"] = timer.fps
    if state.is_main:
        over = f" over {state.world_size} processes" if state.distributed else ""
        log.info("validation on %d videos%s: J&F %.4f (%.1f frames/s)", len(videos or ()), over,
                 metrics["J&F-Mean"], timer.fps)  # fmt: skip
    return metrics
