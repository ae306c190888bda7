"""Picture grids for TensorBoard: frames, ground truth and prediction of one sample of a clip."""

from __future__ import annotations

import torch

from cutie.utils.palette import davis_palette_array

_PALETTE = torch.from_numpy(davis_palette_array().copy()).float() / 255


def overlay(rgb: torch.Tensor, ids: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """rgb 3*H*W in [0,1], ids H*W long -> 3*H*W with object colours blended in."""
    colours = _PALETTE.to(rgb.device)[ids.clamp(0, 255)].permute(2, 0, 1)  # 3*H*W
    fg = (ids > 0).unsqueeze(0)
    return torch.where(fg, (1 - alpha) * rgb + alpha * colours, rgb)


def clip_grid(batch: dict, output: dict, sample: int = 0) -> torch.Tensor:
    """3*(3H)*(T*W) image: row 1 frames, row 2 ground truth, row 3 prediction (frame 0 shows its given mask)."""
    rgb = batch["rgb"][sample].detach().float().cpu()  # T*3*H*W
    gt = batch["cls_gt"][sample, :, 0].detach().cpu()  # T*H*W
    t_len = rgb.shape[0]
    preds = [gt[0]]
    for ti in range(1, t_len):
        logits = output.get(f"logits_{ti}")
        preds.append(gt[ti] * 0 if logits is None else logits[sample].detach().float().argmax(0).cpu())
    rows = [
        torch.cat(list(rgb), dim=2),
        torch.cat([overlay(rgb[t], gt[t]) for t in range(t_len)], dim=2),
        torch.cat([overlay(rgb[t], preds[t]) for t in range(t_len)], dim=2),
    ]
    return torch.cat(rows, dim=1).clamp(0, 1)
