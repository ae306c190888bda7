"""The memories of the inference procedure: working (pixel) memory, object memory and sensory memory.

Working memory is kept in groups: objects first given on the same frame share one group, and a group holds
one key per memorised frame (keys are object-independent) plus each member's values. A group's first frame is
permanent. Without long-term memory the later frames form a FIFO of at most `max_mem_frames - 1` frames (so
`max_mem_frames` counts the permanent frame, as in the official procedure); with it, the oldest temporary
frames are consolidated into a long-term store instead (cutie/inference/long_term.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cutie.inference.long_term import LongTermSettings, LongTermStore, Usage, consolidate
from cutie.model.memory_read import similarity, softmax_affinity


@dataclass
class MemoryGroup:
    """Keys of the frames memorised for a set of objects, and the values of each object."""

    object_ids: list[int]
    key: torch.Tensor  # B*CK*N, N = frames * h * w; permanent tokens first
    shrinkage: torch.Tensor  # B*1*N
    values: dict[int, torch.Tensor] = field(default_factory=dict)  # object id -> B*CV*N
    permanent_tokens: int = 0
    # with long-term memory only: selection and usage of the temporary tokens, and the consolidated store
    selection: torch.Tensor | None = None  # B*CK*N_temporary
    usage: Usage | None = None
    long_term: LongTermStore | None = None

    @property
    def temporary_tokens(self) -> int:
        return self.key.shape[-1] - self.permanent_tokens

    def append(
        self,
        key: torch.Tensor,
        shrinkage: torch.Tensor,
        values: dict[int, torch.Tensor],
        selection: torch.Tensor | None = None,
    ) -> None:
        self.key = torch.cat([self.key, key], -1)
        self.shrinkage = torch.cat([self.shrinkage, shrinkage], -1)
        for obj, v in values.items():
            self.values[obj] = torch.cat([self.values[obj], v], -1)
        if self.usage is not None:
            self.selection = selection if self.selection is None else torch.cat([self.selection, selection], -1)
            self.usage.extend(key.shape[-1])

    def keep_recent(self, max_tokens: int) -> None:
        """Keep the permanent tokens and at most `max_tokens` of the most recent others."""
        temporary = self.temporary_tokens
        if temporary <= max_tokens:
            return
        drop = slice(self.permanent_tokens, self.permanent_tokens + temporary - max_tokens)

        def cut(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t[..., : drop.start], t[..., drop.stop :]], -1)

        self.key, self.shrinkage = cut(self.key), cut(self.shrinkage)
        self.values = {obj: cut(v) for obj, v in self.values.items()}
        if self.usage is not None:  # these cover the temporary tokens only
            self.selection = self.selection[..., temporary - max_tokens :]
            self.usage.slice(temporary - max_tokens, None)

    def compress(self, settings: LongTermSettings, hw: int) -> None:
        """Consolidates all temporary tokens but the newest (min_mem_frames - 1) frames into long-term memory."""
        keep = (settings.min_mem_frames - 1) * hw
        n = self.temporary_tokens - keep  # candidates: the oldest temporary tokens
        if n <= 0:
            return
        cand = slice(self.permanent_tokens, self.permanent_tokens + n)
        proto_key, proto_shrinkage, proto_values = consolidate(
            self.key[..., cand],
            self.shrinkage[..., cand],
            self.selection[..., :n],
            {obj: v[..., cand] for obj, v in self.values.items()},
            self.usage.normalised()[:, :n],
            min(settings.num_prototypes, n),
        )
        self.keep_recent(keep)
        if self.long_term is None:
            b = proto_key.shape[0]
            usage = Usage(b, proto_key.shape[-1], proto_key.device) if settings.count_usage else None
            self.long_term = LongTermStore(proto_key, proto_shrinkage, proto_values, usage)
        else:
            self.long_term.add(proto_key, proto_shrinkage, proto_values)


class MemoryBank:
    """Working, object and sensory memory of one video, indexed by object id."""

    def __init__(
        self,
        *,
        sensory_dim: int,
        max_mem_frames: int,
        top_k: int | None,
        long_term: LongTermSettings | None = None,
    ):
        if max_mem_frames < 2:
            raise ValueError(f"max_mem_frames={max_mem_frames}: needs >= 2 (the permanent first frame + 1)")
        self.sensory_dim = sensory_dim
        self.long_term = long_term
        # the permanent first frame is not counted
        self.max_temporary_frames = (long_term.max_mem_frames if long_term else max_mem_frames) - 1
        self.top_k = top_k
        self.groups: list[MemoryGroup] = []
        self.sensory: dict[int, torch.Tensor] = {}  # object id -> B*Cs*h*w
        self.object_memory: dict[int, torch.Tensor] = {}  # object id -> B*Q*(C+1): summed summaries, count

    @property
    def engaged(self) -> bool:
        return bool(self.groups)

    # ---- sensory memory ----------------------------------------------------------------------------------
    def init_sensory(self, like_key: torch.Tensor, object_ids: list[int]) -> None:
        """Zero sensory memory at the key's resolution for objects that have none yet."""
        b, _, h, w = like_key.shape
        for obj in object_ids:
            if obj not in self.sensory:
                self.sensory[obj] = torch.zeros(b, self.sensory_dim, h, w, device=like_key.device)

    def get_sensory(self, object_ids: list[int]) -> torch.Tensor:
        return torch.stack([self.sensory[obj] for obj in object_ids], dim=1)  # B*O*Cs*h*w

    def set_sensory(self, sensory: torch.Tensor, object_ids: list[int]) -> None:
        for i, obj in enumerate(object_ids):  # sensory: B*O*Cs*h*w
            self.sensory[obj] = sensory[:, i]

    # ---- adding --------------------------------------------------------------------------------------------
    def add(
        self,
        key: torch.Tensor,
        shrinkage: torch.Tensor,
        mask_value: torch.Tensor,
        object_summaries: torch.Tensor,
        object_ids: list[int],
        selection: torch.Tensor | None = None,
    ) -> None:
        """Memorises one frame. key: B*CK*h*w, shrinkage: B*1*h*w, mask_value: B*O*CV*h*w,
        object_summaries: B*O*Q*(C+1), object_ids: the O ids in that order, selection: B*CK*h*w (needed with
        long-term memory)."""
        for i, obj in enumerate(object_ids):
            summary = object_summaries[:, i]
            # running sum (the count in the last channel): the transformer reads the average
            self.object_memory[obj] = self.object_memory[obj] + summary if obj in self.object_memory else summary

        hw = key.shape[-2] * key.shape[-1]
        key = key.flatten(2)  # B*CK*N
        shrinkage = shrinkage.flatten(2)  # B*1*N
        if self.long_term is not None:
            if selection is None:
                raise ValueError("long-term memory needs the query selection of memorised frames")
            selection = selection.flatten(2)  # B*CK*N
        values = {obj: mask_value[:, i].flatten(2) for i, obj in enumerate(object_ids)}  # B*CV*N

        known = {obj for g in self.groups for obj in g.object_ids}
        for group in self.groups:
            members = {obj: v for obj, v in values.items() if obj in group.object_ids}
            if members:
                group.append(key, shrinkage, members, selection)
        new_ids = [obj for obj in object_ids if obj not in known]
        if new_ids:  # objects seen for the first time: a new group whose first frame is permanent
            new_values = {obj: values[obj] for obj in new_ids}
            group = MemoryGroup(new_ids, key, shrinkage, new_values, permanent_tokens=key.shape[-1])
            if self.long_term is not None:  # usage is tracked for temporary tokens only: none yet
                group.usage = Usage(key.shape[0], 0, key.device)
            self.groups.append(group)
        max_tokens = self.max_temporary_frames * hw
        for group in self.groups:
            if self.long_term is None:
                group.keep_recent(max_tokens)  # FIFO
            elif group.temporary_tokens >= max_tokens:
                lt = self.long_term
                if group.long_term is not None and group.long_term.size >= lt.max_num_tokens - lt.num_prototypes:
                    group.long_term.remove_obsolete(lt.max_num_tokens - lt.num_prototypes - lt.buffer_tokens)
                group.compress(lt, hw)

    # ---- reading -------------------------------------------------------------------------------------------
    def read(
        self,
        network: torch.nn.Module,
        pix_feat: torch.Tensor,
        query_key: torch.Tensor,
        query_selection: torch.Tensor,
        last_mask: torch.Tensor,
        object_ids: list[int],
        chunk_size: int = -1,
    ) -> torch.Tensor:
        """Memory readout for the given objects, in their order: B*O*C*h*w.
        pix_feat: B*C*h*w, query_key/selection: B*CK*h*w, last_mask: B*O*H*W (the last frame's probabilities
        at the padded image size, in the order of `object_ids`)."""
        b, _, h, w = pix_feat.shape
        qk = query_key.flatten(2).float()  # B*CK*HW
        qe = query_selection.flatten(2).float()
        readout: dict[int, torch.Tensor] = {}
        for group in self.groups:
            # the affinity in float32 even under AMP: exp of large similarities overflows half precision
            lt = group.long_term
            mem_key, mem_shrinkage = group.key, group.shrinkage
            if lt is not None:  # long-term tokens first, then the working memory
                mem_key = torch.cat([lt.key, mem_key], -1)
                mem_shrinkage = torch.cat([lt.shrinkage, mem_shrinkage], -1)
            with torch.autocast(device_type=pix_feat.device.type, enabled=False):
                sim = similarity(mem_key.float(), mem_shrinkage.float(), qk, qe)  # B*N*HW
                affinity = softmax_affinity(sim, self.top_k)
            if group.usage is not None:
                used = affinity.sum(dim=2)  # B*N: the weight each memory token received
                lt_size = 0 if lt is None else lt.size
                group.usage.record(used[:, lt_size + group.permanent_tokens :])
                if lt is not None and lt.usage is not None:
                    lt.usage.record(used[:, :lt_size])
            members = [obj for obj in group.object_ids if obj in object_ids]
            step = len(members) if chunk_size < 1 else chunk_size
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                if lt is None:
                    values = torch.stack([group.values[obj] for obj in chunk], dim=1).float()  # B*o*CV*N
                else:
                    values = torch.stack([torch.cat([lt.values[obj], group.values[obj]], -1) for obj in chunk], 1)
                    values = values.float()
                cv = values.shape[2]
                visual = (values.flatten(1, 2) @ affinity).view(b, len(chunk), cv, h, w)  # B*o*CV*h*w
                idx = [object_ids.index(obj) for obj in chunk]
                pixel = network.pixel_fusion(pix_feat, visual, self.get_sensory(chunk), last_mask[:, idx])
                obj_mem = torch.stack([self.object_memory[obj] for obj in chunk], dim=1).unsqueeze(2)
                mem_readout, _ = network.readout_query(pixel, obj_mem)  # B*o*C*h*w
                for i, obj in enumerate(chunk):
                    readout[obj] = mem_readout[:, i]
        return torch.stack([readout[obj] for obj in object_ids], dim=1)
