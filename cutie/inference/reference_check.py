"""Checks the inference procedure against an official inference fixture (../shared/reference/inference_*.pt).

The network of the fixture's model gets the deterministic weights of the shared weight rule, runs the
procedure with the fixture's settings in eval mode on the CPU in float32, and every frame's probabilities are
compared with the recorded ones.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from cutie.inference.processor import VideoProcessor
from cutie.inference.settings import InferenceSettings

FIXTURE_FORMAT = "cutie-inference-reference-v1"


def load_weights_rule(repo_root: Path) -> ModuleType:
    """The shared weight rule module, <repo_root>/../shared/reference/weights_rule.py."""
    path = Path(repo_root).resolve().parent / "shared" / "reference" / "weights_rule.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: clone the repository beside ../shared")
    spec = importlib.util.spec_from_file_location("cutie_reference_weights_rule", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def run_fixture(fixture: dict[str, Any], repo_root: Path) -> list[torch.Tensor]:
    """Our probabilities for every frame of the fixture's video, (O+1)*H*W each."""
    from cutie.model import build_network
    from cutie.model.config import load_model_config

    if fixture.get("format") != FIXTURE_FORMAT:
        raise ValueError(f"not an inference fixture: format {fixture.get('format')!r}, expected {FIXTURE_FORMAT}")
    net = build_network(load_model_config(fixture["model"]))
    rule = load_weights_rule(repo_root)
    net.load_state_dict(rule.fill_state_dict(net.state_dict(), seed=fixture["weight_seed"]))
    net = net.float().eval()

    settings = InferenceSettings.from_mapping({**fixture["settings"], "amp": False})
    processor = VideoProcessor(net, settings)
    inputs = fixture["inputs"]
    frames = inputs["frames"].float()  # T*3*H*W
    objects = [int(o) for o in inputs["objects"]]
    probs = []
    for t in range(frames.shape[0]):
        mask = inputs["first_frame_mask"].long() if t == 0 else None
        probs.append(processor.step(frames[t], mask, objects if t == 0 else None, end=t == frames.shape[0] - 1))
    return probs


def check_inference_fixture(fixture: dict[str, Any], repo_root: Path) -> float:
    """Worst absolute error of our per-frame probabilities against the fixture's (target: < 1e-4)."""
    with torch.no_grad():
        ours = run_fixture(fixture, repo_root)
    expected = fixture["outputs"]["probs"]
    if len(ours) != len(expected):
        raise AssertionError(f"{len(ours)} frames produced, the fixture has {len(expected)}")
    worst = 0.0
    for t, (a, b) in enumerate(zip(ours, expected, strict=True)):
        if a.shape != b.shape:
            raise AssertionError(f"frame {t}: probabilities {tuple(a.shape)} vs fixture {tuple(b.shape)}")
        worst = max(worst, float((a.float() - b.float()).abs().max()))
    return worst
