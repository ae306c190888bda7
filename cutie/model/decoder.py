"""Mask decoder: per-object readout (stride 16) upsampled with the frame's skip features to stride 4, one
logit per object, and the multi-scale GRU update of the sensory memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cutie.config.model import ModelSpec
from cutie.model.blocks import ObjectConv2d, ObjectResBlock, fp32_region, gru_update, resize_objects


class DecoderFeatureProcessor(nn.Module):
    """1x1 projections of the pixel encoder's stride-8 and stride-4 features to the decoder widths."""

    def __init__(self, in_dims: tuple[int, ...], out_dims: tuple[int, ...]):
        super().__init__()
        self.transforms = nn.ModuleList(nn.Conv2d(i, o, kernel_size=1) for i, o in zip(in_dims, out_dims, strict=True))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [proj(f) for proj, f in zip(self.transforms, features, strict=True)]


class MaskUpsampleBlock(nn.Module):
    """x2 bilinear upsampling of B*O*C*h*w, plus the shared skip feature, through a residual block."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.out_conv = ObjectResBlock(in_dim, out_dim)

    def forward(self, g: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # g: B*O*Cin*h*w, skip: B*Cin*2h*2w -> B*O*Cout*2h*2w
        return self.out_conv(resize_objects(g, 2.0, "bilinear") + skip.unsqueeze(1))


class SensoryUpdater(nn.Module):
    """GRU update of the sensory memory from decoder features at strides 16, 8 and 4 (float32 GRU)."""

    def __init__(self, g_dims: tuple[int, int, int], mid_dim: int, sensory_dim: int):
        super().__init__()
        self.g16_conv = ObjectConv2d(g_dims[0], mid_dim, kernel_size=1)
        self.g8_conv = ObjectConv2d(g_dims[1], mid_dim, kernel_size=1)
        self.g4_conv = ObjectConv2d(g_dims[2], mid_dim, kernel_size=1)
        self.transform = ObjectConv2d(mid_dim + sensory_dim, sensory_dim * 3, kernel_size=3, padding=1)
        nn.init.xavier_normal_(self.transform.weight)

    def forward(self, g16: torch.Tensor, g8: torch.Tensor, g4: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # g16/g8/g4: B*O*C*(h,2h,4h)*(w,2w,4w), h: B*O*Cs*h*w -> B*O*Cs*h*w
        g = (
            self.g16_conv(g16)
            + self.g8_conv(resize_objects(g8, 1 / 2, "area"))
            + self.g4_conv(resize_objects(g4, 1 / 4, "area"))
        )
        with fp32_region(h):
            h = h.float()
            return gru_update(h, self.transform(torch.cat([g.float(), h], dim=2)))


class MaskDecoder(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        up = spec.up_dims
        self.sensory_update = SensoryUpdater((up[0], up[1], up[2] + 1), spec.sensory_dim, spec.sensory_dim)
        self.decoder_feat_proc = DecoderFeatureProcessor(spec.ms_dims[1:], up[:-1])
        self.up_16_8 = MaskUpsampleBlock(up[0], up[1])
        self.up_8_4 = MaskUpsampleBlock(up[1], up[2])
        self.pred = nn.Conv2d(up[-1], 1, kernel_size=3, padding=1)

    def forward(
        self,
        ms_image_feat: list[torch.Tensor],
        memory_readout: torch.Tensor,
        sensory: torch.Tensor,
        *,
        chunk_size: int = -1,
        update_sensory: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # ms_image_feat: [f16 B*C16*h*w, f8 B*C8*2h*2w, f4 B*C4*4h*4w], memory_readout: B*O*C*h*w,
        # sensory: B*O*Cs*h*w -> new sensory B*O*Cs*h*w, logits B*O*4h*4w
        f8, f4 = self.decoder_feat_proc(list(ms_image_feat[1:]))
        num_objects = memory_readout.shape[1]
        if chunk_size < 1 or chunk_size >= num_objects:
            chunk_size = num_objects
        all_logits, sensories = [], []
        for start in range(0, num_objects, chunk_size):
            part = slice(start, start + chunk_size)
            p16 = memory_readout[:, part]
            p8 = self.up_16_8(p16, f8)
            p4 = self.up_8_4(p8, f4)  # B*o*C*4h*4w
            b, o = p4.shape[:2]
            with fp32_region(p4):
                logits = self.pred(F.relu(p4.flatten(0, 1).float())).view(b, o, 1, *p4.shape[-2:])
            if update_sensory:
                p4 = torch.cat([p4, logits], dim=2)  # promotes to float32 under autocast
                sensories.append(self.sensory_update(p16, p8, p4, sensory[:, part]))
            all_logits.append(logits.squeeze(2))
        logits = all_logits[0] if len(all_logits) == 1 else torch.cat(all_logits, dim=1)
        if not update_sensory:
            return sensory, logits
        return (sensories[0] if len(sensories) == 1 else torch.cat(sensories, dim=1)), logits
