"""Evaluation of a dataset from the eval config: masks written in the DAVIS layout, speed and memory reported,
J&F computed where every frame has ground truth. `cutie/eval.py` is the command line over `run_evaluation`."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cutie.config.evaluation import EvalConfig
from cutie.config.typed import ConfigError
from cutie.inference.long_term import LongTermSettings
from cutie.inference.runner import Timer, peak_memory_mb, run_video
from cutie.inference.settings import InferenceSettings
from cutie.inference.video_io import VideoReader, list_videos, required_frames, save_index_png

log = logging.getLogger(__name__)


class EvalConfigError(ConfigError):
    """An eval config value that cannot work; the message names the option."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    image_directory: Path
    mask_directory: Path
    subset: Path | None
    json_directory: Path | None
    size: int
    save_all: bool
    use_all_masks: bool
    mem_every: int
    use_long_term: bool
    evaluate: str  # "true" | "false" | "auto"


def resolve_dataset(cfg: EvalConfig) -> DatasetSpec:
    """The chosen dataset's entry of `datasets`, with the top-level overrides (non-null) applied, checked."""
    name = cfg.dataset
    if name not in cfg.datasets:
        raise EvalConfigError(f"dataset={name} is unknown; choose one of: {', '.join(cfg.datasets)}")
    entry = cfg.chosen_dataset()
    for key in ("image_directory", "mask_directory"):
        value = getattr(entry, key)
        if value is None:
            raise EvalConfigError(f"dataset={name} needs {key}=DIR (a DAVIS-layout folder of <video>/ folders)")
        if not Path(value).is_dir():
            raise EvalConfigError(
                f"{key} {value} (dataset={name}) not found: set data_root=DIR (or link the data, see "
                f"data_links/README.md), or {key}=DIR"
            )
    for key in ("subset", "json_directory"):
        value = getattr(entry, key)
        if value is not None and not Path(value).is_file():
            raise EvalConfigError(f"{key} {value} (dataset={name}) not found")

    def opt_path(value: str | None) -> Path | None:
        return None if value is None else Path(value)

    return DatasetSpec(
        name=name,
        image_directory=Path(entry.image_directory),
        mask_directory=Path(entry.mask_directory),
        subset=opt_path(entry.subset),
        json_directory=opt_path(entry.json_directory),
        size=entry.size,
        save_all=entry.save_all,
        use_all_masks=entry.use_all_masks,
        mem_every=entry.mem_every,
        use_long_term=entry.use_long_term,
        evaluate=str(entry.evaluate).lower(),
    )


def inference_settings(cfg: EvalConfig, spec: DatasetSpec, device: torch.device) -> InferenceSettings:
    lt = cfg.long_term
    return InferenceSettings(
        mem_every=spec.mem_every,
        max_mem_frames=cfg.max_mem_frames,
        top_k=cfg.top_k,
        stagger_updates=cfg.stagger_updates,
        use_long_term=spec.use_long_term,
        long_term=LongTermSettings(
            max_mem_frames=lt.max_mem_frames,
            min_mem_frames=lt.min_mem_frames,
            num_prototypes=lt.num_prototypes,
            max_num_tokens=lt.max_num_tokens,
            buffer_tokens=lt.buffer_tokens,
            count_usage=lt.count_usage,
        ),
        chunk_size=cfg.chunk_size,
        flip_aug=cfg.flip_aug,
        max_internal_size=cfg.max_internal_size,
        amp=cfg.amp and device.type == "cuda",
    )


def build_eval_network(cfg: EvalConfig, device: torch.device) -> torch.nn.Module:
    from cutie.model import build_network
    from cutie.model.weights import load_weights, read_weights_file

    if cfg.weights is None:
        raise EvalConfigError("weights=PATH is required (an official cutie-*.pth or a weights file of ours)")
    net = build_network(cfg.model)
    load_weights(net, read_weights_file(cfg.weights))
    return net.to(device).eval()


def has_full_ground_truth(spec: DatasetSpec, videos: list[str]) -> bool:
    """Every video has a mask for every frame (so J&F can be computed)."""
    for v in videos:
        frames = {p.stem for p in (spec.image_directory / v).iterdir()}
        masks = {p.stem for p in (spec.mask_directory / v).glob("*.png")}
        if not frames or not frames <= masks:
            return False
    return True


def make_zip(spec: DatasetSpec, run_dir: Path, exp_id: str) -> Path | None:
    """The benchmark-server archive: YouTube-VOS wants an Annotations/ folder inside, MOSE the videos."""
    if spec.name.startswith("y"):
        return Path(shutil.make_archive(str(run_dir / f"{exp_id}_{spec.name}"), "zip", run_dir, "Annotations"))
    if spec.name == "mose-val":
        return Path(shutil.make_archive(str(run_dir / f"{exp_id}_{spec.name}"), "zip", run_dir / "Annotations"))
    return None


def run_evaluation(cfg: EvalConfig) -> dict[str, float]:
    """Runs the whole evaluation; returns the numbers printed as the last JSON line."""
    from cutie.utils.dist import DistState, pick_device

    device = pick_device(DistState(), cfg.device)
    spec = resolve_dataset(cfg)
    settings = inference_settings(cfg, spec, device)
    run_dir = Path(cfg.output_root) / cfg.exp_id / "eval" / spec.name
    out_root = run_dir / "Annotations"
    videos = list_videos(spec.mask_directory, spec.subset)
    if cfg.max_videos is not None:
        videos = videos[: cfg.max_videos]
    if not videos:
        raise EvalConfigError(f"dataset={spec.name}: no videos found in {spec.mask_directory}")
    to_save = required_frames(spec.json_directory)
    net = build_eval_network(cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    log.info("evaluating %s (%d videos) on %s: %s", spec.name, len(videos), device, settings)

    timer = Timer()
    for i, name in enumerate(videos):
        reader = VideoReader(
            name,
            spec.image_directory,
            spec.mask_directory,
            size=spec.size,
            use_all_masks=spec.use_all_masks,
            to_save=to_save.get(name),
        )
        bar = tqdm(total=len(reader), desc=f"[{i + 1}/{len(videos)}] {name}", unit="frame", leave=False)
        for frame, ids in run_video(net, reader, settings, device, timer):
            if spec.save_all or frame.save:
                save_index_png(out_root / name / f"{frame.name}.png", ids, reader.palette)
            bar.update(1)
        bar.close()

    result = {"frames": float(timer.frames), "fps": timer.fps, "peak_memory_mb": peak_memory_mb(device)}
    memory_kind = "CUDA allocated" if device.type == "cuda" else "process RSS"
    print(
        f"{timer.frames} frames in {timer.seconds:.1f}s: {timer.fps:.2f} frames/s; "
        f"peak memory {result['peak_memory_mb']:.0f} MiB ({memory_kind})"
    )
    archive = make_zip(spec, run_dir, cfg.exp_id)
    if archive is not None:
        print(f"archive for the benchmark server: {archive}")

    evaluate = spec.evaluate == "true" or (spec.evaluate == "auto" and has_full_ground_truth(spec, videos))
    if evaluate:
        from cutie.metrics import evaluate_folders

        report = evaluate_folders(spec.mask_directory, out_root, videos)
        print(report.format_tables(spec.name))
        report.write_csv(run_dir, spec.name)
        result = {**{k: v for k, v in report.summary().items()}, **result}
    else:
        print(f"no full ground truth for {spec.name}: masks written to {out_root}, J&F not computed")
    print(json.dumps({k: round(v, 6) for k, v in result.items()}))
    return result
