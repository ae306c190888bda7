"""Checks the network against an official training-mode fixture (`fixture_*.pt` of the shared reference folder).

The fixture's model gets the deterministic weights of the shared weight rule, `forward_clip` runs on the
recorded batch, and every output (logits, masks, every aux tensor) is compared by relative error
||ours - ref|| / ||ref||. Each top-level submodule is also re-run on its recorded first call, so a
mismatch can be pinned to one module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cutie.config.model import load_model_config
from cutie.model.clip_forward import forward_clip
from cutie.model.network import CutieNet, build_network
from cutie.testing.weights_rule import load_weights_rule

TRAINING_FORMAT = "cutie-reference-v1"
TOLERANCE = 1e-4  # relative error, per output tensor


@dataclass
class ReferenceReport:
    outputs: dict[str, float] = field(default_factory=dict)  # output path -> relative error
    modules: dict[str, float] = field(default_factory=dict)  # "module: output path" -> relative error
    skipped_modules: list[str] = field(default_factory=list)

    @property
    def worst(self) -> tuple[str, float]:
        return max(self.outputs.items(), key=lambda kv: kv[1], default=("", 0.0))

    @property
    def worst_module(self) -> tuple[str, float]:
        return max(self.modules.items(), key=lambda kv: kv[1], default=("", 0.0))


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref|| (plain norm of the difference when ref is all zeros); bool tensors as 0/1."""
    if ours.shape != ref.shape:
        raise AssertionError(f"shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    a, b = ours.detach().double(), ref.detach().double()
    diff = float((a - b).norm())
    scale = float(b.norm())
    return diff / scale if scale > 0 else diff


def fixture_network(fixture: dict[str, Any], reference_dir: Path) -> CutieNet:
    """The fixture's model with the weight rule's weights, in training mode, float32 on the CPU."""
    overrides = fixture.get("overrides", {})
    net = build_network(load_model_config(fixture["model"]), single_object=overrides.get("num_objects") == 1)
    rule = load_weights_rule(reference_dir)
    net.load_state_dict(rule.fill_state_dict(net.state_dict(), seed=fixture["weight_seed"]))
    return net.float().train()


def _leaves(x: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(x, torch.Tensor):
        yield path, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(x, list | tuple):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{path}[{i}]")


def check_training_fixture(fixture: dict[str, Any], reference_dir: Path) -> ReferenceReport:
    """Runs forward_clip and the recorded module calls; returns every relative error."""
    if fixture.get("format") != TRAINING_FORMAT:
        raise ValueError(f"not a training fixture: format {fixture.get('format')!r}, expected {TRAINING_FORMAT}")
    net = fixture_network(fixture, reference_dir)
    report = ReferenceReport()
    overrides = fixture["overrides"]
    with torch.no_grad():
        ours = forward_clip(
            net,
            fixture["inputs"],
            num_ref_frames=int(overrides["num_ref_frames"]),
            deep_update_prob=float(overrides["deep_update_prob"]),
        )
        ours_leaves = dict(_leaves(ours))
        for path, ref in _leaves(fixture["outputs"]):
            if path not in ours_leaves:
                raise AssertionError(f"output {path} missing from forward_clip")
            report.outputs[path] = relative_error(ours_leaves[path], ref)

        for name, calls in fixture.get("module_calls", {}).items():
            module = getattr(net, name, None)
            if not isinstance(module, torch.nn.Module) or not calls:
                report.skipped_modules.append(name)  # official helpers with no counterpart (rearranges)
                continue
            call = calls[0]
            out = dict(_leaves(module(*call["args"], **call["kwargs"])))
            for path, ref in _leaves(call["output"]):
                if path in out:  # outputs we do not produce (e.g. unrequested attention weights) are skipped
                    report.modules[f"{name}: {path}" if path else name] = relative_error(out[path], ref)
    return report
