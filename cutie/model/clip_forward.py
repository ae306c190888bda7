"""Training-mode forward over a clip, as the official training wrapper does it.

Frame 0 is encoded from its ground truth. Every later frame reads the memory of the frames before it (all of
them up to `num_ref_frames`, else `num_ref_frames` picked at random per sample), is segmented, and — unless
it is the last — encoded into memory from its own prediction, with a deep sensory update with probability
`deep_update_prob`. Random choices use torch's global RNG (checkpointed by the trainer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cutie.model.network import CutieNet


@dataclass(frozen=True)
class ClipPlan:
    """Every data-dependent or random choice of a clip forward, made before any network work so the
    frame loop itself has no host synchronisation (and no torch.compile graph break)."""

    num_objects: int  # object slots used: the largest num_objects in the batch
    ref_frames: dict[int, torch.Tensor]  # frame ti -> B*num_ref_frames memory frames picked at random
    deep_update: list[bool]  # per memory-encoded frame ti = 1..T-2


def batch_object_counts(batch: Mapping[str, Any]) -> list[int]:
    """Objects per sample as host ints: the batch's `object_counts` (host values the loaders add, so that reading
    them waits for nothing), else its `num_objects` tensor (reading a device tensor waits for the GPU)."""
    counts = batch.get("object_counts")
    if counts is None:
        counts = batch["num_objects"]
    return [int(c) for c in (counts.reshape(-1).tolist() if isinstance(counts, torch.Tensor) else counts)]


@torch.compiler.disable
def plan_clip(
    num_objects: torch.Tensor | Sequence[int],
    batch_size: int,
    seq_len: int,
    *,
    num_ref_frames: int,
    deep_update_prob: float,
) -> ClipPlan:
    """Draws the clip's random choices from torch's global RNG in the official order (per frame: the
    reference frames, then the deep-update coin)."""
    counts = num_objects.reshape(-1).tolist() if isinstance(num_objects, torch.Tensor) else list(num_objects)
    refs: dict[int, torch.Tensor] = {}
    deep: list[bool] = []
    for ti in range(1, seq_len):
        if ti > num_ref_frames:
            refs[ti] = torch.stack([torch.randperm(ti)[:num_ref_frames] for _ in range(batch_size)])
        if ti < seq_len - 1:
            deep.append(bool(torch.rand(()) < deep_update_prob))
    return ClipPlan(max(int(c) for c in counts), refs, deep)


def _pick_frames(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-sample frame selection along dim 2. t: B*C*T*..., idx: B*K -> B*C*K*..."""
    return torch.stack([t[bi].index_select(1, idx[bi]) for bi in range(t.shape[0])], 0)


def forward_clip(net: CutieNet, batch: dict, *, num_ref_frames: int, deep_update_prob: float) -> dict:
    """batch: rgb B*T*3*H*W in [0, 1], first_frame_gt B*1*O*H*W, selector B*O, num_objects (B ints).
    The object dimension is cut to the largest num_objects in the batch (O' below), as officially.

    Returns, for ti = 1..T-1: logits_{ti} B*(O'+1)*H*W (background first), masks_{ti} B*O'*H*W
    (probabilities), aux_{ti} {sensory_logits B*(O'+1)*h*w, q_logits B*(O'+1)*L*h*w, attn_mask B*O'*Q*h*w}.
    """
    rgb = batch["rgb"]
    b, seq_len = rgb.shape[:2]
    plan = plan_clip(
        batch_object_counts(batch), b, seq_len, num_ref_frames=num_ref_frames, deep_update_prob=deep_update_prob
    )
    num_objects = plan.num_objects
    first_gt = batch["first_frame_gt"][:, 0, :num_objects].float()  # B*O*H*W
    selector = batch["selector"][:, :num_objects].float().view(b, num_objects, 1, 1)

    ms_feat, pix_feat = net.encode_image(rgb.flatten(0, 1))  # all frames at once: (B*T)*C*h*w
    with torch.autocast(device_type=rgb.device.type, enabled=False):
        keys, shrinkages, selections = net.transform_key(ms_feat[0].float())
    h, w = keys.shape[-2:]

    def by_time(x: torch.Tensor) -> torch.Tensor:  # (B*T)*C*h*w -> B*T*C*h*w
        return x.view(b, seq_len, *x.shape[1:])

    def as_volume(x: torch.Tensor) -> torch.Tensor:  # (B*T)*C*h*w -> B*C*T*h*w
        return by_time(x).transpose(1, 2)

    keys, shrinkages, selections = as_volume(keys), as_volume(shrinkages), as_volume(selections)
    ms_feat = [by_time(f) for f in ms_feat]
    pix_feat = by_time(pix_feat)

    sensory = torch.zeros(b, num_objects, net.sensory_dim, h, w, device=rgb.device)
    value, sensory, summary, _ = net.encode_mask(rgb[:, 0], pix_feat[:, 0], sensory, first_gt)
    values = [value]  # per memory frame: B*O*CV*h*w
    summaries = [summary]  # per memory frame: B*O*Q*(C+1)
    masks = first_gt

    out: dict = {}
    for ti in range(1, seq_len):
        mem_values = torch.stack(values, dim=3)  # B*O*CV*T*h*w
        mem_keys, mem_shrinkages = keys[:, :, :ti], shrinkages[:, :, :ti]
        if ti in plan.ref_frames:
            idx = plan.ref_frames[ti].to(rgb.device)  # B*K
            mem_keys, mem_shrinkages = _pick_frames(mem_keys, idx), _pick_frames(mem_shrinkages, idx)
            mem_values = torch.stack([mem_values[bi].index_select(2, idx[bi]) for bi in range(b)], 0)

        readout, aux_input = net.read_memory(
            keys[:, :, ti],
            selections[:, :, ti],
            mem_keys,
            mem_shrinkages,
            mem_values,
            torch.stack(summaries, dim=2),
            pix_feat[:, ti],
            sensory,
            masks,
            selector,
        )
        aux = net.compute_aux(pix_feat[:, ti], aux_input, selector)
        sensory, logits, prob = net.segment([f[:, ti] for f in ms_feat], readout, sensory, selector=selector)
        masks = prob[:, 1:]  # drop the background

        if ti < seq_len - 1:  # the last frame is never memorised
            value, sensory, summary, _ = net.encode_mask(
                rgb[:, ti], pix_feat[:, ti], sensory, masks, deep_update=plan.deep_update[ti - 1]
            )
            values.append(value)
            summaries.append(summary)

        out[f"masks_{ti}"] = masks
        out[f"logits_{ti}"] = logits
        out[f"aux_{ti}"] = aux
    return out
