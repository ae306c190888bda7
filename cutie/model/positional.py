"""2-d sine positional encoding with normalised coordinates (Mask2Former style, sin/cos interleaved)."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinePositionalEncoding(nn.Module):
    """Encodes an h*w grid as h*w*C: C/2 channels for x then C/2 for y, each (sin, cos) interleaved per
    frequency. Coordinates run 0..scale across the grid. `inv_freq` is a buffer saved in the checkpoint
    (the official layout stores it), so the loaded values are the ones used."""

    def __init__(self, dim: int, *, scale: float = 2 * math.pi, temperature: float = 10000.0):
        super().__init__()
        half = int(math.ceil(dim / 4) * 2)  # channels per axis
        self.register_buffer("inv_freq", 1.0 / (temperature ** (torch.arange(0, half, 2).float() / half)))
        self.scale = scale
        self.eps = 1e-6

    def grid(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """The encoding of an h*w grid: h*w*C (C = 4 * len(inv_freq)), float32 maths cast to `dtype`."""
        inv_freq = self.inv_freq.float()
        pos_y = torch.arange(h, device=inv_freq.device, dtype=torch.float32)
        pos_x = torch.arange(w, device=inv_freq.device, dtype=torch.float32)
        pos_y = pos_y / (pos_y[-1] + self.eps) * self.scale
        pos_x = pos_x / (pos_x[-1] + self.eps) * self.scale
        emb_x = _interleave(pos_x[:, None] * inv_freq[None])  # w*C/2
        emb_y = _interleave(pos_y[:, None] * inv_freq[None])  # h*C/2
        emb = torch.cat([emb_x.unsqueeze(0).expand(h, -1, -1), emb_y.unsqueeze(1).expand(-1, w, -1)], dim=-1)
        return emb.to(dtype)


def _interleave(phase: torch.Tensor) -> torch.Tensor:
    # N*F -> N*2F as sin(f0), cos(f0), sin(f1), cos(f1), ...
    return torch.stack([phase.sin(), phase.cos()], dim=-1).flatten(-2)
