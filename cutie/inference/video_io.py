"""Reading evaluation videos in the DAVIS layout and writing index-mask PNGs.

<image_dir>/<video>/<frame>.jpg and <mask_dir>/<video>/<frame>.png (palette PNGs of object ids). The first
mask file of a video gives its first annotated frame. With `use_all_masks` (the official procedure for
YouTube-VOS, and the default for custom folders) every mask file present is read and an object first
annotated on a later frame is given to the network on that frame: a mask gives only the objects not seen on an
earlier mask, so on a folder annotated throughout (or every k-th frame) the ground truth of objects already
tracked is never fed back (YouTube-VOS's later masks hold only new objects, so nothing changes there).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cutie.metrics.davis import read_index_mask
from cutie.metrics.sav import read_binary_mask
from cutie.utils import strict_json
from cutie.utils.atomic import atomic_write
from cutie.utils.frame_names import FIX_NUMBERING, misordered_numbering
from cutie.utils.image_files import FileError, check_frame
from cutie.utils.palette import davis_palette
from cutie.utils.paths import Confiner, PathEscapeError, confined

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class Frame:
    name: str  # file stem, used for the output PNG
    image: torch.Tensor  # 3*H*W in [0, 1], resized when the video is
    mask: torch.Tensor | None  # H*W object ids (resized with nearest), or None
    size: tuple[int, int]  # original H, W: outputs are restored to it
    save: bool  # whether this frame's result is required


class FrameSource(Protocol):
    """What the runner reads: a named video of frames in order (VideoReader, SavVideoReader)."""

    name: str
    palette: list[int] | None  # of the written index PNGs

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Frame]: ...


def list_videos(mask_dir: str | os.PathLike, subset: str | os.PathLike | None = None) -> list[str]:
    """Video names: the lines of a DAVIS ImageSets file, or every folder of the mask directory."""
    if subset is not None:
        path = Path(subset)
        if not path.is_file():
            raise FileNotFoundError(f"subset file {path} not found (one video name per line)")
        names = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})  # repeats once
        for name in names:  # untrusted: a name becomes a folder read under mask_dir and written under the output
            confined(mask_dir, name, what=f"video {name!r} of {path}")
            if "/" in name or "\\" in name:
                raise PathEscapeError(f"video {name!r} of {path} is not a folder name (fix: one video per line)")
        return names
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"mask directory {mask_dir} not found (set the dataset's mask_directory)")
    return sorted(p.name for p in mask_dir.iterdir() if p.is_dir())


def count_frames(image_dir: str | os.PathLike, name: str) -> int:
    """The frames of video `name` (a name from list_videos), 0 when its folder is missing (VideoReader then
    says so where the video is read), and when the name leads out of image_dir (nothing outside is listed)."""
    try:
        folder = confined(image_dir, name, what="the frames folder of video")
    except PathEscapeError:
        return 0
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def required_frames(meta_json: str | os.PathLike | None) -> dict[str, set[str]]:
    """YouTube-VOS meta.json: the frames to save per video (all objects' frames); {} when not given."""
    if meta_json is None:
        return {}
    path = Path(meta_json)
    try:
        videos = strict_json.loads(path.read_text(encoding="utf-8"))["videos"]
        out = {v: {f for obj in info["objects"].values() for f in obj["frames"]} for v, info in videos.items()}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:  # untrusted: any shape
        raise ValueError(
            f"{path}: not a YouTube-VOS meta.json ({type(e).__name__}: {str(e)[:80]}); fix: give the release's "
            '{"videos": {video: {"objects": {id: {"frames": [...]}}}}} file, or json_directory=null'
        ) from None
    if not all(isinstance(f, str) for frames in out.values() for f in frames):
        raise ValueError(f"{path}: frame names must be strings; fix: give the release's meta.json")
    return out


class VideoReader:
    """One video's frames in order, with masks where the protocol gives them."""

    def __init__(
        self,
        name: str,
        image_dir: str | os.PathLike,
        mask_dir: str | os.PathLike,
        *,
        size: int = -1,
        use_all_masks: bool = False,
        to_save: set[str] | None = None,
        skip_masks: frozenset[str] = frozenset(),
    ):
        self.name = name
        self.image_dir, self.mask_dir, listed = video_layout(image_dir, mask_dir, name)
        self.frames = [p.name for p in listed]
        masks = sorted(p.stem for p in self.mask_dir.glob("*.png") if p.stem not in skip_masks)  # skip: unannotated
        if not masks:  # video_layout saw masks: every one was left out (wrong_size_masks=skip)
            raise FileNotFoundError(
                f"video {name}: every mask PNG in {self.mask_dir} was left out (wrong size); fix: give the "
                "annotation of its first frame the size of the frame, or remove the folder"
            )
        orphans = sorted(set(masks) - {Path(f).stem for f in self.frames})
        if orphans:  # never given to the network nor predicted: the first mask would leave the video untracked
            more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
            raise ValueError(
                f"{self.mask_dir / orphans[0]}.png: a mask without its frame (no {orphans[0]}.jpg, .jpeg or .png in "
                f"{self.image_dir}){more}; fix: add the missing frames, or delete their masks"
            )
        self.mask_stems = set(masks)
        self.first_mask = masks[0]
        self.size = size
        self.use_all_masks = use_all_masks
        self.to_save = to_save
        with Image.open(self.mask_dir / f"{self.first_mask}.png") as first:
            self.palette = first.getpalette() if first.mode == "P" else None

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        seen: set[int] = set()  # objects already given to the network
        for file in self.frames:
            frame = self._read(file)
            if frame.mask is not None and self.use_all_masks:
                frame.mask = only_new_objects(frame.mask, seen)
            yield frame

    def _read(self, file: str) -> Frame:
        stem = Path(file).stem
        image, size, new_size = read_frame(self.image_dir / file, self.size)
        mask = None
        if (self.use_all_masks or stem == self.first_mask) and stem in self.mask_stems:
            path = self.mask_dir / f"{stem}.png"
            with Image.open(path) as m:
                ids = np.asarray(m)
            if ids.ndim != 2:
                raise ValueError(f"{path}: expected an index (palette) PNG, got {ids.shape}")
            check_mask_size(path, ids.shape, size, self.image_dir / file)
            mask = resize_mask(torch.from_numpy(ids.astype(np.int64)), new_size)
        save = self.to_save is None or stem in self.to_save
        return Frame(stem, image, mask, size, save)


def video_layout(
    image_dir: str | os.PathLike, mask_dir: str | os.PathLike, name: str, *, binary: bool = False
) -> tuple[Path, Path, list[Path]]:
    """(frames folder, masks folder, the frames sorted) of video `name`, a name from a listing or a subset file,
    so untrusted: each folder must resolve inside its dataset folder (no '..', no symlink out) before anything in
    it is listed. A layout mistake (a flat folder of frames, the folders swapped, an empty folder, a mask folder
    without masks) raises ValueError saying what is where, before any inference instead of as a missing file."""
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    folders = []
    for root, kind in ((image_dir, "frames"), (mask_dir, "masks")):
        try:
            folders.append(confined(root, name, what=f"the {kind} folder of video"))
        except PathEscapeError as e:
            raise PathEscapeError(f"{e}; {FIX_OUTSIDE}") from None
    frames_dir, masks_dir = folders
    if not frames_dir.is_dir():
        flat = image_dir.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in image_dir.iterdir())
        hint = f" ({image_dir} holds frames itself: move them into a folder per video)" if flat else ""
        raise ValueError(f"video {name} of {mask_dir} has no frame folder {frames_dir}{hint}; {_LAYOUT}")
    if not masks_dir.is_dir():
        raise FileNotFoundError(f"masks of video {name} not found: {masks_dir}")
    listed = sorted(p for p in frames_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not listed:
        raise ValueError(
            f"{frames_dir}: no frames (.jpg, .jpeg or .png) in video {name}'s folder; fix: extract the video's "
            f"frames there, or remove its mask folder {masks_dir}"
        )
    if not binary and not any(masks_dir.glob("*.png")):
        jpegs = any(p.suffix.lower() in (".jpg", ".jpeg") for p in masks_dir.iterdir())
        hint = " (it holds JPEGs: the frame folder, the two swapped, or masks saved as JPEG?)" if jpegs else ""
        raise ValueError(f"{masks_dir}: no masks (<frame>.png) in video {name}'s folder{hint}; {_LAYOUT}")
    return frames_dir, masks_dir, listed


def read_frame(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int] | None]:
    """(3*h*w image in [0, 1], original (H, W), the resized (h, w) or None): the shorter side is brought down to
    `size` when it is longer (size <= 0: as stored), as the official reader does."""
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"))
    h, w = rgb.shape[:2]
    image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255  # 3*H*W
    new_size = None
    if size > 0 and min(h, w) > size:
        # torchvision's Resize(size): the shorter side becomes `size`, the longer one is truncated
        long = int(size * max(h, w) / min(h, w))
        new_size = (size, long) if h <= w else (long, size)
        image = F.interpolate(image[None], size=new_size, mode="bilinear", antialias=True, align_corners=False)[0]
    return image, (h, w), new_size


def resize_mask(mask: torch.Tensor, new_size: tuple[int, int] | None) -> torch.Tensor:
    """H*W object ids to the network's size (nearest), or unchanged."""
    if new_size is None:
        return mask
    return F.interpolate(mask[None, None].float(), size=new_size, mode="nearest")[0, 0].long()


FIX_FRAME = "fix: re-extract or re-download the frame, or delete it"
FIX_MASK = "fix: save masks as palette PNGs whose indices are object ids (0 background, at most 255)"
FIX_OUTSIDE = (
    "fix: copy the data into the dataset folder, or point image_directory/mask_directory at where it really is"
)


def _regular(path: Path, fix: str) -> None:
    """Opening a FIFO named like a frame would block the evaluation forever: refuse what is not a file first."""
    if path.exists() and not path.is_dir() and not path.is_file():
        raise ValueError(f"{path}: not a regular file (a FIFO, socket or device); {fix}")


def frame_size(path: Path) -> tuple[int, int]:
    """(H, W) of a frame, after the check training gives its frames (cutie/utils/image_files.py: a JPEG's header
    and end marker, a PNG's every chunk); ValueError naming the file otherwise (empty, a folder, not an image of
    its suffix's kind, cut short, a decompression bomb)."""
    _regular(path, FIX_FRAME)
    info = check_frame(path)
    if isinstance(info, FileError):
        raise ValueError(f"{path}: not a readable frame ({info.detail}); {FIX_FRAME}")
    return info.height, info.width


def mask_ids(path: Path, *, binary: bool = False) -> np.ndarray:
    """The H*W object ids of a mask PNG, decoded in full (SA-V `binary`: one object per PNG); ValueError naming
    the file when it is not a PNG of ids 0..255 (a JPEG named .png, RGB(A), 16-bit ids, truncated, a bomb)."""
    _regular(path, FIX_MASK)
    try:
        ids = read_binary_mask(path) if binary else read_index_mask(path)
    except ValueError as e:
        raise ValueError(str(e) if "fix:" in str(e) else f"{e}; {FIX_MASK}") from None
    if ids.size and int(ids.max()) > 255:
        raise ValueError(f"{path}: object id {int(ids.max())} does not fit an 8-bit index mask; {FIX_MASK}")
    return ids


def check_video_files(
    image_dir: str | os.PathLike, mask_dir: str | os.PathLike, name: str, *, skip: bool = False, binary: bool = False
) -> list[tuple[Path, str]]:
    """Before any inference, every file of a video (DAVIS layout <video>/<frame>.png, or SA-V's
    <video>/<object>/<frame>.png with `binary`): each frame's header (frame_size), each mask decoded (mask_ids)
    and of its frame's size. An unusable file raises ValueError naming it; a wrong size raises too (naming both
    files), or with `skip` is returned as (mask, why) to be left out (its frame as unannotated)."""
    bad: list[tuple[Path, str]] = []
    frames: dict[str, Path] = {}
    sizes: dict[str, tuple[int, int]] = {}
    image_folder, mask_folder, listed = video_layout(image_dir, mask_dir, name, binary=binary)
    in_images, in_masks = Confiner(image_dir), Confiner(mask_dir)
    misordered = misordered_numbering(p.name for p in listed)
    if misordered is not None:
        raise ValueError(
            f"{image_folder}: frame {misordered[0]} sorts before {misordered[1]}, so the video would be "
            f"read out of order; fix: {FIX_NUMBERING}"
        )
    for p in listed:
        _inside(in_images, Path(image_dir), p, "frame")
        if p.stem in frames:
            other = frames[p.stem].name
            raise ValueError(f"{p}: a second frame named {p.stem} (beside {other}); fix: keep one of them")
        sizes[p.stem], frames[p.stem] = frame_size(p), p  # every file the reader will read is checked
    # the masks the readers read: <video>/<frame>.png, SA-V's <video>/<object>/<frame>.png
    folders = sorted(p for p in mask_folder.iterdir() if p.is_dir()) if binary else [mask_folder]
    for path in sorted(p for folder in folders for p in folder.glob("*.png")):
        _inside(in_masks, Path(mask_dir), path, "mask")
        shape = mask_ids(path, binary=binary).shape
        frame = frames.get(path.stem)
        if frame is None:
            continue  # a mask without its frame: the reader names it, before any inference too
        try:
            check_mask_size(path, shape, sizes[path.stem], frame)
        except ValueError as e:
            if not skip:
                raise
            bad.append((path, str(e)))
    return bad


def _inside(confiner: Confiner, root: Path, path: Path, what: str) -> None:
    """A file of a video's listing (or a folder on its way) must not be a symlink out of its dataset folder."""
    try:
        confiner(path.relative_to(root).as_posix(), what=what)
    except PathEscapeError as e:
        raise PathEscapeError(f"{e}; {FIX_OUTSIDE}") from None


_LAYOUT = (
    "fix: image_directory holds one folder of frames per video (<video>/<frame>.jpg) and mask_directory one "
    "folder of masks per video (<video>/<frame>.png), with the same video names"
)


def check_mask_size(path: Path, mask_shape: tuple[int, ...], frame_size: tuple[int, int], frame: Path) -> None:
    """An annotation must have the size of its frame (the error names both files)."""
    if tuple(mask_shape[:2]) != tuple(frame_size):
        raise ValueError(
            f"{path}: mask is {mask_shape[1]}x{mask_shape[0]} but its frame {frame} is {frame_size[1]}x{frame_size[0]}"
            " (W x H); fix: annotations must have the size of their frames"
        )


def only_new_objects(mask: torch.Tensor, seen: set[int]) -> torch.Tensor | None:
    """The H*W ids of `mask` with the objects in `seen` set to background (None when nothing new is left);
    adds the new ids to `seen`."""
    ids = {int(v) for v in torch.unique(mask)} - {0}
    new = ids - seen
    if not new:
        return None
    seen |= new
    if new == ids:
        return mask
    keep = torch.isin(mask, torch.tensor(sorted(new), dtype=mask.dtype))
    return torch.where(keep, mask, torch.zeros_like(mask))


def save_index_png(path: Path, mask: np.ndarray, palette: list[int] | None) -> None:
    """Writes H*W object ids as a palette PNG, atomically. `palette` (a dataset's own, often shorter than 256
    colours) is completed with the DAVIS colours: PIL packs a PNG of N colours into as few bits per pixel as N
    needs, so an id past a short palette would be written as another id."""
    full = davis_palette()
    if palette is not None:
        full[: len(palette)] = palette[: len(full)]
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(full)
    atomic_write(path, lambda f: img.save(f, format="PNG"))
