"""The DAVIS 2017 semi-supervised evaluation over folders of index masks.

Protocol (as the DAVIS toolkit): the objects of a sequence are ids 1..max of its first ground-truth frame
(255, the void label, counts as background); the first and the last frame are not scored; every object gets
J and F statistics (mean, recall, decay) over the remaining frames; J-Mean and F-Mean average over all objects
of all sequences, J&F-Mean is their mean.

Late objects (`late_objects=True`, the protocol of an evaluation run with `use_all_masks`): the objects are every
id of any ground-truth frame, and an object first annotated on frame a (where the network was given its mask) is
scored on the frames after a, the last one excluded; an object present on frame 0 is scored exactly as above.
The frames are the ground-truth files, so sparse annotation (a mask every k-th frame) scores those frames only.

Nothing is dropped silently: a sequence with no frame between its first and last annotation, an object with no
frame left to score, or (DAVIS protocol) an object that appears only after the first frame is listed as not
scored, with the reason, in the printed tables and in notes-<split>.csv. An object whose ground truth is empty
on every scored frame is scored (J = F = 1 where the prediction is empty too, by the toolkit's convention) and
flagged with a warning there.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cutie.metrics.measures import boundary_f_measure, mean_recall_decay, region_similarity
from cutie.utils.atomic import atomic_write_text
from cutie.utils.paths import confined

log = logging.getLogger(__name__)

VOID_LABEL = 255
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass(frozen=True)
class ObjectResult:
    """Per-frame scores of one object over the scored frames, and their statistics."""

    sequence: str
    object_id: int
    j: np.ndarray  # (S,) per-frame J over the scored frames (S = T-2 for an object of the first frame)
    f: np.ndarray  # (S,) per-frame F
    gt_empty: bool = False  # the ground truth is empty on every scored frame (scores 1 by convention)

    @property
    def name(self) -> str:
        return f"{self.sequence}_{self.object_id}"

    @property
    def j_stats(self) -> tuple[float, float, float]:
        return mean_recall_decay(self.j)

    @property
    def f_stats(self) -> tuple[float, float, float]:
        return mean_recall_decay(self.f)


@dataclass(frozen=True)
class Unscored:
    """A sequence (object_id None) or an object that has no score, and why."""

    sequence: str
    object_id: int | str | None  # None: the whole sequence; SA-V objects are folder names
    reason: str

    @property
    def name(self) -> str:
        return self.sequence if self.object_id is None else f"{self.sequence}_{self.object_id}"


@dataclass
class DavisReport:
    """Every scored object's result (the global table is computed from them) and what was not scored."""

    objects: list[ObjectResult]
    unscored: list[Unscored] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """The toolkit's global table as fractions: J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, ..."""
        if not self.objects:
            why = "; ".join(f"{u.name}: {u.reason}" for u in self.unscored[:5]) or "the ground truth holds no object"
            raise ValueError(f"no object could be scored ({why})")
        j = np.array([o.j_stats for o in self.objects], dtype=np.float64)  # O*3
        f = np.array([o.f_stats for o in self.objects], dtype=np.float64)
        # every object here has at least one scored frame, so no statistic is NaN (the toolkit's plain mean)
        jm, jr, jd = np.mean(j, axis=0)
        fm, fr, fd = np.mean(f, axis=0)
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
        out.write(format_table(GLOBAL_COLUMNS, [[summary[k] for k in GLOBAL_COLUMNS]]))
        out.write(f"\n---------- Per sequence results for {split} ----------\n")
        out.write(format_table(("Sequence", "J-Mean", "F-Mean"), [list(r) for r in self.per_sequence_rows()]))
        out.write(format_notes(self.notes()))
        return out.getvalue()

    def notes(self) -> list[tuple[str, str, str]]:
        """(name, "no"|"yes" scored, note) for every unscored sequence/object and every empty-ground-truth one."""
        rows = [(u.name, "no", u.reason) for u in self.unscored]
        rows += [(o.name, "yes", EMPTY_GT_NOTE) for o in self.objects if o.gt_empty]
        return rows

    def write_csv(self, out_dir: str | os.PathLike, split: str = "val") -> tuple[Path, Path, Path]:
        """global_results-<split>.csv, per-sequence_results-<split>.csv (the toolkit's two tables) and
        notes-<split>.csv (what was not scored and the empty-ground-truth warnings), written atomically."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        global_path = out_dir / f"global_results-{split}.csv"
        seq_path = out_dir / f"per-sequence_results-{split}.csv"
        write_csv_atomic(global_path, GLOBAL_COLUMNS, [[f"{summary[k]:.6f}" for k in GLOBAL_COLUMNS]])
        rows = [[name, f"{jm:.6f}", f"{fm:.6f}"] for name, jm, fm in self.per_sequence_rows()]
        write_csv_atomic(seq_path, ("Sequence", "J-Mean", "F-Mean"), rows)
        notes_path = write_notes_csv(out_dir, split, self.notes())
        return global_path, seq_path, notes_path


EMPTY_GT_NOTE = (
    "warning: the ground truth is empty on every scored frame; J = F = 1 where the prediction is empty too "
    "(the toolkit's convention), so this object says little about the model"
)


def format_notes(notes: list[tuple[str, str, str]]) -> str:
    """The printed form of `notes()`: nothing when there are none."""
    if not notes:
        return ""
    unscored = sum(1 for _, scored, _ in notes if scored == "no")
    lines = [f"\n---------- Not scored: {unscored}; warnings: {len(notes) - unscored} ----------\n"]
    lines += [f"{'not scored' if scored == 'no' else 'scored'}: {name}: {note}\n" for name, scored, note in notes]
    return "".join(lines)


def write_notes_csv(out_dir: Path, split: str, notes: list[tuple[str, str, str]]) -> Path:
    """notes-<split>.csv: Sequence, Scored, Note (written even when empty, so a clean run is visible)."""
    path = Path(out_dir) / f"notes-{split}.csv"
    write_csv_atomic(path, ("Sequence", "Scored", "Note"), [list(n) for n in notes])
    return path


def format_table(header: Sequence[str], rows: list[list]) -> str:
    cells = [list(header)] + [[v if isinstance(v, str) else f"{v:.3f}" for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "".join(" ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + "\n" for r in cells)


def write_csv_atomic(path: Path, header: Sequence[str], rows: list[list[str]]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def evaluate_sequence(
    name: str,
    gt: np.ndarray,
    pred: np.ndarray,
    *,
    late_objects: bool = False,
    frames: Sequence[str] | None = None,
) -> tuple[list[ObjectResult], list[Unscored]]:
    """Scores one sequence from index masks `gt`, `pred` of shape T*H*W (gt already without the void label).
    DAVIS protocol: objects are ids 1..max(gt[0]), frames 1..T-2 are scored. `late_objects`: objects are the
    ids of every gt frame, each scored after its first annotated frame (see the module docstring). `frames`:
    the frame names, for the messages. Returns the scored objects and what could not be scored."""
    if gt.shape != pred.shape:
        raise ValueError(f"{name}: ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    frame_names = list(frames) if frames is not None else [str(t) for t in range(len(gt))]
    present = [set(np.unique(m).tolist()) - {0} for m in gt]  # ids per gt frame
    if late_objects:
        first = {}
        for t, ids in enumerate(present):
            for obj in sorted(ids - first.keys()):
                first[obj] = t
        unscored = []
    else:
        num_objects = int(gt[0].max()) if len(gt) else 0
        first = dict.fromkeys(range(1, num_objects + 1), 0)
        late = sorted(set().union(*present) - first.keys()) if present else []
        unscored = [
            Unscored(name, obj, "first annotated after the first frame: the DAVIS protocol scores the first frame's "
                     "objects only (evaluate with use_all_masks to add and score objects that appear later)")
            for obj in late
        ]  # fmt: skip
    extra = sorted(set(np.unique(pred).tolist()) - {0} - first.keys())
    if extra:
        known = f"ids {sorted(first)}" if first else "no object"
        where = "any ground-truth frame" if late_objects else "the first ground-truth frame"
        raise ValueError(f"{name}: the prediction contains object id {extra[0]} but {where} has {known}")
    if not first:
        where = "any ground-truth frame" if late_objects else "the first ground-truth frame"
        return [], [Unscored(name, None, f"no object in {where}"), *unscored]
    if len(gt) < 3:
        why = f"{len(gt)} annotated frame(s): the first and the last are not scored, nothing is left"
        return [], [Unscored(name, None, why), *unscored]
    results = []
    for obj, t0 in sorted(first.items()):
        start = max(1, t0 + 1)  # the frame the object's mask was given on is not scored
        if start > len(gt) - 2:
            why = f"first annotated on frame {frame_names[t0]}: no annotated frame after it but the last"
            unscored.append(Unscored(name, obj, why))
            continue
        gt_o = gt[start:-1] == obj  # S*H*W
        pred_o = pred[start:-1] == obj
        j = region_similarity(gt_o, pred_o).astype(np.float64)
        f = np.array([boundary_f_measure(g, p) for g, p in zip(gt_o, pred_o, strict=True)], dtype=np.float64)
        results.append(ObjectResult(name, obj, j, f, gt_empty=not gt_o.any()))
    return results, unscored


def read_index_mask(path: Path) -> np.ndarray:
    """An index PNG (palette 'P' or grayscale 'L') as H*W int64 object ids; ValueError naming the file when it is
    not one (another format or mode, unreadable, truncated, a decompression bomb)."""
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise ValueError(f"{path}: not a PNG (its content is {img.format or 'unknown'})")
            if img.mode not in ("P", "L", "I", "1"):
                raise ValueError(
                    f"{path}: expected an indexed (palette) or grayscale PNG of object ids, got mode {img.mode}"
                )
            return np.array(img).astype(np.int64)
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        why = "not an image" if isinstance(e, UnidentifiedImageError) else (getattr(e, "strerror", None) or e)
        raise ValueError(f"{path}: not a readable mask PNG ({why})") from None


def list_sequences(gt_root: Path, subset: str | os.PathLike | Iterable[str] | None) -> list[str]:
    """Sequence names: the lines of a DAVIS ImageSets file, an explicit list, or every folder of gt_root."""
    if subset is None:
        return sorted(p.name for p in gt_root.iterdir() if p.is_dir())
    if isinstance(subset, (str, os.PathLike)):
        path = Path(subset)
        if not path.is_file():
            raise FileNotFoundError(f"subset file {path} not found (a text file with one sequence name per line)")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        for name in names:  # names from a file stay inside the ground-truth folder
            confined(gt_root, name, what=f"sequence name in {path}")
        return list(dict.fromkeys(names))  # a repeated line counts once, as in the toolkit (keyed by name)
    return list(dict.fromkeys(subset))


def _pngs(folder: Path, skip: frozenset[str] = frozenset()) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.png") if p.stem not in skip)


def check_prediction_files(
    gt_root: Path,
    pred_root: Path,
    sequences: list[str],
    strict_sequences: bool,
    extra_frames_ok: bool = False,
    skip: Mapping[str, frozenset[str]] | None = None,
) -> None:
    """Raises one error naming every missing or extra prediction file (and sequence folder). `extra_frames_ok`:
    predictions of frames without ground truth are allowed (sparse annotation; they are not scored)."""
    problems: list[str] = []
    for seq in sequences:
        gt_dir, pred_dir = gt_root / seq, pred_root / seq
        if not gt_dir.is_dir():
            problems.append(f"ground-truth sequence folder missing: {gt_dir}")
            continue
        if not pred_dir.is_dir():
            problems.append(f"prediction sequence folder missing: {pred_dir}")
            continue
        gt_frames, pred_frames = _pngs(gt_dir, (skip or {}).get(seq, frozenset())), set(_pngs(pred_dir))
        # the first and last frames are not scored, so only the frames in between are required
        missing = [f for f in gt_frames[1:-1] if f not in pred_frames]
        extra = [] if extra_frames_ok else sorted(pred_frames - set(gt_frames))
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


def read_ground_truth(gt_dir: Path, skip: frozenset[str] = frozenset()) -> tuple[list[str], np.ndarray]:
    """(frame stems, T*H*W int64 ids) of one ground-truth folder, void as background. Every frame is checked
    against the first one (np.stack's own error names no file)."""
    frames = _pngs(gt_dir, skip)
    masks = []
    for f in frames:
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
    return frames, gt


def check_prediction_size(path: Path | str, pred_shape: tuple[int, ...], gt_shape: tuple[int, ...]) -> None:
    """A predicted frame must have the size of its ground truth (the error names the file)."""
    if tuple(pred_shape) != tuple(gt_shape):
        raise ValueError(
            f"{path}: prediction is {pred_shape[1]}x{pred_shape[0]} but the ground truth is "
            f"{gt_shape[1]}x{gt_shape[0]} (W x H); save masks at the annotation size"
        )


def load_sequence(
    gt_dir: Path, pred_dir: Path, skip: frozenset[str] = frozenset()
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(frame stems, gt, pred) index masks T*H*W over the ground-truth frames but `skip`; unscored first/last
    predictions may be absent (read as background)."""
    frames, gt = read_ground_truth(gt_dir, skip)
    pred = np.zeros_like(gt)
    for t, f in enumerate(frames):
        path = pred_dir / f"{f}.png"
        if not path.exists():
            continue
        p = read_index_mask(path)
        check_prediction_size(path, p.shape, gt.shape[1:])
        pred[t] = p
    return frames, gt, pred


def evaluate_folders(
    gt_root: str | os.PathLike,
    pred_root: str | os.PathLike,
    subset: str | os.PathLike | Iterable[str] | None = None,
    *,
    progress: bool = False,
    late_objects: bool = False,
    extra_frames_ok: bool = False,
    skip: Mapping[str, frozenset[str]] | None = None,
) -> DavisReport:
    """Evaluates DAVIS-layout folders (<root>/<sequence>/<frame>.png). `subset`: ImageSets file or names; None
    evaluates every ground-truth sequence and then also rejects prediction folders without ground truth.
    `late_objects`: the late-object protocol (module docstring); `extra_frames_ok`: predictions on frames without
    ground truth are ignored instead of rejected; `skip`: ground-truth frames (sequence -> stems) left out, as if
    unannotated. The defaults are the DAVIS 2017 toolkit's procedure."""
    gt_root, pred_root = Path(gt_root), Path(pred_root)
    for what, root in (("ground-truth", gt_root), ("prediction", pred_root)):
        if not root.is_dir():
            raise FileNotFoundError(f"{what} folder {root} not found")
    sequences = list_sequences(gt_root, subset)
    skip = skip or {}
    check_prediction_files(gt_root, pred_root, sequences, subset is None, extra_frames_ok, skip)
    iterator: Iterable[str] = sequences
    if progress:
        from tqdm import tqdm

        iterator = tqdm(sequences, desc="J&F")
    report = DavisReport([])
    for seq in iterator:
        frames, gt, pred = load_sequence(gt_root / seq, pred_root / seq, skip.get(seq, frozenset()))
        scored, unscored = evaluate_sequence(seq, gt, pred, late_objects=late_objects, frames=frames)
        report.objects += scored
        report.unscored += unscored
    for note in report.notes():
        log.warning("%s: %s", note[0], note[2] if note[1] == "yes" else f"not scored: {note[2]}")
    return report
