"""Checks the inference procedure against an official inference fixture (`inference_*.pt`, shared reference).

The network of the fixture's model gets the deterministic weights of the shared weight rule, runs the
procedure with the fixture's settings in eval mode on the CPU in float32, and every frame's probabilities are
compared with the recorded ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cutie.inference.processor import VideoProcessor
from cutie.inference.settings import InferenceSettings
from cutie.testing.weights_rule import load_weights_rule

FIXTURE_FORMAT = "cutie-inference-reference-v1"


def run_fixture(fixture: dict[str, Any], reference_dir: Path) -> list[torch.Tensor]:
    """Our probabilities for every frame of the fixture's video, (O+1)*H*W each."""
    from cutie.config.model import load_model_config
    from cutie.model import build_network

    if fixture.get("format") != FIXTURE_FORMAT:
        raise ValueError(f"not an inference fixture: format {fixture.get('format')!r}, expected {FIXTURE_FORMAT}")
    net = build_network(load_model_config(fixture["model"]))
    rule = load_weights_rule(reference_dir)
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


def check_inference_fixture(fixture: dict[str, Any], reference_dir: Path) -> float:
    """Worst absolute error of our per-frame probabilities against the fixture's (target: < 1e-4)."""
    with torch.no_grad():
        ours = run_fixture(fixture, reference_dir)
    expected = fixture["outputs"]["probs"]
    if len(ours) != len(expected):
        raise AssertionError(f"{len(ours)} frames produced, the fixture has {len(expected)}")
    worst = 0.0
    for t, (a, b) in enumerate(zip(ours, expected, strict=True)):
        if a.shape != b.shape:
            raise AssertionError(f"frame {t}: probabilities {tuple(a.shape)} vs fixture {tuple(b.shape)}")
        worst = max(worst, float((a.float() - b.float()).abs().max()))
    return worst
