"""The DAVIS 2017 semi-supervised evaluation over folders of index masks.

Protocol (as the DAVIS toolkit): the objects of a sequence are ids 1..max of its first ground-truth frame
(255, the void label, counts as background); the first and the last frame are not scored; every object gets
J and F statistics (mean, recall, decay) over the remaining frames; J-Mean and F-Mean average over all objects
of all sequences, J&F-Mean is their mean.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cutie.metrics.measures import boundary_f_measure, mean_recall_decay, region_similarity
from cutie.utils.atomic import atomic_write_text

VOID_LABEL = 255
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass(frozen=True)
class ObjectResult:
    """Per-frame scores of one object over the scored frames, and their statistics."""

    sequence: str
    object_id: int
    j: np.ndarray  # (T-2,) per-frame J
    f: np.ndarray  # (T-2,) per-frame F

    @property
    def name(self) -> str:
        return f"{self.sequence}_{self.object_id}"

    @property
    def j_stats(self) -> tuple[float, float, float]:
        return mean_recall_decay(self.j)

    @property
    def f_stats(self) -> tuple[float, float, float]:
        return mean_recall_decay(self.f)


@dataclass
class DavisReport:
    """Every object's result; the global table is computed from them."""

    objects: list[ObjectResult]

    def summary(self) -> dict[str, float]:
        """The toolkit's global table as fractions: J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, ..."""
        if not self.objects:
            raise ValueError("no object was evaluated: the ground truth holds no object in its first frames")
        j = np.array([o.j_stats for o in self.objects], dtype=np.float64)  # O*3
        f = np.array([o.f_stats for o in self.objects], dtype=np.float64)
        jm, jr, jd = np.nanmean(j, axis=0)
        fm, fr, fd = np.nanmean(f, axis=0)
        values = ((jm + fm) / 2, jm, jr, jd, fm, fr, fd)
        return {k: float(v) for k, v in zip(GLOBAL_COLUMNS, values, strict=True)}

    def per_sequence_rows(self) -> list[tuple[str, float, float]]:
        """(object name, J-Mean, F-Mean) per object, as the toolkit's per-sequence table."""
        return [(o.name, o.j_stats[0], o.f_stats[0]) for o in self.objects]

    def format_tables(self, split: str = "val") -> str:
        """Both tables as the toolkit prints them (three decimals)."""
        summary = self.summary()
        out = io.StringIO()
        out.write(f"--------------------------- Global results for {split} ---------------------------\n")
        out.write(_format_table(GLOBAL_COLUMNS, [[summary[k] for k in GLOBAL_COLUMNS]]))
        out.write(f"\n---------- Per sequence results for {split} ----------\n")
        out.write(_format_table(("Sequence", "J-Mean", "F-Mean"), [list(r) for r in self.per_sequence_rows()]))
        return out.getvalue()

    def write_csv(self, out_dir: str | os.PathLike, split: str = "val") -> tuple[Path, Path]:
        """global_results-<split>.csv and per-sequence_results-<split>.csv, written atomically."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        global_path = out_dir / f"global_results-{split}.csv"
        seq_path = out_dir / f"per-sequence_results-{split}.csv"
        _write_csv_atomic(global_path, GLOBAL_COLUMNS, [[f"{summary[k]:.6f}" for k in GLOBAL_COLUMNS]])
        rows = [[name, f"{jm:.6f}", f"{fm:.6f}"] for name, jm, fm in self.per_sequence_rows()]
        _write_csv_atomic(seq_path, ("Sequence", "J-Mean", "F-Mean"), rows)
        return global_path, seq_path


def _format_table(header: Sequence[str], rows: list[list]) -> str:
    cells = [list(header)] + [[v if isinstance(v, str) else f"{v:.3f}" for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "".join(" ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + "\n" for r in cells)


def _write_csv_atomic(path: Path, header: Sequence[str], rows: list[list[str]]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def evaluate_sequence(name: str, gt: np.ndarray, pred: np.ndarray) -> list[ObjectResult]:
    """Scores one sequence from index masks `gt`, `pred` of shape T*H*W (gt already without the void label).
    Objects are ids 1..max(gt[0]); frames 1..T-2 are scored."""
    if gt.shape != pred.shape:
        raise ValueError(f"{name}: ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    num_objects = int(gt[0].max()) if len(gt) else 0
    extra = int(pred.max()) if pred.size else 0
    if extra > num_objects:
        raise ValueError(
            f"{name}: the prediction contains object id {extra} but the first ground-truth frame has only "
            f"{num_objects} object(s) (ids 1..{num_objects})"
        )
    gt_s, pred_s = gt[1:-1], pred[1:-1]  # the first and last frames are not scored
    results = []
    for obj in range(1, num_objects + 1):
        gt_o = gt_s == obj  # (T-2)*H*W
        pred_o = pred_s == obj
        j = region_similarity(gt_o, pred_o).astype(np.float64)
        f = np.array([boundary_f_measure(g, p) for g, p in zip(gt_o, pred_o, strict=True)], dtype=np.float64)
        results.append(ObjectResult(name, obj, j, f))
    return results


def read_index_mask(path: Path) -> np.ndarray:
    """An index PNG (palette 'P' or grayscale 'L') as H*W int64 object ids."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "1"):
            raise ValueError(
                f"{path}: expected an indexed (palette) or grayscale PNG of object ids, got mode {img.mode}"
            )
        return np.array(img).astype(np.int64)


def list_sequences(gt_root: Path, subset: str | os.PathLike | Iterable[str] | None) -> list[str]:
    """Sequence names: the lines of a DAVIS ImageSets file, an explicit list, or every folder of gt_root."""
    if subset is None:
        return sorted(p.name for p in gt_root.iterdir() if p.is_dir())
    if isinstance(subset, (str, os.PathLike)):
        path = Path(subset)
        if not path.is_file():
            raise FileNotFoundError(f"subset file {path} not found (a text file with one sequence name per line)")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return list(subset)


def _pngs(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.png"))


def check_prediction_files(gt_root: Path, pred_root: Path, sequences: list[str], strict_sequences: bool) -> None:
    """Raises one error naming every missing or extra prediction file (and sequence folder)."""
    problems: list[str] = []
    for seq in sequences:
        gt_dir, pred_dir = gt_root / seq, pred_root / seq
        if not gt_dir.is_dir():
            problems.append(f"ground-truth sequence folder missing: {gt_dir}")
            continue
        if not pred_dir.is_dir():
            problems.append(f"prediction sequence folder missing: {pred_dir}")
            continue
        gt_frames, pred_frames = _pngs(gt_dir), set(_pngs(pred_dir))
        # the first and last frames are not scored, so only the frames in between are required
        missing = [f for f in gt_frames[1:-1] if f not in pred_frames]
        extra = sorted(pred_frames - set(gt_frames))
        problems += [f"missing prediction: {pred_dir / (f + '.png')}" for f in missing]
        problems += [f"extra prediction (no ground truth): {pred_dir / (f + '.png')}" for f in extra]
    if strict_sequences and pred_root.is_dir():
        extra_seqs = sorted({p.name for p in pred_root.iterdir() if p.is_dir()} - set(sequences))
        problems += [f"extra prediction sequence folder (no ground truth): {pred_root / s}" for s in extra_seqs]
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise FileNotFoundError(
            f"predictions in {pred_root} do not match the ground truth in {gt_root} "
            f"({len(problems)} problem(s)):\n  {shown}{more}"
        )


def load_sequence(gt_dir: Path, pred_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(gt, pred) index masks T*H*W over the ground-truth frames; unscored first/last predictions may be
    absent (read as background)."""
    frames = _pngs(gt_dir)
    masks = []
    for f in frames:  # checked one by one: np.stack's own error names no file
        m = read_index_mask(gt_dir / f"{f}.png")
        if masks and m.shape != masks[0].shape:
            first = gt_dir / f"{frames[0]}.png"
            raise ValueError(
                f"{gt_dir / (f + '.png')}: ground-truth frame is {m.shape[1]}x{m.shape[0]} but the sequence's first "
                f"frame {first} is {masks[0].shape[1]}x{masks[0].shape[0]} (W x H); fix: every annotation of a "
                "sequence must have one size (re-extract or resize the ground truth to the size of its video)"
            )
        masks.append(m)
    if not masks:
        raise ValueError(f"{gt_dir}: no ground-truth PNG in the sequence folder")
    gt = np.stack(masks)
    gt[gt == VOID_LABEL] = 0
    pred = np.zeros_like(gt)
    for t, f in enumerate(frames):
        path = pred_dir / f"{f}.png"
        if not path.exists():
            continue
        p = read_index_mask(path)
        if p.shape != gt.shape[1:]:
            raise ValueError(
                f"{path}: prediction is {p.shape[1]}x{p.shape[0]} but the ground truth is "
                f"{gt.shape[2]}x{gt.shape[1]} (W x H); save masks at the annotation size"
            )
        pred[t] = p
    return gt, pred


def evaluate_folders(
    gt_root: str | os.PathLike,
    pred_root: str | os.PathLike,
    subset: str | os.PathLike | Iterable[str] | None = None,
    *,
    progress: bool = False,
) -> DavisReport:
    """Evaluates DAVIS-layout folders (<root>/<sequence>/<frame>.png). `subset`: ImageSets file or names; None
    evaluates every ground-truth sequence and then also rejects prediction folders without ground truth."""
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    for what, root in (("ground-truth", gt_root), ("prediction", pred_root)):
        if not root.is_dir():
            raise FileNotFoundError(f"{what} folder {root} not found")
    sequences = list_sequences(gt_root, subset)
    check_prediction_files(gt_root, pred_root, sequences, strict_sequences=subset is None)
    iterator: Iterable[str] = sequences
    if progress:
        from tqdm import tqdm

        iterator = tqdm(sequences, desc="J&F")
    objects: list[ObjectResult] = []
    for seq in iterator:
        gt, pred = load_sequence(gt_root / seq, pred_root / seq)
        objects += evaluate_sequence(seq, gt, pred)
    return DavisReport(objects)
