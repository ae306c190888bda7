"""Pixel encoder (image -> multi-scale features), key projection, and mask encoder (image + masks -> values)."""

from __future__ import annotations

import torch
from torch import nn

from cutie.config.model import ModelSpec
from cutie.model import resnet
from cutie.model.blocks import FeatureFusionBlock, ObjectConv2d, fp32_region, gru_update


class PixelEncoder(resnet.FrozenBatchNormMixin):
    """ResNet-18/50 up to layer3. image B*3*H*W (normalised) -> (f16, f8, f4) at strides 16, 8, 4."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.conv1, self.bn1 = resnet.stem(3)
        self.res2, self.layer2, self.layer3 = resnet.stages(spec.pixel_encoder_type)
        self.train()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f4 = self.res2(resnet.stem_forward(image, self.conv1, self.bn1))  # B*ms_dims[2]*H/4*W/4
        f8 = self.layer2(f4)  # B*ms_dims[1]*H/8*W/8
        f16 = self.layer3(f8)  # B*ms_dims[0]*H/16*W/16
        return f16, f8, f4


class KeyProjection(nn.Module):
    """f16 -> key (B*CK*h*w), shrinkage (B*1*h*w, >= 1) and selection (B*CK*h*w, in (0, 1))."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.pix_feat_proj = nn.Conv2d(spec.ms_dims[0], spec.pixel_dim, kernel_size=1)
        self.key_proj = nn.Conv2d(spec.pixel_dim, spec.key_dim, kernel_size=3, padding=1)
        self.d_proj = nn.Conv2d(spec.pixel_dim, 1, kernel_size=3, padding=1)  # shrinkage
        self.e_proj = nn.Conv2d(spec.pixel_dim, spec.key_dim, kernel_size=3, padding=1)  # selection
        nn.init.orthogonal_(self.key_proj.weight)
        nn.init.zeros_(self.key_proj.bias)

    def forward(
        self, f16: torch.Tensor, *, need_s: bool = True, need_e: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        x = self.pix_feat_proj(f16)
        shrinkage = self.d_proj(x) ** 2 + 1 if need_s else None
        selection = torch.sigmoid(self.e_proj(x)) if need_e else None
        return self.key_proj(x), shrinkage, selection


class SensoryDeepUpdater(nn.Module):
    """GRU update of the sensory memory from the mask encoder's value (float32, also under autocast)."""

    def __init__(self, value_dim: int, sensory_dim: int):
        super().__init__()
        self.transform = ObjectConv2d(value_dim + sensory_dim, sensory_dim * 3, kernel_size=3, padding=1)
        nn.init.xavier_normal_(self.transform.weight)

    def forward(self, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # g: B*O*Cv*h*w, h: B*O*Cs*h*w -> B*O*Cs*h*w
        with fp32_region(h):
            h = h.float()
            return gru_update(h, self.transform(torch.cat([g.float(), h], dim=2)))


class MaskEncoder(resnet.FrozenBatchNormMixin):
    """Encodes each object's mask (with the image and, for several objects, the other objects' union) into a
    memory value at stride 16, fused with the frame's pixel feature; optionally deep-updates the sensory memory.

    The ResNet input per object is [image (3), mask (1), others (1)]: 5 channels, or 4 when `single_object`.
    """

    def __init__(self, spec: ModelSpec, *, single_object: bool = False):
        super().__init__()
        self.single_object = single_object
        self.conv1, self.bn1 = resnet.stem(4 if single_object else 5)
        self.layer1, self.layer2, self.layer3 = resnet.stages(spec.mask_encoder_type)
        # final_dim: the trunk's layer3 width (256 for ResNet-18), as the official config names it
        self.fuser = FeatureFusionBlock(spec.pixel_dim, spec.mask_encoder_final_dim, spec.value_dim)
        self.sensory_update = SensoryDeepUpdater(spec.value_dim, spec.sensory_dim)
        self.train()

    def forward(
        self,
        image: torch.Tensor,
        pix_feat: torch.Tensor,
        sensory: torch.Tensor,
        masks: torch.Tensor,
        others: torch.Tensor | None,
        *,
        deep_update: bool = True,
        chunk_size: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # image: B*3*H*W (normalised), pix_feat: B*C*h*w, sensory: B*O*Cs*h*w,
        # masks/others: B*O*H*W -> value B*O*Cv*h*w, new sensory B*O*Cs*h*w
        num_objects = masks.shape[1]
        if chunk_size < 1 or chunk_size >= num_objects:
            chunk_size = num_objects
        values, sensories = [], []
        for start in range(0, num_objects, chunk_size):
            part = slice(start, start + chunk_size)
            value = self._encode(image, pix_feat, masks[:, part], None if others is None else others[:, part])
            values.append(value)
            if deep_update:
                sensories.append(self.sensory_update(value, sensory[:, part]))
        value = values[0] if len(values) == 1 else torch.cat(values, dim=1)
        if not deep_update:
            return value, sensory
        return value, sensories[0] if len(sensories) == 1 else torch.cat(sensories, dim=1)

    def _encode(
        self, image: torch.Tensor, pix_feat: torch.Tensor, masks: torch.Tensor, others: torch.Tensor | None
    ) -> torch.Tensor:
        b, o = masks.shape[:2]
        planes = [masks] if self.single_object else [masks, others]
        g = torch.stack(planes, dim=2).to(image.dtype)  # B*O*(1|2)*H*W
        # The ResNet input per object is [image, mask(, others)]; the stem convolves the image once per frame.
        g = resnet.object_stem_forward(image, g, self.conv1, self.bn1)  # (B*O)*64*H/4*W/4
        g = self.layer3(self.layer2(self.layer1(g)))
        return self.fuser(pix_feat, g.view(b, o, *g.shape[1:]))  # B*O*Cv*h*w
