"""The network against the official training-mode fixtures (../shared/reference/fixture_*.pt): every output
and every recorded submodule call within 1e-4 relative error."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from cutie.testing.reference_files import load_reference
from cutie.testing.reference_model import TOLERANCE, check_training_fixture

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
FIXTURES = sorted(REFERENCE.glob("fixture_*.pt"))


def test_fixtures_present() -> None:
    models = {load_reference(p)["model"] for p in FIXTURES}
    assert {"small", "base"} <= models, f"expected small and base fixtures in {REFERENCE}, found {models}"


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_forward_matches_fixture(path: Path, reference_dir: Path) -> None:
    fixture = load_reference(path)
    report = check_training_fixture(fixture, reference_dir)

    expected = {"attn_mask", "sensory_logits", "q_logits"}
    steps = fixture["overrides"]["seq_length"] - 1
    assert len(report.outputs) == steps * (2 + len(expected))
    bad = {k: v for k, v in report.outputs.items() if not v <= TOLERANCE}
    assert not bad, f"outputs beyond {TOLERANCE} relative error: {bad}"

    # The submodules re-run on their recorded calls localise any mismatch; all must agree too.
    assert {k.split(":")[0] for k in report.modules} >= {
        "pixel_encoder",
        "pix_feat_proj",
        "key_proj",
        "mask_encoder",
        "object_summarizer",
        "pixel_fuser",
        "object_transformer",
        "aux_computer",
        "mask_decoder",
    }
    bad = {k: v for k, v in report.modules.items() if not v <= TOLERANCE}
    assert not bad, f"module calls beyond {TOLERANCE} relative error: {bad}"


def test_reference_loader_refuses_code(tmp_path: Path) -> None:
    """Fixtures load weights-only: a pickled callable (what a hostile file would carry) is refused, not called."""
    path = tmp_path / "fixture_evil.pt"
    torch.save({"format": "cutie-reference-v1", "hook": os.getcwd}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_reference(path)
    assert load_reference(FIXTURES[0])["model"] in {"small", "base"}  # the real ones load
