"""Small tensor helpers of the inference procedure: padding to the network stride, probability aggregation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cutie.model import memory_read

Pads = tuple[int, int, int, int]  # left, right, top, bottom


def pad_to_multiple(x: torch.Tensor, divisor: int = 16) -> tuple[torch.Tensor, Pads]:
    """Zero-pads the last two dims up to a multiple of `divisor`, half on each side (the odd pixel goes to
    the bottom/right), as the official procedure; returns the pads for `unpad`."""
    h, w = x.shape[-2:]
    dh, dw = (-h) % divisor, (-w) % divisor
    pads = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
    return F.pad(x, pads), pads


def unpad(x: torch.Tensor, pads: Pads) -> torch.Tensor:
    """Crops what `pad_to_multiple` added, on any tensor whose last two dims are H*W."""
    left, right, top, bottom = pads
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


def aggregate(prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-object probabilities (objects along `dim`) -> logits with the background channel first, always
    in float32 (the network's aggregation with autocast off)."""
    with torch.autocast(device_type=prob.device.type, enabled=False):
        return memory_read.aggregate(prob.float(), dim)


def stagger_steps(mem_every: int, stagger_updates: int) -> set[int]:
    """Frame offsets after the last memory frame at which the sensory memory is updated: every offset when
    `stagger_updates >= mem_every`, else `stagger_updates` offsets spread evenly over 1..mem_every."""
    if stagger_updates >= mem_every:
        return set(range(1, mem_every + 1))
    return {int(v) for v in np.round(np.linspace(1, mem_every, stagger_updates))}
