"""scripts/same_weights.py: the check the two-container Docker run is judged by must tell equal from unequal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import same_weights  # noqa: E402


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.zeros(3), "n": torch.tensor(7)}


def _save(path: Path, state: dict, *, checkpoint: bool = False) -> Path:
    torch.save({"weights": state, "iteration": 3} if checkpoint else state, path)
    return path


def test_identical_files_and_a_checkpoint_of_the_same_weights_pass(tmp_path, capsys):
    ref = _save(tmp_path / "ref.pth", _state())
    same = _save(tmp_path / "same.pth", _state())
    ckpt = _save(tmp_path / "ckpt.pth", _state(), checkpoint=True)
    assert same_weights.main([str(ref), str(same), str(ckpt)]) == 0
    assert capsys.readouterr().out.count("all 3 tensors bit-identical") == 2


@pytest.mark.parametrize(
    "change, differing",
    [
        (lambda s: s["a.weight"].view(-1)[5].add_(1e-7), ["a.weight"]),  # one value in the last bits
        (lambda s: s.update(n=torch.tensor(7.0)), ["n"]),  # same value, other dtype
        (lambda s: s.update(extra=torch.ones(1)), ["extra"]),  # a key only one side has
        (lambda s: s.pop("a.bias"), ["a.bias"]),
        (lambda s: s.update(**{"a.bias": torch.zeros(1, 3)}), ["a.bias"]),  # other shape
    ],
)
def test_any_difference_fails_and_is_named(tmp_path, capsys, change, differing):
    ref = _save(tmp_path / "ref.pth", _state())
    other = _state()
    change(other)
    assert same_weights.differences(_state(), other) == differing
    assert same_weights.main([str(ref), str(_save(tmp_path / "other.pth", other))]) == 1
    assert f"1 of 3 tensors differ from {ref}, e.g. {differing}" in capsys.readouterr().out


def test_unreadable_file_is_one_line_and_exit_2(tmp_path):
    ref = _save(tmp_path / "ref.pth", _state())
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a zip")
    script = REPO / "scripts" / "same_weights.py"
    for other in (bad, tmp_path / "missing.pth"):
        proc = subprocess.run([sys.executable, str(script), str(ref), str(other)], capture_output=True, text=True,
                              env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and str(other) in proc.stderr
