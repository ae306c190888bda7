"""Object summarizer: pools each object's memory value into `num_summaries` weighted summaries
(half inside the mask, half outside), with the pooled weight mass kept for averaging over frames."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cutie.config.model import ModelSpec
from cutie.model.blocks import fp32_region
from cutie.model.positional import SinePositionalEncoding


class ObjectSummarizer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        dim = spec.summarizer_embed_dim
        self.num_summaries = spec.num_summaries
        self.add_pe = spec.summarizer_add_pe
        if self.add_pe:
            self.pos_enc = SinePositionalEncoding(dim, scale=spec.pixel_pe_scale, temperature=spec.pixel_pe_temperature)
        self.input_proj = nn.Linear(spec.value_dim, dim)
        self.feature_pred = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.weights_pred = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, self.num_summaries)
        )

    def forward(
        self, masks: torch.Tensor, value: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # masks: B*O*H*W (any resolution), value: B*O*Cv*h*w
        # -> summaries B*O*Q*(C+1) (weighted sums, then the weight mass), logits B*O*h*w*Q if need_weights
        h, w = value.shape[-2:]
        masks = F.interpolate(masks, size=(h, w), mode="area").unsqueeze(-1)  # B*O*h*w*1
        half = self.num_summaries // 2
        allowed = torch.cat([masks.expand(-1, -1, -1, -1, half), (1 - masks).expand(-1, -1, -1, -1, half)], -1)

        value = self.input_proj(value.permute(0, 1, 3, 4, 2))  # B*O*h*w*C
        if self.add_pe:
            value = value + self.pos_enc.grid(h, w, value.dtype)
        with fp32_region(value):
            value = value.float()
            feature = self.feature_pred(value)  # B*O*h*w*C
            logits = self.weights_pred(value)  # B*O*h*w*Q
            weights = logits.sigmoid() * allowed.float()
            sums = torch.einsum("bohwq,bohwc->boqc", weights, feature)
            area = weights.sum(dim=(2, 3)).unsqueeze(-1)  # B*O*Q*1
        return torch.cat([sums, area], dim=-1), (logits if need_weights else None)
