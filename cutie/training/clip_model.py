"""Adapts the network's training-mode clip forward to a module call, so DDP sees (and syncs) it."""

from __future__ import annotations

from torch import nn

from cutie.model.clip_forward import forward_clip


class ClipModel(nn.Module):
    def __init__(self, net: nn.Module, num_ref_frames: int, deep_update_prob: float) -> None:
        super().__init__()
        self.net = net
        self.num_ref_frames = num_ref_frames
        self.deep_update_prob = deep_update_prob

    def forward(self, batch: dict) -> dict:
        return forward_clip(self.net, batch, num_ref_frames=self.num_ref_frames, deep_update_prob=self.deep_update_prob)
