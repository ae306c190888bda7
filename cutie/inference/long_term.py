"""Long-term memory (XMem-style consolidation), optional in the inference procedure.

When a group's working memory reaches `max_mem_frames - 1` temporary frames, its oldest temporary tokens
(all but the newest `min_mem_frames - 1` frames) are consolidated: the `num_prototypes` most used tokens
(usage = summed affinity per read / reads survived) become prototype keys, and every candidate token is
softly assigned to the prototypes to form their values and shrinkage. Prototypes accumulate in a long-term
store read together with the working memory; when it grows past `max_num_tokens - num_prototypes`, only the
most used `max_num_tokens - num_prototypes - buffer_tokens` tokens are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cutie.model.memory_read import similarity, softmax_affinity


@dataclass(frozen=True)
class LongTermSettings:
    max_mem_frames: int = 10  # working memory frames (permanent included) that trigger consolidation
    min_mem_frames: int = 5  # working memory frames (permanent included) kept after consolidation
    num_prototypes: int = 128  # tokens per consolidation
    max_num_tokens: int = 10000  # long-term memory size
    buffer_tokens: int = 2000  # room left after removing obsolete tokens
    count_usage: bool = True  # track usage of long-term tokens too (for removal)

    def __post_init__(self) -> None:
        if not 2 <= self.min_mem_frames < self.max_mem_frames:
            raise ValueError(
                f"long_term: need 2 <= min_mem_frames ({self.min_mem_frames}) < max_mem_frames ({self.max_mem_frames})"
            )
        if self.max_num_tokens - self.num_prototypes - self.buffer_tokens <= 0:
            raise ValueError("long_term: max_num_tokens must exceed num_prototypes + buffer_tokens")


class Usage:
    """Per-token usage statistics: summed affinity (use) and number of reads survived (life)."""

    def __init__(self, batch: int, tokens: int, device: torch.device):
        self.use = torch.zeros(batch, tokens, device=device)  # B*N
        self.life = torch.full((batch, tokens), 1e-7, device=device)  # B*N; avoids 0/0 before the first read

    def extend(self, tokens: int) -> None:
        b, device = self.use.shape[0], self.use.device
        self.use = torch.cat([self.use, torch.zeros(b, tokens, device=device)], 1)
        self.life = torch.cat([self.life, torch.full((b, tokens), 1e-7, device=device)], 1)

    def record(self, affinity_sum: torch.Tensor) -> None:
        """affinity_sum: B*N, the affinity each token received in one read."""
        if affinity_sum.shape[-1] == 0:
            return
        self.use = self.use + affinity_sum.float()
        self.life = self.life + 1

    def normalised(self) -> torch.Tensor:
        return self.use / self.life  # B*N

    def keep(self, index: torch.Tensor) -> None:
        """index: B*K token indices to keep (per batch element)."""
        self.use = torch.gather(self.use, 1, index)
        self.life = torch.gather(self.life, 1, index)

    def slice(self, start: int, stop: int | None) -> None:
        self.use, self.life = self.use[:, start:stop], self.life[:, start:stop]


@dataclass
class LongTermStore:
    """Prototype tokens of one memory group (no permanent part)."""

    key: torch.Tensor  # B*CK*N
    shrinkage: torch.Tensor  # B*1*N
    values: dict[int, torch.Tensor]  # object id -> B*CV*N
    usage: Usage | None

    @property
    def size(self) -> int:
        return self.key.shape[-1]

    def add(self, key: torch.Tensor, shrinkage: torch.Tensor, values: dict[int, torch.Tensor]) -> None:
        self.key = torch.cat([self.key, key], -1)
        self.shrinkage = torch.cat([self.shrinkage, shrinkage], -1)
        self.values = {obj: torch.cat([self.values[obj], values[obj]], -1) for obj in self.values}
        if self.usage is not None:
            self.usage.extend(key.shape[-1])

    def remove_obsolete(self, max_size: int) -> None:
        """Keeps the `max_size` most used tokens (ordered by usage, as the official store)."""
        if self.usage is None:
            raise RuntimeError("long-term memory removal needs usage counting (long_term.count_usage=true)")
        _, index = torch.topk(self.usage.normalised(), k=max_size, dim=-1)  # B*K

        def take(t: torch.Tensor) -> torch.Tensor:  # B*C*N -> B*C*K
            return torch.gather(t, 2, index.unsqueeze(1).expand(-1, t.shape[1], -1))

        self.key, self.shrinkage = take(self.key), take(self.shrinkage)
        self.values = {obj: take(v) for obj, v in self.values.items()}
        self.usage.keep(index)


def consolidate(
    key: torch.Tensor,
    shrinkage: torch.Tensor,
    selection: torch.Tensor,
    values: dict[int, torch.Tensor],
    usage: torch.Tensor,
    num_prototypes: int,
) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
    """Candidates key B*CK*N, shrinkage B*1*N, selection B*CK*N, values {obj: B*CV*N}, usage B*N ->
    prototypes key B*CK*P, shrinkage B*1*P, values {obj: B*CV*P}; P = num_prototypes, the most used tokens."""
    _, index = torch.topk(usage, k=num_prototypes, dim=-1, sorted=True)  # B*P

    def take(t: torch.Tensor) -> torch.Tensor:
        return torch.gather(t, 2, index.unsqueeze(1).expand(-1, t.shape[1], -1))

    proto_key, proto_selection = take(key), take(selection)
    # potentiation: each candidate's contribution to each prototype (softmax over candidates, no top-k)
    affinity = softmax_affinity(similarity(key.float(), shrinkage.float(), proto_key.float(), proto_selection.float()))
    proto_values = {obj: torch.bmm(v.float(), affinity).to(v.dtype) for obj, v in values.items()}  # B*CV*P
    proto_shrinkage = torch.bmm(shrinkage.float(), affinity).to(shrinkage.dtype)  # B*1*P
    return proto_key, proto_shrinkage, proto_values
