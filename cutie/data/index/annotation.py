"""How a video is annotated: the annotation step of a sparse video and its partial labels (pure functions).

Annotation step: the spacing of the annotated frames in the video's sorted JPEG list, as the LOWER MEDIAN of the
gaps between consecutive annotated frames (every 3rd frame -> 3; frames 0, 5, 8, 13 -> gaps 5, 3, 5 -> 5;
frames 0, 3, 8, 13 -> gaps 3, 5, 5 -> 5; gaps 2, 6 -> 2). The median ignores one odd gap (a missing or an extra
mask); the lower one keeps the step an integer and, between two candidates, the one that skips less. A dense
video, or one with a single annotated frame, has step 1. The sampler divides max_skip by frame_interval * step.

Partial labels: an object labelled in one annotated frame only, which is not the video's last annotated frame,
in a video with several annotated frames (the Cutie judo example: each annotated frame labels only the object
it introduces). An object labelled in two annotated frames is tracked: only a video with one can give a clip
whose first-frame object is labelled again later.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def annotation_step(positions: Sequence[int]) -> int:
    """The annotation step of a video whose annotated frames sit at these sorted JPEG-list positions."""
    gaps = sorted(b - a for a, b in zip(positions, positions[1:], strict=False))
    return max(1, gaps[(len(gaps) - 1) // 2]) if gaps else 1


def _frames_per_object(ids: Sequence[Sequence[int]]) -> Counter[int]:
    return Counter(obj for frame in ids for obj in set(frame))


def partial_objects(ids: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The partially labelled objects of a video, given the object ids of each annotated frame in order."""
    if len(ids) < 2:
        return ()
    last = set(ids[-1])
    counts = _frames_per_object(ids)
    return tuple(sorted(obj for obj, n in counts.items() if n == 1 and obj not in last))


def tracked_somewhere(ids: Sequence[Sequence[int]]) -> bool:
    """Whether some object is labelled in two annotated frames of the video."""
    return any(n >= 2 for n in _frames_per_object(ids).values())
