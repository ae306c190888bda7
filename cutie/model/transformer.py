"""Object transformer: object queries, initialised from the object summaries, alternate with the pixel
features — queries read pixels under a foreground/background mask, attend to each other, go through an FFN;
pixels read the queries back and go through a convolutional FFN. An auxiliary mask is predicted from the
pixel features before the first block and after every block; it also sets the next block's attention mask.

Sequence layouts: queries (B*O)*Q*C, flattened pixels (B*O)*(h*w)*C, attention masks (B*O*heads)*Q*(h*w)
with True = blocked (nn.MultiheadAttention's convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cutie.config.model import ModelSpec
from cutie.model.blocks import ChannelAttentionResBlock, ObjectConv2d
from cutie.model.memory_read import aggregate
from cutie.model.positional import SinePositionalEncoding


def _with_pe(x: torch.Tensor, pe: torch.Tensor, add: bool) -> torch.Tensor:
    return x + pe if add else x


class CrossAttention(nn.Module):
    """x attends to mem. The residual adds to the (optionally layer-normed) x."""

    def __init__(self, dim: int, heads: int, add_pe_to_qkv: tuple[bool, bool, bool], norm: bool = True):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.add_pe = add_pe_to_qkv

    def forward(
        self,
        x: torch.Tensor,
        mem: torch.Tensor,
        x_pe: torch.Tensor,
        mem_pe: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.norm(x)
        q = _with_pe(x, x_pe, self.add_pe[0])
        k = _with_pe(mem, mem_pe, self.add_pe[1])
        v = _with_pe(mem, mem_pe, self.add_pe[2])
        out, weights = self.cross_attn(
            q, k, v, attn_mask=attn_mask, need_weights=need_weights, average_attn_weights=False
        )
        return x + out, weights


class SelfAttention(nn.Module):
    """Query self-attention; the residual adds to the layer-normed input."""

    def __init__(self, dim: int, heads: int, add_pe_to_qkv: tuple[bool, bool, bool]):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.add_pe = add_pe_to_qkv

    def forward(self, x: torch.Tensor, pe: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        q, k, v = (_with_pe(x, pe, add) for add in self.add_pe)
        return x + self.self_attn(q, k, v, need_weights=False)[0]


class FFN(nn.Module):
    """Pre-norm feed-forward with a residual on the un-normed input."""

    def __init__(self, dim: int, ff_dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, ff_dim)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear2(F.relu(self.linear1(self.norm(x))))


class PixelFFN(nn.Module):
    """Convolutional FFN on the flattened pixels, back to B*O*C*h*w."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = ChannelAttentionResBlock(dim, dim)

    def forward(self, pixel_flat: torch.Tensor, b: int, o: int, h: int, w: int) -> torch.Tensor:
        # pixel_flat: (B*O)*(h*w)*C -> B*O*C*h*w
        x = pixel_flat.transpose(1, 2).reshape(b * o, -1, h, w)
        x = self.conv(x)
        return x.view(b, o, -1, h, w)


class QueryTransformerBlock(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        dim, heads = spec.transformer_embed_dim, spec.num_heads
        self.num_heads = heads
        self.num_queries = spec.num_queries
        self.read_from_pixel = CrossAttention(dim, heads, spec.read_from_pixel_pe)
        self.self_attn = SelfAttention(dim, heads, spec.query_self_attention_pe)
        self.ffn = FFN(dim, spec.ff_dim)
        self.read_from_query = CrossAttention(dim, heads, spec.read_from_query_pe, norm=spec.read_from_query_norm)
        self.pixel_ffn = PixelFFN(dim)

    def forward(
        self,
        query: torch.Tensor,
        pixel: torch.Tensor,
        query_pe: torch.Tensor,
        pixel_pe: torch.Tensor,
        attn_mask: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        # query/query_pe: (B*O)*Q*C, pixel: B*O*C*h*w, pixel_pe: (B*O)*(h*w)*C, attn_mask: (B*O*heads)*Q*(h*w)
        b, o, _, h, w = pixel.shape
        pixel_flat = pixel.flatten(3).flatten(0, 1).transpose(1, 2)  # (B*O)*(h*w)*C
        query, q_weights = self.read_from_pixel(
            query, pixel_flat, query_pe, pixel_pe, attn_mask=attn_mask, need_weights=need_weights
        )
        query = self.ffn(self.self_attn(query, query_pe))
        pixel_flat, p_weights = self.read_from_query(pixel_flat, query, pixel_pe, query_pe, need_weights=need_weights)
        pixel = self.pixel_ffn(pixel_flat, b, o, h, w)
        if need_weights:  # per head: B*O*heads*Q*h*w
            q_weights = q_weights.view(b, o, self.num_heads, self.num_queries, h, w)
            p_weights = p_weights.transpose(2, 3).reshape(b, o, self.num_heads, self.num_queries, h, w)
        return query, pixel, q_weights, p_weights


class QueryTransformer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        dim = spec.transformer_embed_dim
        self.num_heads = spec.num_heads
        self.num_queries = spec.num_queries
        self.query_init = nn.Embedding(self.num_queries, dim)
        self.query_emb = nn.Embedding(self.num_queries, dim)
        self.summary_to_query_init = nn.Linear(dim, dim)
        self.summary_to_query_emb = nn.Linear(dim, dim)
        self.pixel_init_proj = ObjectConv2d(dim, dim, kernel_size=1)
        self.pixel_emb_proj = ObjectConv2d(dim, dim, kernel_size=1)
        self.spatial_pe = SinePositionalEncoding(dim, scale=spec.pixel_pe_scale, temperature=spec.pixel_pe_temperature)
        self.blocks = nn.ModuleList(QueryTransformerBlock(spec) for _ in range(spec.num_blocks))
        self.mask_pred = nn.ModuleList(
            nn.Sequential(nn.ReLU(), ObjectConv2d(dim, 1, kernel_size=1)) for _ in range(spec.num_blocks + 1)
        )

    def forward(
        self,
        pixel: torch.Tensor,
        obj_summaries: torch.Tensor,
        selector: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, dict]:
        # pixel: B*O*C*h*w, obj_summaries: B*O*T*Q*(C+1), selector: B*O*1*1 (1 = object present)
        # -> pixel B*O*C*h*w, aux {logits: [B*O*h*w] * (num_blocks+1), attn_mask: B*O*Q*h*w (last used),
        #    q_weights/p_weights: last block's B*O*heads*Q*h*w when need_weights}
        b, o, _, h, w = pixel.shape
        # Object values: summed over frames, normalised by the summed weight mass (the last channel).
        summaries = obj_summaries.flatten(0, 1)  # (B*O)*T*Q*(C+1)
        sums = summaries[..., :-1].sum(dim=1)
        area = summaries[..., -1:].sum(dim=1)
        obj_values = sums / (area + 1e-4)  # (B*O)*Q*C
        query = self.query_init.weight.unsqueeze(0) + self.summary_to_query_init(obj_values)
        query_pe = self.query_emb.weight.unsqueeze(0) + self.summary_to_query_emb(obj_values)

        pixel_emb = self.pixel_emb_proj(pixel).flatten(3).flatten(0, 1).transpose(1, 2)  # (B*O)*(h*w)*C
        pixel_pe = self.spatial_pe.grid(h, w, pixel_emb.dtype).flatten(0, 1).unsqueeze(0) + pixel_emb
        pixel = self.pixel_init_proj(pixel)

        logits = self.mask_pred[0](pixel).squeeze(2)  # B*O*h*w
        blocked = self._blocked(logits, selector)
        aux_logits = [logits]
        q_weights = p_weights = None
        for block, pred in zip(self.blocks, self.mask_pred[1:], strict=True):
            query, pixel, q_weights, p_weights = block(
                query, pixel, query_pe, pixel_pe, self._per_head(blocked), need_weights=need_weights
            )
            logits = pred(pixel).squeeze(2)
            blocked = self._blocked(logits, selector)
            aux_logits.append(logits)
        aux = {"logits": aux_logits, "attn_mask": blocked.view(b, o, self.num_queries, h, w)}
        if need_weights:
            aux["q_weights"], aux["p_weights"] = q_weights, p_weights
        return pixel, aux

    def _blocked(self, logits: torch.Tensor, selector: torch.Tensor | None) -> torch.Tensor:
        """Masked attention: the first Q/2 queries see only the pixels where the object wins the soft
        aggregation, the rest only the others; a query that would see nothing sees everything.
        logits: B*O*h*w -> B*O*Q*(h*w) bool, True = blocked."""
        prob = logits.sigmoid()
        if selector is not None:
            prob = prob * selector
        agg = aggregate(prob, dim=1)  # B*(O+1)*h*w
        fg = (agg[:, 1:] >= agg.max(dim=1, keepdim=True)[0]).flatten(2)  # B*O*(h*w)
        half = self.num_queries // 2
        blocked = torch.cat(
            [(~fg).unsqueeze(2).expand(-1, -1, half, -1), fg.unsqueeze(2).expand(-1, -1, half, -1)], dim=2
        )
        return blocked & ~blocked.all(dim=-1, keepdim=True)

    def _per_head(self, blocked: torch.Tensor) -> torch.Tensor:
        # B*O*Q*N -> (B*O*heads)*Q*N, batch-major as nn.MultiheadAttention expects
        b, o, q, n = blocked.shape
        return blocked.unsqueeze(2).expand(b, o, self.num_heads, q, n).reshape(b * o * self.num_heads, q, n)
