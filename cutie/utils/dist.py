"""The one owner of distributed state: rank, local rank, world size, main process.

Read once by `init()` in an entry point's main(), never at import time, from torchrun's variables or, when
`srun` started the tasks itself, from SLURM's. A single process without either gets rank 0 of 1 and needs no
process group.
"""

from __future__ import annotations

import errno
import gc
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as torch_dist

from cutie.utils.atomic import DiskFullError

T = TypeVar("T")


@dataclass(frozen=True)
class DistState:
    rank: int = 0  # global rank: shards data
    local_rank: int = 0  # rank on this node: picks the device
    world_size: int = 1
    local_world_size: int = 1
    launcher: str = "none"  # "torchrun", "slurm" (srun starts every task itself) or "none"
    # Where the process group meets: None lets torch read torchrun's MASTER_ADDR/MASTER_PORT (env://).
    init_method: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _split_top_level(expr: str) -> list[str]:
    """Splits at commas outside brackets: "a[1,3],b" -> ["a[1,3]", "b"]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expr):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
    parts.append(expr[start:])
    return [p for p in parts if p]


def expand_hostlist(expr: str) -> list[str]:
    """SLURM's compressed host list, in order: "node[01-03,07],gpu-a" -> node01 node02 node03 node07 gpu-a.
    Zero padding follows the range's first bound; several bracket groups in one name expand as a product."""
    hosts: list[str] = []
    for item in _split_top_level(expr.strip()):
        m = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", item)
        if m is None:
            hosts.append(item)
            continue
        prefix, ranges, rest = m.groups()
        tails = expand_hostlist(rest) if rest else [""]
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise ValueError(f"host list {expr!r}: cannot read the range {r!r}")
            for n in range(int(lo), int(hi or lo) + 1):
                hosts.extend(f"{prefix}{n:0{len(lo)}d}{t}" for t in tails)
    return hosts


def expand_tasks_per_node(expr: str) -> list[int]:
    """SLURM's tasks per node, one entry per node: "2(x3),1" -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in expr.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if m is None:
            raise ValueError(f"tasks per node {expr!r}: cannot read {item!r}")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    return counts


def slurm_port(job_id: str) -> int:
    """A port every task of a job derives alike from the job id (in 20000-29999, below Linux's ephemeral ports;
    MASTER_PORT overrides it when two steps of one job train at once)."""
    return 20000 + int(job_id) % 10000


def _read_slurm(env: Mapping[str, str]) -> DistState:
    # A step's own variables (srun) describe the tasks that train; the job's are the fallback.
    world = int(env.get("SLURM_STEP_NUM_TASKS") or env["SLURM_NTASKS"])
    node = int(env.get("SLURM_NODEID", "0"))
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if per_node:
        counts = expand_tasks_per_node(per_node)
        local_world = counts[node] if node < len(counts) else counts[-1]
    else:
        local_world = int(env.get("SLURM_NTASKS_PER_NODE", str(world)))
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
    addr = env.get("MASTER_ADDR") or (expand_hostlist(nodes)[0] if nodes else "127.0.0.1")
    port = env.get("MASTER_PORT") or str(slurm_port(env.get("SLURM_JOB_ID", "0")))
    return DistState(
        rank=int(env["SLURM_PROCID"]),
        local_rank=int(env.get("SLURM_LOCALID", "0")),
        world_size=world,
        local_world_size=local_world,
        launcher="slurm",
        init_method=f"tcp://{addr}:{port}",
    )


def read_env(environ: Mapping[str, str] | None = None) -> DistState:
    """torchrun's variables when present (also torchrun inside a SLURM allocation), else those of an srun task,
    else a single process. An sbatch script's own shell is not a task: only srun steps (SLURM_STEP_ID) count."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return DistState(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=world,
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and env.get("SLURM_STEP_ID", "batch").isdigit():
        return _read_slurm(env)
    return DistState()


class DeviceError(RuntimeError):
    """The requested device does not exist for this rank (a setting or launcher problem, not a bug)."""


def device_index(state: DistState, visible: int) -> int:
    """The GPU of this rank among the `visible` ones: its local rank, or the only one when the launcher gave
    each task its own GPU (srun --gpus-per-task / --gpu-bind: CUDA_VISIBLE_DEVICES holds one device)."""
    if visible == 1 and state.local_world_size > 1:
        return 0
    if state.local_rank >= visible:
        raise DeviceError(
            f"local rank {state.local_rank} has no GPU: only {visible} visible "
            "(lower --nproc_per_node / --ntasks-per-node or fix CUDA_VISIBLE_DEVICES)"
        )
    return state.local_rank


def pick_device(state: DistState, requested: str = "auto") -> torch.device:
    """`auto`: this rank's GPU (by local rank) when CUDA is available, else the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("device=cuda was requested but no CUDA device is visible; use device=cpu or auto")
    index = device_index(state, torch.cuda.device_count())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init(requested_device: str = "auto", timeout_s: int = 1800) -> tuple[DistState, torch.device]:
    """Reads the environment, picks the device and joins the process group (nccl on GPUs, gloo on the CPU)."""
    state = read_env()
    device = pick_device(state, requested_device)
    if state.distributed and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # srun tasks meet at tcp://<first host>:<port of the job>; torchrun's env:// needs nothing passed.
        kw = {}
        if state.init_method is not None:
            kw = dict(init_method=state.init_method, rank=state.rank, world_size=state.world_size)
        torch_dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kw)
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


def agree(error: BaseException | None, flags: Sequence[bool] = ()) -> list[bool]:
    """Every rank calls this after work that may have failed on some of them: one all-reduce of [this rank
    failed, *flags], each set on any rank. A rank with an error raises it, also when a dead peer breaks the
    all-reduce (a rank stopped by the same signal, say): its own error, not the lost connection, decides what is
    said and the exit code (3 for a stop, 5 for a full disk). Returns the reduced flags on the others."""
    try:
        reduced = any_rank([error is not None, *flags])
    except BaseException as lost:
        if error is None:
            raise
        raise error from lost
    if error is not None:
        raise error
    return reduced


def main_writes(is_main: bool, write: Callable[[], T], what: str) -> T | None:
    """Every rank calls this: the main process runs `write` (a file the run keeps: a checkpoint, best.pth), and
    every rank gets its verdict in one all-reduce, also after a failed write, so that no rank waits for a dead
    one or trains on into the next collective. The main process re-raises its error; the others raise
    DiskFullError (out of space) or RuntimeError naming `what` ("write best.pth"). Returns `write`'s result on
    the main process, None elsewhere."""
    error: BaseException | None = None
    result = None
    if is_main:
        try:
            result = write()
        except BaseException as e:  # a Ctrl-C mid-write included: the others still get the verdict
            error = e
    failed, disk_full = agree(error, [isinstance(error, DiskFullError)])
    if disk_full:
        raise DiskFullError(errno.ENOSPC, f"the main process could not {what} (out of disk space); this rank stops "
                            "with it")  # fmt: skip
    if failed:
        raise RuntimeError(f"the main process could not {what}")
    return result


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


def all_gather_object(obj: object, *, host: bool = False) -> list[object]:
    """Every rank's `obj` (pickled between our own processes), in rank order; [obj] in a single process.
    `host`: over the host (gloo) group, for results of host-side work that some ranks may wait on for long
    (validation), so that the wait and the pickles stay off the GPU."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return [obj]
    out: list[object] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(out, obj, group=_host_group if host else None)
    return out


def shutdown() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        # A DDP reducer left in a reference cycle holds the group; collected now, it is not torn down during
        # interpreter exit, where gloo's threads can abort the process.
        gc.collect()
        torch_dist.destroy_process_group()
