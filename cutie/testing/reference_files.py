"""Reading the shared reference fixtures (`../shared/reference/*.pt`) without unpickling code.

The fixtures hold tensors, plain containers and the recording's `torch.__version__`, a `TorchVersion` (a `str`
subclass): that one class is allowed, so `weights_only=True` loads them and any other global is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.torch_version import TorchVersion


def load_reference(path: str | Path) -> dict[str, Any]:
    """One fixture as a dict on the CPU (weights-only unpickling; TorchVersion is the one extra class allowed)."""
    with torch.serialization.safe_globals([TorchVersion]):
        return torch.load(path, map_location="cpu", weights_only=True)
