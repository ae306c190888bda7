"""Evaluation of a dataset from the eval config: masks written in the DAVIS layout (SA-V's per-object layout for
layout=sav), speed and memory reported, J&F computed on the annotated frames where there is ground truth to
score; what cannot be scored is listed. `cutie/eval.py` is the command line over `run_evaluation`."""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from tqdm import tqdm

from cutie.config.evaluation import EvalConfig
from cutie.config.typed import ConfigError
from cutie.inference.long_term import LongTermSettings
from cutie.inference.runner import InferenceOutOfMemory, Timer, peak_memory_mb, run_video
from cutie.inference.sav_io import SavVideoReader, save_object_pngs
from cutie.inference.settings import InferenceSettings
from cutie.inference.video_io import (
    FrameSource,
    VideoReader,
    check_video_files,
    list_videos,
    required_frames,
    save_index_png,
)
from cutie.metrics import DavisReport, SavReport, evaluate_folders, evaluate_sav_folders
from cutie.metrics.davis import VOID_LABEL, read_index_mask
from cutie.utils import strict_json
from cutie.utils.atomic import atomic_write, atomic_write_json
from cutie.utils.paths import check_output_folder

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
    layout: str = "davis"  # "davis" | "sav"
    wrong_size_masks: str = "error"  # "error" | "skip": a mask of another size than its frame


def resolve_dataset(cfg: EvalConfig) -> DatasetSpec:
    """The chosen dataset's entry of `datasets`, with the top-level overrides (non-null) applied, checked."""
    name = cfg.dataset
    if name not in cfg.datasets:
        raise EvalConfigError(f"dataset={name} is unknown; choose one of: {', '.join(cfg.datasets)}")
    entry = cfg.chosen_dataset()
    for key in ("image_directory", "mask_directory"):
        value = getattr(entry, key)
        if value is None:
            raise EvalConfigError(f"dataset={name} needs {key}=DIR (a folder of <video>/ folders)")
        if not Path(value).is_dir():
            raise EvalConfigError(
                f"{key} {value} (dataset={name}) not found: set data_root=DIR (or link the data, see "
                f"data_links/README.md), or {key}=DIR"
            )
        parts = [Path(value) / sub for sub in ("JPEGImages", "Annotations")]
        if entry.layout != "sav" and all(p.is_dir() for p in parts):  # the dataset folder (data.custom_root)
            raise EvalConfigError(
                f"{key}={value} (dataset={name}) is a dataset folder, holding JPEGImages/ and Annotations/; fix: "
                f"image_directory={_part(parts[0])} mask_directory={_part(parts[1])}"
            )
    for key in ("subset", "json_directory"):
        value = getattr(entry, key)
        if value is not None and not Path(value).is_file():
            raise EvalConfigError(f"{key} {value} (dataset={name}) not found")
    if entry.layout == "sav" and entry.wrong_size_masks == "skip":
        raise EvalConfigError(f"dataset={name}: wrong_size_masks=skip is for the DAVIS layout only; use error")

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
        layout=entry.layout,
        wrong_size_masks=entry.wrong_size_masks,
    )


def _part(path: Path) -> Path:
    """A dataset folder's JPEGImages/ or Annotations/, or its one resolution folder inside (DAVIS: 480p/)."""
    inner = [p for p in path.iterdir() if p.is_dir()]
    return inner[0] if len(inner) == 1 and inner[0].name.endswith("p") and inner[0].name[:-1].isdigit() else path


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
    from cutie.model.weights import WeightsError, load_weights, read_weights_file

    if cfg.weights is None:
        raise EvalConfigError("weights=PATH is required (an official cutie-*.pth or a weights file of ours)")
    net = build_network(cfg.model)
    try:
        load_weights(net, read_weights_file(cfg.weights))
    except WeightsError as e:  # name the file and the model choice it was loaded for
        raise WeightsError(f"weights={cfg.weights} under model={cfg.model.name}: {e}") from None
    return net.to(device).eval()


def unscorable_video(spec: DatasetSpec, videos: list[str]) -> str | None:
    """evaluate=auto scores when every video has ground truth to score, i.e. a mask on every frame, or (sparse
    annotation) at least 3 annotated frames with an object annotated on more than one of them; else this says
    which video has none and why (None: every video can be scored). Folders of first-appearance masks only
    (YouTube-VOS, MOSE valid) have nothing to score. SA-V's layout is annotated throughout."""
    if spec.layout == "sav":
        return None
    for v in videos:
        frames = {p.stem for p in (spec.image_directory / v).iterdir()}
        masks = sorted(p for p in (spec.mask_directory / v).glob("*.png"))
        if not frames:
            return f"video {v} has no frames"
        if frames <= {p.stem for p in masks}:
            continue
        if len(masks) < 3:
            return f"video {v} has {len(masks)} annotated frames (at least 3 are scored)"
        seen: set[int] = set()
        for path in masks:
            ids = set(np.unique(read_index_mask(path)).tolist()) - {0, 255}
            if ids & seen:
                break  # an object annotated twice: there is a frame to score
            seen |= ids
        else:
            return f"no object of video {v} is annotated on more than one frame (first-appearance masks only)"
    return None


def make_zip(spec: DatasetSpec, run_dir: Path, exp_id: str, written: Sequence[Path]) -> Path | None:
    """The benchmark-server archive of the masks this run wrote (`written`): YouTube-VOS wants an Annotations/
    folder inside, MOSE the videos. Not the folder's whole content: a rerun with fewer videos (max_videos=, another
    subset) leaves the earlier run's videos there, and the server would score them as this run's. Written
    atomically, so a failed write leaves no truncated archive under the name printed for upload."""
    if spec.name.startswith("y"):
        base = run_dir  # members Annotations/<video>/<frame>.png
    elif spec.name == "mose-val":
        base = run_dir / "Annotations"  # members <video>/<frame>.png
    else:
        return None

    def write(f: IO[bytes]) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for path in sorted(written):
                z.write(path, path.relative_to(base).as_posix())

    archive = run_dir / f"{exp_id}_{spec.name}.zip"
    atomic_write(archive, write)
    return archive


def open_video(
    spec: DatasetSpec, name: str, to_save: set[str] | None, skip_masks: frozenset[str] = frozenset()
) -> FrameSource:
    """The reader of one video in the dataset's layout."""
    if spec.layout == "sav":
        return SavVideoReader(
            name,
            spec.image_directory,
            spec.mask_directory,
            size=spec.size,
            use_all_masks=spec.use_all_masks,
            save_all=spec.save_all,
        )
    return VideoReader(
        name,
        spec.image_directory,
        spec.mask_directory,
        size=spec.size,
        use_all_masks=spec.use_all_masks,
        to_save=to_save,
        skip_masks=skip_masks,
    )


def score_predictions(
    spec: DatasetSpec, out_root: Path, videos: list[str], skip: dict[str, frozenset[str]] | None = None
) -> DavisReport | SavReport:
    """J&F of the written masks: SA-V's per-object protocol for layout=sav, else DAVIS (objects that appear
    later scored after their first mask when use_all_masks); frames without ground truth, or whose mask was left
    out (`skip`: video -> stems), are not scored."""
    if spec.layout == "sav":
        return evaluate_sav_folders(spec.mask_directory, out_root, videos, progress=True)
    return evaluate_folders(
        spec.mask_directory,
        out_root,
        videos,
        progress=True,
        late_objects=spec.use_all_masks,
        extra_frames_ok=True,
        skip=skip,
    )


def _check_masks(spec: DatasetSpec, videos: list[str]) -> dict[str, frozenset[str]]:
    """Every frame and mask before any inference (check_video_files): an unusable file stops the run at once,
    naming it; a wrong-size mask too (naming both files), or with wrong_size_masks=skip it is left out, its frame
    used as unannotated (video -> stems left out)."""
    skipped: dict[str, frozenset[str]] = {}
    for name in tqdm(videos, desc="checking frames and masks", unit="video", leave=False):
        bad = check_video_files(
            spec.image_directory,
            spec.mask_directory,
            name,
            skip=spec.wrong_size_masks == "skip",
            binary=spec.layout == "sav",
        )
        for _, why in bad:
            log.warning("%s; left out: its frame is used as unannotated (wrong_size_masks=skip)", why.split("; fix")[0])
        if bad:
            skipped[name] = frozenset(path.stem for path, _ in bad)
    return skipped


def _refuse_given_void(readers: list[FrameSource]) -> None:
    """Before inference, when the run will be scored (DAVIS layout): no mask given to the network (the first one;
    every one with use_all_masks) may hold the void label 255. The scorer counts it as background, but the
    network would track it as object 255, and the scorer rejects such predictions only after every video ran."""
    for reader in readers:
        if not isinstance(reader, VideoReader):
            continue  # SA-V's binary masks: a pixel is an object or not
        stems = sorted(reader.mask_stems) if reader.use_all_masks else [reader.first_mask]
        for stem in stems:
            path = reader.mask_dir / f"{stem}.png"
            if (read_index_mask(path) == VOID_LABEL).any():
                raise ValueError(
                    f"{path}: holds id {VOID_LABEL}, the void label, which J&F scores as background but the network "
                    f"would be given as an object; fix: give the object an id of 1..{VOID_LABEL - 1}, or "
                    "evaluate=false to write the masks without scoring them"
                )


def memory_fixes(settings: InferenceSettings, objects: int, device: torch.device) -> str:
    """The eval options that lower the memory of a frame, those that keep the results first."""
    fixes = []
    chunk = objects if settings.chunk_size < 1 else settings.chunk_size
    if chunk > 1 and objects > 1:
        fixes.append(f"chunk_size={max(1, chunk // 2)} (objects in groups: the same masks up to rounding)")
    if not settings.amp and device.type == "cuda":
        fixes.append("amp=true")
    if settings.max_internal_size < 1 or settings.max_internal_size > 480:
        fixes.append("max_internal_size=480 (the network's shorter side, as the official high-resolution setting)")
    if settings.max_mem_frames > 2:
        fixes.append(f"max_mem_frames={max(2, settings.max_mem_frames - 2)} (fewer memory frames)")
    return ", or ".join(fixes) if fixes else "a device with more memory"


OWNER_FILE = "evaluated.json"  # in the evaluation folder: the weights, model and data its results are of


def _claim_output(run_dir: Path, cfg: EvalConfig, spec: DatasetSpec) -> dict[str, str]:
    """An evaluation folder holds one model's results. A rerun of the same weights, model and data rewrites it
    (a run redone or finished); other weights, another model or other data into the same folder (the default
    exp_id is the same for every evaluation) would silently replace or mix the earlier masks and tables, so that
    is refused, naming both, before anything is written. Returns the record to write."""
    mine = {
        "weights": str(Path(cfg.weights).resolve()) if cfg.weights else "",
        "model": cfg.model.name,
        "image_directory": str(spec.image_directory.resolve()),
        "mask_directory": str(spec.mask_directory.resolve()),
    }
    record = run_dir / OWNER_FILE
    try:
        theirs = strict_json.loads(record.read_text()) if record.is_file() else None
    except (OSError, ValueError):
        theirs = None  # unreadable: an interrupted write of ours, or not ours; not worth refusing over
    if cfg.weights and isinstance(theirs, dict) and theirs != mine:  # without weights: build_eval_network says so
        differ = [k for k in mine if theirs.get(k) != mine[k]]
        was = ", ".join(f"{k}={theirs.get(k)}" for k in differ)
        now = ", ".join(f"{k}={mine[k]}" for k in differ)
        raise EvalConfigError(
            f"{run_dir} holds the evaluation of {was}; this run ({now}) would overwrite it (fix: exp_id=<new id> "
            f"for a folder of its own, or delete {run_dir} to redo it)"
        )
    return mine


def run_evaluation(cfg: EvalConfig) -> dict[str, float]:
    """Runs the whole evaluation; returns the numbers printed as the last JSON line."""
    from cutie.utils.dist import DistState, pick_device

    device = pick_device(DistState(), cfg.device)
    spec = resolve_dataset(cfg)
    settings = inference_settings(cfg, spec, device)
    run_dir = Path(cfg.output_root) / cfg.exp_id / "eval" / spec.name
    check_output_folder(Path(cfg.output_root) / cfg.exp_id, run_dir)  # before anything is written into it
    owner = _claim_output(run_dir, cfg, spec)
    out_root = run_dir / "Annotations"
    videos = list_videos(spec.mask_directory, spec.subset)
    if cfg.max_videos is not None:
        videos = videos[: cfg.max_videos]
    if not videos:
        raise EvalConfigError(f"dataset={spec.name}: no videos found in {spec.mask_directory}")
    to_save = required_frames(spec.json_directory)
    skipped = _check_masks(spec, videos)
    # every reader up front too: a video's own structure (no frame, no mask, a mask without its frame) is named
    # before the first video runs, and the progress bar knows the frames of the whole run
    readers = [open_video(spec, name, to_save.get(name), skipped.get(name, frozenset())) for name in videos]
    unscorable = unscorable_video(spec, videos) if spec.evaluate == "auto" else None
    evaluate = spec.evaluate == "true" or (spec.evaluate == "auto" and unscorable is None)
    if evaluate:
        _refuse_given_void(readers)
    net = build_eval_network(cfg, device)
    atomic_write_json(run_dir / OWNER_FILE, owner, indent=1)  # the folder is this model's from the first mask on
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    log.info("evaluating %s (%d videos) on %s: %s", spec.name, len(videos), device, settings)
    for note in cfg.notes:
        log.warning(note)

    timer = Timer()
    written: list[Path] = []  # the masks of this run (DAVIS layout), for the benchmark archive
    bar = tqdm(total=sum(len(r) for r in readers), unit="frame")  # the ETA of the whole run; its final count stays
    for i, (name, reader) in enumerate(zip(videos, readers, strict=True)):
        bar.set_description(f"[{i + 1}/{len(videos)}] {name}")
        try:
            for frame, ids in run_video(net, reader, settings, device, timer):
                if isinstance(reader, SavVideoReader):
                    if frame.save:  # save_all or an annotated frame
                        save_object_pngs(out_root / name, frame.name, ids, reader.object_names)
                elif spec.save_all or frame.save:
                    written.append(out_root / name / f"{frame.name}.png")
                    save_index_png(written[-1], ids, reader.palette)
                bar.update(1)
        except InferenceOutOfMemory as e:
            bar.close()
            raise InferenceOutOfMemory(f"{e}; fix: {memory_fixes(settings, e.objects, device)}", e.objects) from e
    bar.close()

    result = {"frames": float(timer.frames), "fps": timer.fps, "peak_memory_mb": peak_memory_mb(device)}
    memory_kind = "CUDA allocated" if device.type == "cuda" else "process RSS"
    print(
        f"{timer.frames} frames in {timer.seconds:.1f}s: {timer.fps:.2f} frames/s; "
        f"peak memory {result['peak_memory_mb']:.0f} MiB ({memory_kind})"
    )
    earlier = sorted({p.name for p in out_root.iterdir() if p.is_dir()} - set(videos)) if out_root.is_dir() else []
    if earlier:  # a rerun with fewer videos into the same folder: say what the folder holds that this run did not
        log.warning(
            "%s also holds %d videos of an earlier run (%s%s), not of this one: the tables and the archive leave "
            "them out",
            out_root, len(earlier), ", ".join(earlier[:3]), ", ..." if len(earlier) > 3 else "",
        )  # fmt: skip
    archive = make_zip(spec, run_dir, cfg.exp_id, written)
    if archive is not None:
        print(f"archive for the benchmark server: {archive}")

    if evaluate:
        report = score_predictions(spec, out_root, videos, skipped)
        print(report.format_tables(spec.name))
        report.write_csv(run_dir, spec.name)
        result = {**report.summary(), "unscored": float(len(report.unscored)), **result}
    else:
        why = (
            f": {unscorable}; evaluate=true scores every video that can be (the others are listed as unscored)"
            if unscorable
            else ""
        )
        print(f"no ground truth to score for {spec.name}{why}; masks written to {out_root}, J&F not computed")
    print(json.dumps({k: round(v, 6) for k, v in result.items()}))
    return result
