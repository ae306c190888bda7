"""`compile: true`: torch.compile of the network's per-frame steps, not of the whole clip forward.

Compiling `forward_clip` as one function captures its frame loop, and every frame's deep-update coin is a
Python bool in it: each pattern of coins (up to 2^(T-2) per clip) is a new graph, so dynamo hits its recompile
limit within a few iterations and runs the rest of training eagerly, after minutes of compiling. The steps the
loop calls see only a few variants each: the object count (1, then any: dynamo's automatic dynamic shapes), the
memory length (growing up to `num_ref_frames`), the deep-update flag and whether the masks carry gradients (the
first frame's ground truth does not). They stop compiling after the first iterations
(tests/test_compile.py: no recompilation after a warm-up over 1-3 objects), and the frame loop, with its
random choices (cutie/model/clip_forward.py `plan_clip`), stays in Python.

Each step is compiled on its instance (an attribute over the method), so the weights' names, the checkpoints
and the official layout do not change. Validation and inference run eagerly (`eager_only`): their frame sizes
and memory lengths would each be new graphs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from cutie.model.network import CutieNet

# The CutieNet methods that forward_clip calls, each free of graph breaks (docs/model.md).
COMPILED_STEPS = ("encode_image", "transform_key", "encode_mask", "read_memory", "compute_aux", "segment")
# Graphs per step: up to 3 object-count variants x 2 deep-update flags x 2 mask-gradient states, and a few
# memory lengths; dynamo's default limit of 8 would send the busiest steps back to eager mode.
RECOMPILE_LIMIT = 32


def compile_network(net: CutieNet, backend: str = "inductor") -> None:
    """Compiles `net`'s per-frame steps in place (compiled lazily, on their first calls). `backend`: inductor
    for training; dynamo's `eager` backend captures the same graphs without generating code (tests)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for name in COMPILED_STEPS:
        setattr(net, name, torch.compile(getattr(type(net), name).__get__(net), backend=backend))


@contextlib.contextmanager
def eager_only() -> Iterator[None]:
    """Runs the compiled steps eagerly inside (validation: inference-sized frames would each compile anew)."""
    with torch.compiler.set_stance("force_eager"):
        yield
