"""Main-training clips (official VOSMergeTrainDataset semantics), as recipes: frames, one geometric transform per
clip (resampled once, blurred like the official affine + resized crop), colours (one draw per clip, as the official
code ends up doing), merge with a second clip, object selection. All randomness comes from the generator passed in.

Sparse videos: the clip frames are a video's annotated frames, and max_skip (in original video frames) is divided
by frame_interval * the video's annotation step (cutie/data/index/annotation.py). Datasets with partial labels
(VideoSet.ids): a frame set is drawn only when an object of its first frame is labelled again in a later frame
of it, and only such objects are targets; for every other dataset the draws are the official ones."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from cutie.data.index.datasets import VideoIndex, VideoSet
from cutie.data.sampling import geometry as geo
from cutie.data.sampling.colour import clip_colours
from cutie.data.sampling.masks import (
    blurred_alpha,
    check_same_size,
    labels_of,
    read_bytes,
    read_ids,
    relabel,
    warp_nearest,
)
from cutie.data.sampling.recipe import ClipRecipe, ImageLayer

MAX_CROP_TRIALS = 5  # crops of the first frame tried before a new seed frame
MAX_SEED_TRIALS = 5  # seed frames tried before a new video
MAX_SEQ_TRIALS = 100  # frame sets grown from one seed frame (empty-mask lists)
MAX_VIDEO_TRIALS = 200  # videos tried before giving up (every first frame empty?)


class NoObjectError(RuntimeError):
    """No clip with a visible object in the first frame could be found."""


@dataclass
class _Clip:
    layer: ImageLayer
    masks: np.ndarray  # T*H*W uint8 source ids, warped to the output
    info: dict
    keep: tuple[int, ...] | None = None  # partial labels: the source ids that may be targets (None: any)


def relabelled(ids: list[tuple[int, ...]], frames: list[int]) -> tuple[int, ...]:
    """The objects of the first of these frames that are labelled again in a later one (ids: per frame)."""
    later = set().union(*(ids[f] for f in frames[1:]))
    return tuple(sorted(set(ids[frames[0]]) & later))


def _shows(mask: np.ndarray, keep: tuple[int, ...] | None) -> bool:
    """Whether the mask shows an object that may be a target."""
    return bool(mask.any()) if keep is None else bool(np.isin(mask, keep).any())


def grow_frames(rng: np.random.Generator, length: int, seed_frame: int, num_frames: int, skip: int) -> list[int]:
    """Grow a frame set from the seed: each new frame within `skip` of an already chosen one; sorted, then reversed
    with p=0.5."""
    skip = max(1, min(length, skip))
    chosen = [seed_frame]
    allowed = np.zeros(length, bool)
    allowed[max(0, seed_frame - skip) : seed_frame + skip + 1] = True
    allowed[seed_frame] = False
    while len(chosen) < num_frames:
        cands = np.flatnonzero(allowed)
        f = int(cands[rng.integers(len(cands))])
        chosen.append(f)
        allowed[max(0, f - skip) : f + skip + 1] = True
        allowed[chosen] = False
    chosen.sort()
    if rng.random() < 0.5:
        chosen.reverse()
    return chosen


class VideoClipSampler:
    """Recipes for main-training clips from a VideoIndex."""

    def __init__(
        self,
        index: VideoIndex,
        seq_length: int,
        num_objects: int,
        crop_size: tuple[int, int],
        merge_probability: float,
        *,
        per_frame_colour: bool = False,
        match_resampling: bool = True,
    ) -> None:
        """per_frame_colour=True draws the frame colour jitter anew for every frame (what the official code meant;
        it draws one per clip); match_resampling=False skips the blur that matches the official two resamplings
        (sharper frames). The defaults reproduce the official distribution (docs/data-parity.md)."""
        self.per_frame_colour = per_frame_colour
        self.match_resampling = match_resampling
        self.index = index
        self.seq_length = seq_length
        self.num_objects = num_objects
        self.out_hw = (int(crop_size[0]), int(crop_size[1]))
        self.merge_probability = merge_probability

    def __len__(self) -> int:
        return len(self.index)

    def geometry(self, rng: np.random.Generator, width: int, height: int) -> list[geo.Step]:
        """One clip transform as the official chain: h-flip, rotation <= 25 deg + x-shear <= 20 deg (PIL affine on
        the full frame), random resized crop (0.36-1.0, PIL crop + resize)."""
        flip = rng.random() < 0.5
        angle, shear = rng.uniform(-25.0, 25.0), rng.uniform(-20.0, 20.0)
        x0, y0, w, h = geo.random_resized_crop_window(rng, width, height)
        out_h, out_w = self.out_hw
        steps = [geo.Step(geo.flip_h(width), geo.EXACT, (width, height))] if flip else []
        steps.append(geo.Step(geo.affine_about_centre(width, height, angle, 1.0, shear), geo.BILINEAR, (width, height)))
        steps.append(geo.Step(geo.resized_window(x0, y0, w, h, out_w, out_h), geo.RESIZE, (out_w, out_h)))
        return steps

    def _clip(self, rng: np.random.Generator, seed: int, skip: int) -> _Clip:
        """A clip whose first frame shows an object after the crop (official retry structure)."""
        idx = self.index
        for _ in range(MAX_VIDEO_TRIALS):
            vset = idx.sets[idx.seed_set[seed]]
            video = int(idx.seed_video[seed])
            frame0 = int(idx.seed_frame[seed])
            jpgs, pngs, empty = vset.jpgs[video], vset.pngs[video], vset.empty[video]
            ids = vset.ids[video] if vset.partial_labels else None
            length = len(jpgs)
            # max_skip counts original video frames; one step between annotated frames spans frame_interval *
            # step of them (dense videos: step 1, the official conversion).
            step = vset.steps[video] if vset.steps else 1
            vskip = max(1, skip // (vset.frame_interval * step))
            mask_dir = os.path.join(vset.mask_dir, vset.videos[video])
            for _seed_trial in range(MAX_SEED_TRIALS):
                frames, keep = None, None
                for _ in range(MAX_SEQ_TRIALS if empty is not None or ids is not None else 1):
                    cand = grow_frames(rng, length, frame0, self.seq_length, vskip)
                    if empty is not None and empty[cand[0]]:
                        continue
                    if ids is not None:
                        keep = relabelled(ids, cand)
                        if not keep:  # no first-frame object labelled again: it would teach dropping objects
                            continue
                    frames = cand
                    break
                if frames is None:
                    frame0 = int(rng.integers(length))
                    continue
                first = read_ids(os.path.join(mask_dir, pngs[frames[0]]))
                m = None
                if _shows(first, keep):  # an empty first mask fails every crop: skip the crop trials
                    h, w = first.shape
                    for _crop_trial in range(MAX_CROP_TRIALS):
                        steps = self.geometry(rng, w, h)
                        cand_m = geo.compose(steps)
                        warped0 = warp_nearest(first, cand_m, self.out_hw)
                        if _shows(warped0, keep):
                            m = cand_m
                            break
                if m is None:
                    frame0 = int(rng.integers(length))
                    continue
                blur = geo.extra_blur(steps) if self.match_resampling else 0.0
                clip = self._finish_clip(rng, vset, video, frames, m, first, blur, warped0, mask_dir)
                clip.keep = keep
                return clip
            seed = int(rng.integers(len(idx)))
        raise NoObjectError(
            f"no clip with a visible object in its first frame after {MAX_VIDEO_TRIALS} videos; are the masks of "
            f"{', '.join(s.name for s in idx.sets)} empty? (fix: check them with scripts/check_data.py)"
        )

    def _finish_clip(
        self,
        rng: np.random.Generator,
        vset: VideoSet,
        video: int,
        frames: list[int],
        m: np.ndarray,
        first: np.ndarray,
        blur: float,
        warped0: np.ndarray,
        mask_dir: str,
    ) -> _Clip:
        """Read the JPEG bytes; warp the remaining masks with the accepted matrix (each mask the size of its frame,
        else the sample is bad); draw the colours."""
        t = len(frames)
        image_dir = os.path.join(vset.image_dir, vset.videos[video])
        paths = [os.path.join(image_dir, vset.jpgs[video][f]) for f in frames]
        jpegs = [read_bytes(p) for p in paths]
        mask_paths = [os.path.join(mask_dir, vset.pngs[video][f]) for f in frames]
        check_same_size(first, mask_paths[0], jpegs[0], paths[0])
        masks = np.empty((t, *self.out_hw), np.uint8)
        masks[0] = warped0
        for i in range(1, t):
            ids = read_ids(mask_paths[i])
            check_same_size(ids, mask_paths[i], jpegs[i], paths[i])
            masks[i] = warp_nearest(ids, m, self.out_hw)
        colours = clip_colours(rng, t, clip=(0.1, 0.03, 0.03), frame=(0.1, 0.05, 0.05), per_frame=self.per_frame_colour)
        layer = ImageLayer(
            jpegs=jpegs,
            matrices=np.repeat(m[None], t, 0),
            source_paths=paths,
            blur=np.full(t, blur, np.float32),
            **colours,
        )
        info = {"dataset": vset.name, "video": vset.videos[video], "frames": [vset.jpgs[video][f] for f in frames]}
        return _Clip(layer, masks, info)

    def sample(self, rng: np.random.Generator, seed: int, skip: int) -> ClipRecipe:
        """One recipe from seed entry `seed` of the multiplied list with max skip `skip` (in dataset frames)."""
        clip = self._clip(rng, seed, skip)
        masks = clip.masks.copy()
        present = labels_of(masks[0])
        # Partial labels: the output ids that may be targets (None: every first-frame object, as officially).
        allowed = None if clip.keep is None else set(clip.keep)
        labels = present if allowed is None else [lab for lab in present if lab in allowed]
        layers, alpha = [clip.layer], None
        info = {"layers": [clip.info]}
        origin = {lab: (0, lab) for lab in present}  # output id source: (layer, source id)
        if len(labels) < self.num_objects and rng.random() < self.merge_probability:
            second = self._clip(rng, int(rng.integers(len(self.index))), skip)
            layers.append(second.layer)
            info["layers"].append(second.info)
            new_ids = {}
            taken = set(present)
            if allowed is None and second.keep is not None:
                allowed = taken.copy()
            for lab2 in labels_of(second.masks[0]):  # objects of the second clip's first frame get fresh ids
                new = (lab2 + 10) % 255
                while new in labels or new in taken or new == 0:
                    new = (new + 1) % 255
                new_ids[lab2] = new
                labels.append(new)
                origin[new] = (1, lab2)
                if allowed is not None and (second.keep is None or lab2 in second.keep):
                    allowed.add(new)
            moved = relabel(second.masks, new_ids)  # T*H*W: pasted objects with their new ids, 0 elsewhere
            pasted = moved > 0
            np.copyto(masks, moved, where=pasted)
            # One blur of the pasted union (official: one blur per object, composited in turn; they differ only
            # where two pasted objects touch, where the union keeps the first clip from showing through).
            alpha = blurred_alpha(pasted)[None]
        labels = labels_of(masks[0])  # some first-clip objects may now be covered
        if allowed is not None:
            labels = [lab for lab in labels if lab in allowed]
        if len(labels) > self.num_objects:
            labels = [int(x) for x in rng.choice(labels, size=self.num_objects, replace=False)]
        info["objects"] = [origin[lab] for lab in labels]  # output id k+1 = layer's source id
        return ClipRecipe(
            layers=layers,
            alpha=alpha,
            cls_gt=relabel(masks, labels),
            num_objects=max(1, len(labels)),
            out_size=self.out_hw,
            info=info,
        )
