"""Settings of the inference procedure (the official eval_config names and defaults)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from cutie.inference.long_term import LongTermSettings


@dataclass(frozen=True)
class InferenceSettings:
    mem_every: int = 5  # a frame becomes working memory every this many frames
    max_mem_frames: int = 5  # working memory size in frames, the permanent first frame included
    top_k: int | None = 30  # memory affinities kept per query pixel before the softmax (None: all)
    stagger_updates: int = 5  # sensory-memory updates between two memory frames
    use_long_term: bool = False  # consolidate old working memory into long-term memory
    chunk_size: int = -1  # objects processed together (-1: all)
    flip_aug: bool = False  # average with the horizontally flipped frame
    max_internal_size: int = -1  # shorter side limit inside the network (-1: none)
    amp: bool = False  # autocast on CUDA
    long_term: LongTermSettings = field(default_factory=LongTermSettings)  # used with use_long_term

    def __post_init__(self) -> None:
        if self.mem_every < 1:
            raise ValueError(f"mem_every={self.mem_every}: must be >= 1")
        if self.max_mem_frames < 2:
            raise ValueError(f"max_mem_frames={self.max_mem_frames}: must be >= 2")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> InferenceSettings:
        """Picks the known keys from a config node or dict (unknown keys ignored, None means the default)."""
        names = {f.name for f in fields(cls)} - {"long_term"}
        kwargs: dict[str, Any] = {k: cfg[k] for k in names if k in cfg and cfg[k] is not None}
        lt = cfg.get("long_term") if hasattr(cfg, "get") else None
        if lt is not None:
            lt_names = {f.name for f in fields(LongTermSettings)}
            kwargs["long_term"] = LongTermSettings(**{k: lt[k] for k in lt_names if k in lt and lt[k] is not None})
        return cls(**kwargs)
