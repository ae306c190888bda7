"""SA-V val/test scoring: per-object J&F over per-object PNG folders, as SA-V's own evaluator
(facebookresearch/sam2, sav_dataset/sav_evaluator.py) scores them.

Layout, ground truth and prediction alike: <root>/<video>/<object>/<frame>.png, one binary mask per object and
frame (any non-zero pixel is the object), so objects may overlap (a person and, separately, their hand).

Protocol, per object: its ground-truth frames (the 6 fps annotations) without the first and the last; from the
first of them on which the object shows in the ground truth or in the prediction, every frame gets J (IoU, 1 when
both are empty) and F (the DAVIS boundary measure, tolerance 0.008 of the diagonal); the object's J and F are
their means over those frames. J-Mean and F-Mean average over every object of every video and J&F-Mean is their
mean (fractions here; SA-V prints percentages). There is no recall or decay.

Not scored, and listed with the reason (printed and in notes-<split>.csv), never dropped silently: an object with
fewer than 3 annotated frames and one whose ground truth is empty on every scored frame (SA-V's evaluator has no
score for either and stops).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cutie.metrics.davis import (
    Unscored,
    check_prediction_size,
    format_notes,
    format_table,
    list_sequences,
    read_index_mask,
    write_csv_atomic,
    write_notes_csv,
)
from cutie.metrics.measures import boundary_f_measure, region_similarity

SAV_COLUMNS = ("J&F-Mean", "J-Mean", "F-Mean")


@dataclass(frozen=True)
class SavObjectResult:
    """One object's per-frame scores over its counted frames."""

    sequence: str
    object_name: str  # its folder name, e.g. "000"
    j: np.ndarray  # (S,) per-frame J
    f: np.ndarray  # (S,) per-frame F

    @property
    def name(self) -> str:
        return f"{self.sequence}_{self.object_name}"

    @property
    def j_mean(self) -> float:
        return float(np.mean(self.j))

    @property
    def f_mean(self) -> float:
        return float(np.mean(self.f))


@dataclass
class SavReport:
    objects: list[SavObjectResult]
    unscored: list[Unscored] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """J&F-Mean, J-Mean, F-Mean over all scored objects, as fractions."""
        if not self.objects:
            why = "; ".join(f"{u.name}: {u.reason}" for u in self.unscored[:5]) or "no object folder"
            raise ValueError(f"no SA-V object could be scored ({why})")
        jm = float(np.mean([o.j_mean for o in self.objects]))
        fm = float(np.mean([o.f_mean for o in self.objects]))
        return {"J&F-Mean": (jm + fm) / 2, "J-Mean": jm, "F-Mean": fm}

    def per_object_rows(self) -> list[tuple[str, str, float, float, float]]:
        return [(o.sequence, o.object_name, (o.j_mean + o.f_mean) / 2, o.j_mean, o.f_mean) for o in self.objects]

    def notes(self) -> list[tuple[str, str, str]]:
        return [(u.name, "no", u.reason) for u in self.unscored]

    def format_tables(self, split: str = "sav-val") -> str:
        summary = self.summary()
        head = f"--------------------------- Global results for {split} ---------------------------\n"
        table = format_table(SAV_COLUMNS, [[summary[k] for k in SAV_COLUMNS]])
        rows = [list(r) for r in self.per_object_rows()]
        per_object = format_table(("Sequence", "Object", "J&F", "J", "F"), rows)
        middle = f"\n---------- Per object results for {split} ----------\n"
        return head + table + middle + per_object + format_notes(self.notes())

    def write_csv(self, out_dir: str | os.PathLike, split: str = "sav-val") -> tuple[Path, Path, Path]:
        """global_results-<split>.csv, per-object_results-<split>.csv and notes-<split>.csv, atomically."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        global_path = out_dir / f"global_results-{split}.csv"
        object_path = out_dir / f"per-object_results-{split}.csv"
        write_csv_atomic(global_path, SAV_COLUMNS, [[f"{summary[k]:.6f}" for k in SAV_COLUMNS]])
        rows = [[s, o, f"{jf:.6f}", f"{j:.6f}", f"{f:.6f}"] for s, o, jf, j, f in self.per_object_rows()]
        write_csv_atomic(object_path, ("Sequence", "Object", "J&F", "J", "F"), rows)
        return global_path, object_path, write_notes_csv(out_dir, split, self.notes())


def read_binary_mask(path: Path) -> np.ndarray:
    """An SA-V per-object PNG as an H*W bool mask; more than one non-zero value is an error (one object per file)."""
    values = read_index_mask(path)
    if len(np.unique(values)) > 2:
        raise ValueError(
            f"{path}: holds {len(np.unique(values))} distinct values but the SA-V layout has one object per PNG "
            "(0 background, one non-zero value); fix: write each object into its own <object>/ folder"
        )
    return values > 0


def score_object(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (J, F) of one object over bool S*H*W masks (its scored frames): frames before it first shows
    in the ground truth or the prediction are not counted, as SA-V's evaluator does. Empty when it never shows."""
    shows = gt.any(axis=(1, 2)) | pred.any(axis=(1, 2))  # (S,)
    if not shows.any():
        return np.zeros(0), np.zeros(0)
    start = int(np.argmax(shows))
    g, p = gt[start:], pred[start:]
    j = region_similarity(g, p).astype(np.float64)
    f = np.array([boundary_f_measure(a, b) for a, b in zip(g, p, strict=True)], dtype=np.float64)
    return j, f


def _object_folders(video_dir: Path) -> list[str]:
    return sorted(p.name for p in video_dir.iterdir() if p.is_dir())


def _check_files(gt_root: Path, pred_root: Path, videos: Sequence[str], strict: bool) -> None:
    """One error naming every missing prediction folder or file of a scored frame."""
    problems: list[str] = []
    for video in videos:
        gt_dir, pred_dir = gt_root / video, pred_root / video
        if not gt_dir.is_dir():
            problems.append(f"ground-truth video folder missing: {gt_dir}")
            continue
        for obj in _object_folders(gt_dir):
            frames = sorted(p.stem for p in (gt_dir / obj).glob("*.png"))[1:-1]
            problems += [f"missing prediction: {pred_dir / obj / f'{f}.png'}" for f in frames
                         if not (pred_dir / obj / f"{f}.png").is_file()]  # fmt: skip
    if strict and pred_root.is_dir():
        extra = sorted({p.name for p in pred_root.iterdir() if p.is_dir()} - set(videos))
        problems += [f"extra prediction video folder (no ground truth): {pred_root / v}" for v in extra]
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise FileNotFoundError(
            f"SA-V predictions in {pred_root} do not match the ground truth in {gt_root} "
            f"({len(problems)} problem(s)):\n  {shown}{more}"
        )


def evaluate_sav_video(gt_dir: Path, pred_dir: Path) -> tuple[list[SavObjectResult], list[Unscored]]:
    """Scores every object folder of one video (see the module docstring)."""
    video = gt_dir.name
    objects = _object_folders(gt_dir)
    if not objects:
        return [], [Unscored(video, None, f"no object folder in {gt_dir} (expected <object>/<frame>.png)")]
    results, unscored = [], []
    size, first_path = _reference_size(gt_dir, objects)
    for obj in objects:
        frames = sorted(p.stem for p in (gt_dir / obj).glob("*.png"))
        if len(frames) < 3:
            why = f"{len(frames)} annotated frame(s): the first and the last are not scored, nothing is left"
            unscored.append(Unscored(video, obj, why))
            continue
        gts, preds = [], []
        for f in frames[1:-1]:
            path = gt_dir / obj / f"{f}.png"
            g = read_binary_mask(path)
            if g.shape != size:
                raise ValueError(
                    f"{path}: ground-truth mask is {g.shape[1]}x{g.shape[0]} but {first_path} is {size[1]}x{size[0]} "
                    "(W x H); fix: every annotation of a video must have the size of its frames"
                )
            p = read_binary_mask(pred_dir / obj / f"{f}.png")
            check_prediction_size(pred_dir / obj / f"{f}.png", p.shape, g.shape)
            gts.append(g)
            preds.append(p)
        gt, pred = np.stack(gts), np.stack(preds)  # S*H*W bool
        if not gt.any():
            why = "the ground truth is empty on every scored frame (SA-V's evaluator has no score for it)"
            unscored.append(Unscored(video, obj, why))
            continue
        j, f = score_object(gt, pred)
        results.append(SavObjectResult(video, obj, j, f))
    return results, unscored


def _reference_size(gt_dir: Path, objects: list[str]) -> tuple[tuple[int, int] | None, Path | None]:
    """(H, W) of the video's first annotation (its first object's first PNG): every mask must have it."""
    for obj in objects:
        pngs = sorted((gt_dir / obj).glob("*.png"))
        if pngs:
            with Image.open(pngs[0]) as img:
                return (img.height, img.width), pngs[0]
    return None, None


def is_sav_layout(gt_root: str | os.PathLike, videos: Iterable[str]) -> bool:
    """Whether the ground truth is SA-V's per-object layout: the first video folder holds folders, not PNGs."""
    for video in videos:
        folder = Path(gt_root) / video
        if folder.is_dir():
            entries = list(folder.iterdir())
            return any(p.is_dir() for p in entries) and not any(p.suffix == ".png" for p in entries)
    return False


def evaluate_sav_folders(
    gt_root: str | os.PathLike,
    pred_root: str | os.PathLike,
    subset: str | os.PathLike | Iterable[str] | None = None,
    *,
    progress: bool = False,
) -> SavReport:
    """Scores SA-V-layout folders. `subset`: a file of video names (sav_val.txt) or names; None: every video
    folder of gt_root, and prediction folders without ground truth are then rejected."""
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    for what, root in (("ground-truth", gt_root), ("prediction", pred_root)):
        if not root.is_dir():
            raise FileNotFoundError(f"{what} folder {root} not found")
    videos = list_sequences(gt_root, subset)
    _check_files(gt_root, pred_root, videos, strict=subset is None)
    iterator: Iterable[str] = videos
    if progress:
        from tqdm import tqdm

        iterator = tqdm(videos, desc="J&F (SA-V)")
    report = SavReport([])
    for video in iterator:
        scored, unscored = evaluate_sav_video(gt_root / video, pred_root / video)
        report.objects += scored
        report.unscored += unscored
    return report
