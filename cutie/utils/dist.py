"""The one owner of distributed state: rank, local rank, world size, main process.

Read once by `init()` in an entry point's main(), never at import time. A single process without torchrun
gets rank 0 of 1 and needs no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class DistState:
    rank: int = 0  # global rank: shards data
    local_rank: int = 0  # rank on this node: picks the device
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def read_env(environ: dict[str, str] | None = None) -> DistState:
    """Reads torchrun's variables (absent: a single process)."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1"))
    return DistState(
        rank=int(env.get("RANK", "0")),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        world_size=world,
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
    )


def pick_device(state: DistState, requested: str = "auto") -> torch.device:
    """`auto`: this rank's GPU (by local rank) when CUDA is available, else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but no CUDA device is visible; use device=cpu or auto")
    if state.local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"local rank {state.local_rank} has no GPU: only {torch.cuda.device_count()} visible "
            "(lower --nproc_per_node or fix CUDA_VISIBLE_DEVICES)"
        )
    torch.cuda.set_device(state.local_rank)
    return torch.device("cuda", state.local_rank)


def init(requested_device: str = "auto", timeout_s: int = 1800) -> tuple[DistState, torch.device]:
    """Reads the environment, picks the device and joins the process group (nccl on GPUs, gloo on the CPU)."""
    state = read_env()
    device = pick_device(state, requested_device)
    if state.distributed and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        global _host_group
        # Host-side flags (a stop signal, unreadable data) are agreed over gloo on CPU tensors: reading an NCCL
        # result would wait for every kernel queued on the GPU, a gloo one only for the other processes.
        _host_group = torch_dist.new_group(backend="gloo") if backend == "nccl" else None
    return state, device


_host_group = None


def any_rank(flags: list[bool]) -> list[bool]:
    """Per flag: set on any rank. One small all-reduce over the host group; identity in a single process."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags])  # on the CPU whatever the backend
    torch_dist.all_reduce(t, group=_host_group)
    return [v > 0 for v in t.tolist()]


def barrier() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (in place on a copy); identity in a single process."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return t
    t = t.clone()
    torch_dist.all_reduce(t)
    return t / torch_dist.get_world_size()


def all_gather_object(obj: object) -> list[object]:
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
