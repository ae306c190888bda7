"""CPU batch tensors over numpy arrays that are handed out again once no tensor uses them any more.

Why: a fresh batch of 4 main-training clips is ~170 MB of float32/int64; the kernel's page faults and zeroing of
that memory cost ~5 ms of CPU per clip on the 2-core machine, as much as the conversion itself. Reusing two or
three sets of arrays removes that cost entirely.

Safety without any contract on the caller: torch.from_numpy keeps a reference to its array for as long as any
tensor or view of that memory lives (autograd's saved tensors, a hook that keeps a batch for pictures, ...), so
an array whose only references are ours is certainly free. New arrays come from numpy, which asks for
transparent huge pages on large blocks (2 MB page faults instead of 4 KB ones when one must be made).
"""

from __future__ import annotations

import sys

import numpy as np
import torch


def _refs(arrays: list[np.ndarray], i: int) -> int:
    """sys.getrefcount of arrays[i], always measured the same way (no loop variable holds the array)."""
    return sys.getrefcount(arrays[i])


# What `_refs` reports for an array only the pool's list holds (measured, not assumed: interpreters differ in
# how many references their own call machinery adds).
_UNUSED_REFS = _refs([np.empty(0)], 0)


class RecycledArrays:
    """`empty(shape, dtype)` -> an uninitialised CPU tensor, reusing a pooled array nobody holds any more."""

    def __init__(self, max_arrays: int = 8) -> None:
        self.max_arrays = max_arrays
        self._arrays: list[np.ndarray] = []

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type) -> torch.Tensor:
        shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        # One pass over the pool (no other local may hold a pooled array while counting references).
        unused = [i for i in range(len(self._arrays)) if _refs(self._arrays, i) <= _UNUSED_REFS]
        for i in unused:
            if self._arrays[i].shape == shape and self._arrays[i].dtype == dtype:
                return torch.from_numpy(self._arrays[i])
        if len(self._arrays) >= self.max_arrays:  # full: forget the unused arrays (other shapes, e.g. a past stage)
            self._arrays = [self._arrays[i] for i in range(len(self._arrays)) if i not in unused]
        fresh = np.empty(shape, dtype)
        if len(self._arrays) < self.max_arrays:
            self._arrays.append(fresh)
        return torch.from_numpy(fresh)

    def __len__(self) -> int:
        return len(self._arrays)
