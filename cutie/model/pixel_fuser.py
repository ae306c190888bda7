"""Pixel feature fuser: memory readout + compressed sensory memory (with last masks), fused with the frame."""

from __future__ import annotations

import torch
from torch import nn

from cutie.config.model import ModelSpec
from cutie.model.blocks import FeatureFusionBlock, ObjectConv2d


class PixelFeatureFuser(nn.Module):
    def __init__(self, spec: ModelSpec, *, single_object: bool = False):
        super().__init__()
        self.single_object = single_object
        self.fuser = FeatureFusionBlock(spec.pixel_dim, spec.value_dim, spec.embed_dim)
        extra = 1 if single_object else 2  # last mask (+ last others)
        self.sensory_compress = ObjectConv2d(spec.sensory_dim + extra, spec.value_dim, kernel_size=1)

    def forward(
        self,
        pix_feat: torch.Tensor,
        pixel_memory: torch.Tensor,
        sensory: torch.Tensor,
        last_mask: torch.Tensor,
        last_others: torch.Tensor | None,
        *,
        chunk_size: int = -1,
    ) -> torch.Tensor:
        # pix_feat: B*C*h*w, pixel_memory: B*O*Cv*h*w, sensory: B*O*Cs*h*w, last_mask/others: B*O*h*w
        # -> B*O*C*h*w
        planes = [last_mask] if self.single_object else [last_mask, last_others]
        masks = torch.stack(planes, dim=2)  # B*O*(1|2)*h*w
        num_objects = pixel_memory.shape[1]
        if chunk_size < 1 or chunk_size >= num_objects:
            chunk_size = num_objects
        out = []
        for start in range(0, num_objects, chunk_size):
            part = slice(start, start + chunk_size)
            compressed = self.sensory_compress(torch.cat([sensory[:, part], masks[:, part].to(sensory.dtype)], 2))
            out.append(self.fuser(pix_feat, pixel_memory[:, part] + compressed))
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)
