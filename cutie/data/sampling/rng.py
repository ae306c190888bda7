"""The one source of randomness: every draw of a sample comes from (seed, stream, global index, attempt).

A sample therefore depends on nothing else: not on worker count, batch size, world size, backend or resume point.
"""

from __future__ import annotations

import numpy as np

STREAM_PRE = 1  # pre-training samples
STREAM_MAIN = 2  # main-training samples
_EPOCH_TAG = 0x5EED  # separates epoch permutations from sample streams


def sample_rng(seed: int, stream: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The generator for one sample draw (attempt > 0: the deterministic replacement of a failed draw)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, index, attempt])))


class EpochPermutation:
    """Maps a global index to an entry of a length-n list: a fresh shuffle per epoch (epoch = index // n), like a
    shuffled sampler, but computable anywhere. Caches the current epoch's permutation."""

    def __init__(self, seed: int, stream: int, n: int) -> None:
        if n <= 0:
            raise ValueError("cannot permute an empty list")
        self.seed, self.stream, self.n = seed, stream, n
        self._epoch = -1
        self._perm: np.ndarray | None = None

    def __call__(self, index: int) -> int:
        epoch, pos = divmod(index, self.n)
        if epoch != self._epoch:
            g = np.random.Generator(
                np.random.PCG64(np.random.SeedSequence([self.seed, self.stream, _EPOCH_TAG, epoch]))
            )
            self._perm = g.permutation(self.n)
            self._epoch = epoch
        return int(self._perm[pos])

    def __getstate__(self) -> dict:
        return {"seed": self.seed, "stream": self.stream, "n": self.n, "_epoch": -1, "_perm": None}
