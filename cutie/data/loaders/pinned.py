"""Page-locking the torch backend's batch slots in place for copies to the GPU (cudaHostRegister).

Why: a copy to the GPU from pageable memory is staged through a driver buffer and the host waits until the source
has been read; from page-locked memory it is a DMA transfer that the copy stream runs while the host goes on. The
slots already exist (shared memory, made once), so they are registered where they are instead of being copied
once more into a pinned buffer (what DataLoader's pin_memory does).

Two rules follow, both kept by TorchTrainLoader:
- the copy reads a slot after the host has moved on, so a slot goes back to the workers only once the CUDA event
  recorded after its copy has completed;
- the CUDA driver may exclude page-locked ranges from fork (the workers would lose their slots), so the slots are
  registered after the workers have started and unregistered before new ones start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

log = logging.getLogger(__name__)

_REGISTER_DEFAULT = 0  # cudaHostRegisterDefault


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def register(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Page-lock contiguous CPU tensors; returns those registered (all, or none after logging why)."""
    cudart = torch.cuda.cudart()
    done: list[torch.Tensor] = []
    for t in tensors:
        if not t.is_contiguous():
            raise ValueError("only contiguous tensors can be page-locked in place")
        err = cudart.cudaHostRegister(t.data_ptr(), _nbytes(t), _REGISTER_DEFAULT)
        if int(err) != 0:
            log.warning(
                "could not page-lock the loader's batch slots (cudaHostRegister error %d); copies to the GPU use "
                "pageable memory (slower, the host waits for each copy)",
                int(err),
            )
            unregister(done)
            return []
        done.append(t)
    return done


def unregister(tensors: Sequence[torch.Tensor]) -> None:
    """Undo register(); the caller guarantees that no copy from them is still running."""
    cudart = torch.cuda.cudart()
    for t in tensors:
        cudart.cudaHostUnregister(t.data_ptr())
