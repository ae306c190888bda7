"""Auxiliary predictions for the auxiliary losses: masks from the sensory memory and from the object
transformer's per-block logits, both aggregated with a background channel."""

from __future__ import annotations

import torch
from torch import nn

from cutie.config.model import ModelSpec
from cutie.model.blocks import ObjectConv2d
from cutie.model.memory_read import aggregate


class LinearPredictor(nn.Module):
    """Per-object logits as a per-pixel dot product between the pixel feature and a projection of x (+ bias
    channel). pix_feat: B*C*h*w, x: B*O*Cx*h*w -> B*O*h*w."""

    def __init__(self, x_dim: int, pix_dim: int):
        super().__init__()
        self.projection = ObjectConv2d(x_dim, pix_dim + 1, kernel_size=1)

    def forward(self, pix_feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.projection(x)
        return (pix_feat.unsqueeze(1) * x[:, :, :-1]).sum(dim=2) + x[:, :, -1]


def _aggregate_selected(logits: torch.Tensor, selector: torch.Tensor | None) -> torch.Tensor:
    prob = logits.sigmoid()
    if selector is not None:
        prob = prob * selector
    return aggregate(prob, dim=1)


class AuxComputer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.sensory_aux = LinearPredictor(spec.sensory_dim, spec.embed_dim) if spec.sensory_aux else None
        self.use_query_aux = spec.query_aux

    def forward(
        self, pix_feat: torch.Tensor, aux_input: dict, selector: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        # pix_feat: B*C*h*w; aux_input: sensory B*O*Cs*h*w, q_logits [B*O*h*w] * L, attn_mask;
        # selector: B*O*1*1 -> {attn_mask, sensory_logits B*(O+1)*h*w, q_logits B*(O+1)*L*h*w}
        out: dict[str, torch.Tensor] = {"attn_mask": aux_input["attn_mask"]}
        if self.sensory_aux is not None:
            out["sensory_logits"] = _aggregate_selected(self.sensory_aux(pix_feat, aux_input["sensory"]), selector)
        if self.use_query_aux and aux_input.get("q_logits") is not None:
            out["q_logits"] = _aggregate_selected(
                torch.stack(aux_input["q_logits"], dim=2), None if selector is None else selector.unsqueeze(2)
            )
        return out
