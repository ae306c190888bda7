"""Training losses of Cutie: point-sampled cross-entropy + soft dice on every frame after the first, plus the
auxiliary losses on the sensory-memory and object-transformer predictions.

Per sample b with n = num_objects[b] objects, the frames 1..T-1 are stacked and, for each prediction:
  points = uncertain_point_coords(logits)        one set of points per frame
  ce     = sum over frames of mean over points of CE(point logits, point-sampled one-hot gt)
  dice   = sum over frames of mean over objects of 1 - (2|p.g| + 1) / (|p| + |g| + 1)   (background ignored)
Every term is averaged over the batch; auxiliary terms are multiplied by their weight from the model config
(`aux_loss.sensory.weight`, `aux_loss.query.weight`, one query term per object-transformer level).
Channels beyond n + 1 (padded objects) are dropped, and ground-truth labels above n match no channel, so
objects beyond num_objects[b] contribute nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cutie.config.model import ModelSpec
from cutie.config.train import StageConfig
from cutie.config.typed import ConfigError
from cutie.model.clip_forward import batch_object_counts
from cutie.model.point_sampling import sample_at, uncertain_point_coords


@dataclass(frozen=True)
class LossSettings:
    num_points: int  # points sampled per frame (train_num_points)
    oversample_ratio: float
    importance_sample_ratio: float
    sensory_weight: float  # aux_loss.sensory.weight
    query_weight: float  # aux_loss.query.weight

    @classmethod
    def of(cls, stage: StageConfig, model: ModelSpec) -> LossSettings:
        """The loss settings of a stage of the typed training configuration."""
        if not stage.point_supervision:
            raise ConfigError(
                f"`{stage.name}.point_supervision`: false is not supported (Cutie trains with point supervision)"
            )
        return cls(
            num_points=stage.train_num_points,
            oversample_ratio=stage.oversample_ratio,
            importance_sample_ratio=stage.importance_sample_ratio,
            sensory_weight=model.sensory_aux_weight,
            query_weight=model.query_aux_weight,
        )


def one_hot_labels(cls_gt: torch.Tensor, num_objects: int) -> torch.Tensor:
    """cls_gt: F*1*H*W integer labels -> F*(num_objects+1)*H*W float one-hot (background first).

    Labels outside 0..num_objects give an all-zero row, i.e. the pixel is not supervised.
    """
    classes = torch.arange(num_objects + 1, device=cls_gt.device).view(1, -1, 1, 1)
    return (cls_gt == classes).float()


def point_ce(point_logits: torch.Tensor, point_gt: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with soft targets, per frame. point_logits, point_gt: F*C*P. Returns F (mean over P)."""
    return F.cross_entropy(point_logits, point_gt, reduction="none").mean(dim=1)


def point_dice(point_probs: torch.Tensor, point_gt: torch.Tensor) -> torch.Tensor:
    """Soft dice loss (+1 smoothing) over objects, background excluded. F*C*P inputs. Returns F (mean over
    objects; 0 when there is no object)."""
    probs, gt = point_probs[:, 1:], point_gt[:, 1:]  # F*n*P
    if probs.shape[1] == 0:
        return probs.new_zeros(probs.shape[0])
    overlap = 2 * (probs * gt).sum(-1)
    size = probs.sum(-1) + gt.sum(-1)
    return (1 - (overlap + 1) / (size + 1)).mean(dim=1)


class LossComputer:
    """Computes the training losses of one step from the batch and the clip forward's outputs.

    `compute()` returns 0-dim float32 tensors: 'total_loss' (the only one carrying gradients) and, detached
    for logging, 'loss_ce' and 'loss_dice' (main prediction; the official names), their per-frame breakdown
    'ce/t{ti}' and 'dice/t{ti}' (summing to loss_ce / loss_dice), and the weighted auxiliary terms
    'aux_sensory_ce', 'aux_sensory_dice', 'aux_query_ce_l{l}', 'aux_query_dice_l{l}' (when the outputs hold
    them). total_loss = loss_ce + loss_dice + every aux term.
    """

    def __init__(self, settings: LossSettings) -> None:
        self.num_points = settings.num_points
        self.oversample_ratio = settings.oversample_ratio
        self.importance_sample_ratio = settings.importance_sample_ratio
        self.sensory_weight = settings.sensory_weight
        self.query_weight = settings.query_weight

    def point_losses(self, logits: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits: F*C*h*w (any resolution), gt: F*C*H*W one-hot. Returns per-frame (ce, dice), each F."""
        logits = logits.float()
        with torch.no_grad():
            coords = uncertain_point_coords(
                logits, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )  # F*P*2
            point_gt = sample_at(gt, coords)  # F*C*P, soft near boundaries
        point_logits = sample_at(logits, coords)  # F*C*P
        return point_ce(point_logits, point_gt), point_dice(point_logits.softmax(dim=1), point_gt)

    def compute(self, batch: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        num_frames = batch["rgb"].shape[1]
        if num_frames < 2:
            raise ValueError(f"need at least 2 frames per clip to compute losses, got {num_frames}")
        counts = _object_counts(batch_object_counts(batch))
        frames = range(1, num_frames)
        device = outputs["logits_1"].device
        with torch.autocast(device_type=device.type, enabled=False):  # loss maths in float32
            return self._compute(batch, outputs, counts, frames)

    def _compute(
        self, batch: Mapping[str, Any], outputs: Mapping[str, Any], counts: list[int], frames: range
    ) -> dict[str, torch.Tensor]:
        batch_size = len(counts)
        aux = [outputs[f"aux_{ti}"] for ti in frames]
        ce_per_frame: torch.Tensor | float = 0.0
        dice_per_frame: torch.Tensor | float = 0.0
        aux_terms: dict[str, torch.Tensor | float] = {}

        def add_aux(name: str, value: torch.Tensor) -> None:
            aux_terms[name] = aux_terms.get(name, 0.0) + value

        for b, n in enumerate(counts):
            keep = n + 1  # background + this sample's objects
            gt = one_hot_labels(batch["cls_gt"][b, 1:], n)  # F*(n+1)*H*W, F = T-1
            logits = torch.stack([outputs[f"logits_{ti}"][b, :keep] for ti in frames])  # F*(n+1)*H*W
            ce, dice = self.point_losses(logits, gt)
            ce_per_frame = ce_per_frame + ce / batch_size
            dice_per_frame = dice_per_frame + dice / batch_size

            if "sensory_logits" in aux[0]:
                sensory = torch.stack([a["sensory_logits"][b, :keep] for a in aux])  # F*(n+1)*h*w
                ce, dice = self.point_losses(sensory, gt)
                add_aux("aux_sensory_ce", ce.sum() * (self.sensory_weight / batch_size))
                add_aux("aux_sensory_dice", dice.sum() * (self.sensory_weight / batch_size))
            if aux[0].get("q_logits") is not None:
                for level in range(aux[0]["q_logits"].shape[2]):
                    query = torch.stack([a["q_logits"][b, :keep, level] for a in aux])  # F*(n+1)*h*w
                    ce, dice = self.point_losses(query, gt)
                    add_aux(f"aux_query_ce_l{level}", ce.sum() * (self.query_weight / batch_size))
                    add_aux(f"aux_query_dice_l{level}", dice.sum() * (self.query_weight / batch_size))

        assert isinstance(ce_per_frame, torch.Tensor) and isinstance(dice_per_frame, torch.Tensor)
        loss_ce, loss_dice = ce_per_frame.sum(), dice_per_frame.sum()
        total = loss_ce + loss_dice
        for value in aux_terms.values():
            total = total + value

        losses: dict[str, torch.Tensor] = {"total_loss": total}
        losses["loss_ce"] = loss_ce.detach()
        losses["loss_dice"] = loss_dice.detach()
        for i, ti in enumerate(frames):
            losses[f"ce/t{ti}"] = ce_per_frame[i].detach()
            losses[f"dice/t{ti}"] = dice_per_frame[i].detach()
        for name, value in aux_terms.items():
            assert isinstance(value, torch.Tensor)
            losses[name] = value.detach()
        return losses


def _object_counts(num_objects: torch.Tensor | Sequence[int]) -> list[int]:
    counts = num_objects.tolist() if isinstance(num_objects, torch.Tensor) else list(num_objects)
    counts = [int(c) for c in counts]
    if not counts or min(counts) < 0:
        raise ValueError(f"batch['num_objects'] must list a non-negative count per sample, got {counts}")
    return counts
