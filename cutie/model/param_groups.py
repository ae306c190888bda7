"""AdamW parameter groups, as in official Cutie: the pixel encoder (the ImageNet backbone) learns at
lr * backbone_lr_ratio; the learned query embeddings get their own weight decay; everything else is plain."""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger(__name__)

BACKBONE_PREFIXES = ("pixel_encoder.",)
# Official rule: a parameter is an embedding when its name ends with one of these. In Cutie this matches the
# query_init / query_emb embeddings and, by suffix, the weights of summary_to_query_init / summary_to_query_emb
# (official behaviour, kept); summary_pos and obj_pe do not occur.
EMBEDDING_SUFFIXES = tuple(f"{name}.weight" for name in ("summary_pos", "query_init", "query_emb", "obj_pe"))
# Prefixes added by DistributedDataParallel and torch.compile; never part of a saved key.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def official_name(name: str) -> str:
    """Parameter name without DistributedDataParallel / torch.compile wrapper prefixes."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def group_of(name: str) -> str:
    """'backbone', 'embedding' or 'other' for an official parameter name."""
    if name.startswith(BACKBONE_PREFIXES):
        return "backbone"
    if name.endswith(EMBEDDING_SUFFIXES):
        return "embedding"
    return "other"


def param_groups(
    net: nn.Module, *, lr: float, weight_decay: float, embed_weight_decay: float, backbone_lr_ratio: float
) -> list[dict]:
    """Three AdamW groups (always in this order, possibly empty): backbone, embedding, other. Each trainable
    parameter is in exactly one group (shared parameters once); frozen ones (requires_grad False) in none.
    Each group has a 'name' entry for logging."""
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "embedding": [], "other": []}
    seen: set[int] = set()
    for name, param in net.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        groups[group_of(official_name(name))].append(param)
    log.info(
        "parameter groups: backbone %d tensors (lr x %g), embedding %d (weight decay %g), other %d",
        len(groups["backbone"]),
        backbone_lr_ratio,
        len(groups["embedding"]),
        embed_weight_decay,
        len(groups["other"]),
    )
    return [
        {"name": "backbone", "params": groups["backbone"], "lr": lr * backbone_lr_ratio, "weight_decay": weight_decay},
        {"name": "embedding", "params": groups["embedding"], "lr": lr, "weight_decay": embed_weight_decay},
        {"name": "other", "params": groups["other"], "lr": lr, "weight_decay": weight_decay},
    ]
