"""The memory format of the training network (config `memory_format`): its layout in memory, never its values.

`channels_last` stores every 4-D weight and the frames as N*H*W*C (cuDNN's tensor-core convolutions prefer it;
PyTorch then keeps the layout from one convolution to the next). It changes which kernels run, so numbers agree
with the default to kernel rounding, not bit for bit. It applies wherever it is set (CPU too, where it was no
faster: docs/benchmarks.md); the default, `contiguous`, is PyTorch's N*C*H*W.

What leaves the process stays in the default layout: weights files and checkpoints hold contiguous copies
(`contiguous_copy`), so files are the same bytes whichever format trained them and load anywhere, official Cutie
included; a checkpoint's optimiser state takes its parameters' layout again when it is loaded
(`load_optimizer_state`), so a run may resume in either format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def to_memory_format(net: nn.Module, name: str) -> nn.Module:
    """The network's 4-D parameters and buffers (convolution weights) in format `name`, in place; returns net."""
    return net.to(memory_format=FORMATS[name])


def frames_in_format(rgb: torch.Tensor, name: str) -> torch.Tensor:
    """rgb B*T*3*H*W with each frame laid out in format `name` (same shape, same values), so that the network's
    B*T -> (B*T) flatten and its per-frame slices rgb[:, t] are already in that layout."""
    if name == "contiguous":
        return rgb.contiguous()
    return rgb.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # storage B*T*H*W*3


def contiguous_copy(tree: Any) -> Any:
    """Every tensor of a nested structure (dicts, lists, tuples) as a detached CPU tensor in the default layout;
    a tensor already so is taken as it is (no copy), as `.cpu()` does."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().contiguous()
    if isinstance(tree, Mapping):
        return {k: contiguous_copy(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(contiguous_copy(v) for v in tree)
    return tree


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """`optimizer.load_state_dict(state)`, then every per-parameter state tensor shaped like its parameter
    (Adam's moments) takes the parameter's layout: the fused CUDA AdamW wants them alike, and the values are
    the saved ones exactly (a resume stays bit-identical)."""
    optimizer.load_state_dict(state)
    for param, slots in optimizer.state.items():
        for key, value in slots.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                slots[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)  # empty_like keeps strides
