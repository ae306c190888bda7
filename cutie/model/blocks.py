"""Small building blocks shared by the encoders, the fuser, the transformer and the decoder.

Naming: `x` is a per-frame feature B*C*H*W shared by all objects; `g` is a per-object ("group") feature
B*O*C*H*W. Per-object layers fold objects into the batch (B*O) so one kernel call serves all objects.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn


def fp32_region(t: torch.Tensor) -> AbstractContextManager:
    """Autocast off: what runs inside stays float32 (inputs must be cast with `.float()`)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


class ObjectConv2d(nn.Conv2d):
    """Conv2d over per-object features: B*O*C*H*W -> B*O*C'*H'*W'."""

    def forward(self, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, o = g.shape[:2]
        out = super().forward(g.flatten(0, 1))
        return out.view(b, o, *out.shape[1:])


def resize_objects(g: torch.Tensor, scale: float, mode: str) -> torch.Tensor:
    """Rescales B*O*C*H*W by `scale` ('bilinear' up, align_corners=False; 'area' down)."""
    b, o = g.shape[:2]
    align = False if mode == "bilinear" else None
    out = F.interpolate(g.flatten(0, 1), scale_factor=scale, mode=mode, align_corners=align)
    return out.view(b, o, *out.shape[1:])


class ChannelAttentionResBlock(nn.Module):
    """Two 3x3 convolutions (pre-activation) reweighted per channel by an ECA-style gate (a 1-d convolution
    over the pooled channel vector), plus the identity / 1x1 shortcut. Input and output N*C*H*W."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1)
        # ECA kernel size from the channel count: nearest odd number to (log2(C) + 1) / 2
        t = int((abs(math.log2(out_dim)) + 1) // 2)
        k = t if t % 2 else t + 1
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)
        self.downsample = nn.Identity() if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(F.relu(x))))  # N*C*H*W
        n, c = y.shape[:2]
        gate = self.conv(y.mean(dim=(2, 3)).view(n, 1, c)).view(n, c, 1, 1).sigmoid()
        return y * gate + self.downsample(x)


class ObjectResBlock(nn.Module):
    """Pre-activation residual block over per-object features B*O*C*H*W."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.downsample = nn.Identity() if in_dim == out_dim else ObjectConv2d(in_dim, out_dim, kernel_size=1)
        self.conv1 = ObjectConv2d(in_dim, out_dim, kernel_size=3, padding=1)
        self.conv2 = ObjectConv2d(out_dim, out_dim, kernel_size=3, padding=1)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(g)))) + self.downsample(g)


class _AddDistributor(nn.Module):
    """Adds a projected shared feature to projected per-object features (broadcast over objects).
    Its own module so the parameter names read `distributor.{x,g}_transform` as in the checkpoint."""

    def __init__(self, x_in_dim: int, g_in_dim: int, out_dim: int):
        super().__init__()
        self.x_transform = nn.Conv2d(x_in_dim, out_dim, kernel_size=1)
        self.g_transform = ObjectConv2d(g_in_dim, out_dim, kernel_size=1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # x: B*Cx*H*W, g: B*O*Cg*H*W -> B*O*C*H*W
        return self.x_transform(x).unsqueeze(1) + self.g_transform(g)


class FeatureFusionBlock(nn.Module):
    """Fuses a shared pixel feature into per-object features: projection-add, then two channel-attention
    residual blocks. x: B*Cx*H*W, g: B*O*Cg*H*W -> B*O*C*H*W."""

    def __init__(self, x_in_dim: int, g_in_dim: int, out_dim: int):
        super().__init__()
        self.distributor = _AddDistributor(x_in_dim, g_in_dim, out_dim)
        self.block1 = ChannelAttentionResBlock(out_dim, out_dim)
        self.block2 = ChannelAttentionResBlock(out_dim, out_dim)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        b, o = g.shape[:2]
        g = self.distributor(x, g).flatten(0, 1)
        g = self.block2(self.block1(g))
        return g.view(b, o, *g.shape[1:])


def gru_update(h: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Convolutional-GRU-style sensory update. h: B*O*C*H*W, values: B*O*3C*H*W (forget, update, candidate)."""
    forget, update, candidate = values.chunk(3, dim=2)
    update = torch.sigmoid(update)
    return torch.sigmoid(forget) * h * (1 - update) + update * torch.tanh(candidate)


def others_of(masks: torch.Tensor) -> torch.Tensor:
    """For each object, the union (clamped sum) of every other object's mask. masks: B*O*H*W."""
    return (masks.sum(dim=1, keepdim=True) - masks).clamp(0, 1)
