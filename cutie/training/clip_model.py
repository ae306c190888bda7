"""Adapts the network's training-mode clip forward to a module call, so DDP sees (and syncs) it."""

from __future__ import annotations

from torch import nn

from cutie.model.clip_forward import forward_clip
from cutie.training.memory_format import frames_in_format


class ClipModel(nn.Module):
    def __init__(
        self, net: nn.Module, num_ref_frames: int, deep_update_prob: float, memory_format: str = "contiguous"
    ) -> None:
        super().__init__()
        self.net = net
        self.num_ref_frames = num_ref_frames
        self.deep_update_prob = deep_update_prob
        self.memory_format = memory_format  # of the frames; the network's weights are converted by the caller

    def forward(self, batch: dict) -> dict:
        if self.memory_format != "contiguous":
            # The masks need nothing: the mask encoder stacks its own per-object input planes, and the first
            # convolution takes its weights' layout (PyTorch converts the input once).
            batch = {**batch, "rgb": frames_in_format(batch["rgb"], self.memory_format)}
        return forward_clip(self.net, batch, num_ref_frames=self.num_ref_frames, deep_update_prob=self.deep_update_prob)
