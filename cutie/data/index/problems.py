"""The problems a data check finds: their catalogue (`KINDS`: each kind's summary noun and standard fix), the
`Problem` record, a dataset's `DatasetReport`, and the two ways problems become text: `render` (summary lines
for the table and DataValidationError) and `render_each` (one line per file, for scripts/check_data.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cutie.data.index.frame_check import CheckStats
from cutie.utils.frame_names import FIX_NUMBERING

MAX_LISTED = 3  # offending paths quoted per problem kind in a summary line

_REFETCH = "re-download or re-extract them, or delete the frame's JPEG and PNG"
# kind -> (noun of a counted summary line, fix). Kinds without a noun are one-off, dataset-level problems whose
# detail is the whole sentence and whose fix names the config key (given when the problem is made).
KINDS: dict[str, tuple[str | None, str]] = {
    "missing": (None, ""),
    "config": (None, ""),
    "unusable": (None, ""),
    "subset_missing": (
        "videos of the subset list are missing from the image directory",
        "complete the download or edit the subset file",
    ),
    "no_mask_folder": ("videos have no mask folder", "add the annotations, or remove those videos"),
    "unpaired": (
        "videos with masks (PNGs) that have no frame (JPEG) of the same name",
        "every <video>/<frame>.png needs <video>/<frame>.jpg (a frame without a mask is fine: it is unannotated); "
        "re-extract the frames or remove the stray masks",
    ),
    "non_jpeg_frame": (
        "videos with frames that are not JPEGs (training reads <video>/<frame>.jpg)",
        "convert those frames to JPEG (<frame>.jpg, same name) or move them out of the frame folder",
    ),
    "non_png_mask": (
        "videos with masks that are not PNGs (training reads <video>/<frame>.png)",
        "save the masks as PNGs (lossless: a JPEG mask's compression changes the object ids), palette or grayscale",
    ),
    "misordered_names": ("videos whose frame numbers are not zero-padded", FIX_NUMBERING),
    "incomplete_conversion": (
        "videos of an unfinished conversion",
        # the record of an unfinished video is missing, so which converter wrote the folder is unknown: name all
        "rerun the converter that wrote this folder (scripts/convert_burst_to_vos_train.py, "
        "scripts/convert_ovis_to_vos.py or scripts/convert_sav_to_vos.py) with the same arguments; it redoes only "
        "the unfinished videos",
    ),
    "lonely_image": ("images without a mask of the same name", "add NAME.png beside NAME.jpg or remove the image"),
    # SA-1B folders (cutie/data/index/sa1b.py)
    "bad_annotation_file": ("unusable SA-1B annotation files", "re-download or re-extract them"),
    "unannotated_image": (
        "SA-1B images that no annotation file names",
        "re-extract sa_N.json beside sa_N.jpg from the tar, or remove the image",
    ),
    "unreadable": ("unreadable files", "check their permissions, or re-download / delete them"),
    "empty_file": ("empty (0-byte) files", _REFETCH),
    "truncated_jpeg": ("truncated JPEGs", _REFETCH),
    "corrupt_jpeg": ("corrupt JPEGs", _REFETCH),
    "corrupt_png": ("corrupt or truncated PNGs", "re-download or re-export the masks"),
    "colour_mask": (
        "colour (RGB) masks instead of object ids",
        "save masks as palette PNGs whose indices are object ids, 0 = background, as DAVIS does",
    ),
    "wide_ids": ("masks with object ids above 255", "convert the dataset to palette PNGs (ids 0..255)"),
    "size_mismatch": (
        "frames whose image and mask sizes differ",
        "resize the masks to the frames with nearest-neighbour, or re-export them",
    ),
    "frame_size": (
        "frames whose size differs from their video's first frame",
        "re-extract the video's frames (and masks) at one size",
    ),
}


class DataValidationError(RuntimeError):
    """The configured training data cannot be used; the message says what and how to fix it."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: `path` names the file or folder, `fix` what to do about it."""

    kind: str
    path: str
    detail: str = ""
    fix: str = ""

    @property
    def where(self) -> str:
        return f"{self.path} ({self.detail})" if self.detail else self.path


def problem(kind: str, path: str, detail: str = "", fix: str | None = None) -> Problem:
    """A Problem with the kind's standard fix (unless one is given)."""
    return Problem(kind, str(path), detail, KINDS[kind][1] if fix is None else fix)


def render(problems: Iterable[Problem]) -> list[str]:
    """Summary lines: one per (kind, fix) with the count and the first MAX_LISTED paths; one-off problems as is."""
    groups: dict[tuple[str, str], list[Problem]] = {}
    for p in problems:
        groups.setdefault((p.kind, p.fix), []).append(p)
    lines = []
    for (kind, fix), items in groups.items():
        noun = KINDS[kind][0]
        if noun is None:
            lines += [f"{p.detail} (fix: {fix})" for p in items]
            continue
        shown = ", ".join(p.where for p in items[:MAX_LISTED])
        more = f", ... ({len(items)} in all)" if len(items) > MAX_LISTED else ""
        lines.append(f"{len(items)} {noun}: {shown}{more} (fix: {fix})")
    return lines


def render_each(problems: Iterable[Problem], limit: int | None = None) -> list[str]:
    """One line per problem (path: what, fix), at most `limit` per kind, then a count of the rest."""
    lines, per_kind = [], {}
    for p in problems:
        per_kind[p.kind] = per_kind.get(p.kind, 0) + 1
        if limit is None or per_kind[p.kind] <= limit:
            what = p.kind.replace("_", " ") + (f": {p.detail}" if p.detail else "")
            lines.append(f"{p.path}: {what} (fix: {p.fix})")
    for kind, n in per_kind.items():
        if limit is not None and n > limit:
            lines.append(f"... and {n - limit} more {KINDS[kind][0] or kind}")
    return lines


@dataclass
class DatasetReport:
    """One row of the data check table."""

    name: str
    kind: str  # 'video' | 'static'
    path: str
    found: bool
    videos: int = 0  # usable videos (static: 0)
    frames: int = 0  # JPEGs found
    masks: int = 0  # PNGs found
    excluded_short: int = 0  # videos with fewer annotated frames than the clip length
    excluded_untracked: int = 0  # partial_labels: videos with no object labelled in two annotated frames
    annotated: dict[str, int] = field(default_factory=dict)  # annotated frames per video (structure passed)
    dense: int = 0  # usable videos with a mask on every frame
    sparse_steps: dict[int, int] = field(default_factory=dict)  # usable sparse videos per annotation step
    partial: dict[str, tuple[int, ...]] = field(default_factory=dict)  # video -> partially labelled objects
    skipped: list[Problem] = field(default_factory=list)  # masks left out (wrong_size_masks: skip); not fatal
    issues: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # not problems (e.g. an ignored malformed cache)
    checked: CheckStats | None = None  # the file check, when it ran

    @property
    def problems(self) -> list[str]:
        return render(self.issues)

    @property
    def sparse(self) -> int:
        return sum(self.sparse_steps.values())

    @property
    def ok(self) -> bool:
        return self.found and not self.issues
