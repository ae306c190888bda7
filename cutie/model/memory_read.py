"""Pixel-memory reading (XMem/Cutie anisotropic L2 affinity) and soft aggregation of object probabilities.

These are plain functions so the inference procedure (memory bank, top-k) can reuse them. All maths here
is float32: callers cast their inputs and keep autocast off (see `CutieNet.read_memory`).
"""

from __future__ import annotations

import math

import torch


def similarity(
    mem_key: torch.Tensor,
    mem_shrinkage: torch.Tensor | None,
    query_key: torch.Tensor,
    query_selection: torch.Tensor | None,
) -> torch.Tensor:
    """Negative shrinkage-scaled, selection-weighted squared distance between memory and query keys.

    mem_key B*CK*[N], mem_shrinkage B*1*[N], query_key/query_selection B*CK*[HW] (trailing dims flattened)
    -> B*N*HW. With selection e: -sum_c e_c (m_c - q_c)^2, expanded so it is three matrix products.
    """
    ck = mem_key.shape[1]
    mk = mem_key.flatten(2).transpose(1, 2)  # B*N*CK
    qk = query_key.flatten(2)  # B*CK*HW
    if query_selection is not None:
        qe = query_selection.flatten(2)
        sim = 2 * (mk @ (qk * qe)) - (mk.pow(2) @ qe) - (qe * qk.pow(2)).sum(1, keepdim=True)
    else:
        sim = 2 * (mk @ qk) - mk.pow(2).sum(2, keepdim=True)
    if mem_shrinkage is not None:
        sim = sim * mem_shrinkage.flatten(1).unsqueeze(2)
    return sim / math.sqrt(ck)


def softmax_affinity(sim: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """Softmax over the memory dimension (dim 1) of B*N*HW; with `top_k`, only the k largest entries of
    each query column keep weight (the rest are exactly 0)."""
    if top_k is None or top_k >= sim.shape[1]:
        return torch.softmax(sim, dim=1)
    values, indices = torch.topk(sim, k=top_k, dim=1)
    return torch.zeros_like(sim).scatter_(1, indices, torch.softmax(values, dim=1))


def readout(affinity: torch.Tensor, mem_value: torch.Tensor) -> torch.Tensor:
    """affinity B*N*HW, mem_value B*CV*[N] -> B*CV*HW (weighted sum of memory values per query pixel)."""
    return torch.bmm(mem_value.flatten(2), affinity)


def aggregate(prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-object probabilities -> logits with a background channel first, in float32.

    Background = prod(1 - p) over objects; each probability is clamped to [1e-7, 1-1e-7] and turned into
    a logit, so a softmax over `dim` renormalises the (object, background) odds jointly."""
    prob = prob.float()
    new_prob = torch.cat([torch.prod(1 - prob, dim=dim, keepdim=True), prob], dim).clamp(1e-7, 1 - 1e-7)
    return torch.log(new_prob / (1 - new_prob))
