"""The import rules of docs/architecture.md, checked on the source: each layer imports only the layers below it.

Entry points over training / inference / dataprep, over model, data, metrics, over config and utils. The network
imports nothing from data or training, data nothing from the network, nothing imports `scripts/`, and the
test-only package `cutie.testing` is imported by no production module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cutie"

# What each part of the package may import from cutie (besides itself).
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "config": set(),
    "model": {"config", "utils"},
    "data": {"config", "utils"},
    "metrics": {"config", "utils"},
    "dataprep": {"config", "data", "utils"},
    "inference": {"config", "metrics", "model", "utils"},
    "training": {"config", "data", "inference", "metrics", "model", "utils"},
    "train": {"config", "data", "training", "model", "utils"},
    "eval": {"config", "inference", "model", "utils"},
    "testing": {"config", "data", "inference", "metrics", "model", "utils"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_part_of_the_package_has_a_rule() -> None:
    parts = {_part(p) for p in MODULES}
    assert parts <= set(ALLOWED), f"add a rule (and a line in docs/architecture.md) for: {parts - set(ALLOWED)}"


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_imports_follow_the_layers(path: Path) -> None:
    part = _part(path)
    bad = []
    for line, module in _imports(path):
        top = module.split(".")
        if top[0] == "scripts":
            bad.append(f"line {line}: imports {module} (the package never imports scripts/)")
        elif top[0] == "cutie" and len(top) > 1 and top[1] != part and top[1] not in ALLOWED[part]:
            bad.append(f"line {line}: {part} imports {module}")
    assert not bad, f"{path.relative_to(PACKAGE.parent)}: " + "; ".join(bad)


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The checker itself: a network module importing the data layer is found."""
    fake = tmp_path / "x.py"
    fake.write_text("import torch\nfrom cutie.data.index.datasets import validate\nimport cutie.training.run\n")
    found = [m for _, m in _imports(fake) if m.startswith("cutie.") and m.split(".")[1] not in ALLOWED["model"]]
    assert found == ["cutie.data.index.datasets", "cutie.training.run"]
