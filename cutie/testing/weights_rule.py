"""The shared deterministic weight rule (`<reference_dir>/weights_rule.py`), loaded as a module.

It is shared data beside the repository, not part of the package; the folder is always passed explicitly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def load_weights_rule(reference_dir: Path) -> ModuleType:
    """`reference_dir/weights_rule.py` as a module (provides `fill_state_dict(state_dict, seed)`)."""
    path = Path(reference_dir) / "weights_rule.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the shared reference folder (../shared/reference)")
    spec = importlib.util.spec_from_file_location("cutie_shared_weights_rule", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module
