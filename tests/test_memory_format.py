"""memory_format=channels_last: the same training step as the default (to kernel rounding), files in the default
layout whichever format trained them, and a resume in channels_last that stays bit-identical."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_model_network import make_batch

from cutie.config.model import ModelSpec
from cutie.config.train import ConfigError, parse_train_config
from cutie.model import build_network, load_model_config
from cutie.model.losses import LossComputer, LossSettings
from cutie.model.param_groups import param_groups
from cutie.model.weights import load_weights, read_weights_file, save_weights
from cutie.training.clip_model import ClipModel
from cutie.training.memory_format import (
    contiguous_copy,
    frames_in_format,
    load_optimizer_state,
    to_memory_format,
)
from cutie.training.plan import StagePlan
from cutie.training.step import train_step

CL = torch.channels_last
# Kernel noise between the layouts is ~1e-6 relative (oneDNN picks other convolution kernels); a layout bug
# (a wrong view of N*H*W*C storage) changes values at order 1.
RTOL = 1e-4


def _cfg(repo_root, *overrides):
    with initialize_config_dir(config_dir=str(repo_root / "cutie" / "config"), version_base="1.3"):
        return parse_train_config(compose("train_config", overrides=list(overrides)))


def test_config_key_default_and_error(repo_root):
    assert _cfg(repo_root).runtime.memory_format == "contiguous"
    assert _cfg(repo_root, "memory_format=channels_last").runtime.memory_format == "channels_last"
    with pytest.raises(ConfigError, match=r"`memory_format`: must be one of 'contiguous', 'channels_last'"):
        _cfg(repo_root, "memory_format=nhwc")


def test_frames_keep_values_and_take_the_layout():
    rgb = torch.rand(2, 3, 3, 8, 10)  # B*T*3*H*W
    out = frames_in_format(rgb, "channels_last")
    assert torch.equal(out, rgb) and out.shape == rgb.shape
    assert out.flatten(0, 1).is_contiguous(memory_format=CL) and not out.flatten(0, 1).is_contiguous()
    assert out[:, 1].stride()[1] == 1  # per-frame slices: channels innermost
    assert frames_in_format(rgb, "contiguous").is_contiguous()


def _setup(fmt: str, seed: int = 0, importance: float = 0.75):
    """The small network in format `fmt`, its clip model, loss, AdamW (CPU) and a float32 plan. `importance`:
    the loss's share of most-uncertain points (0: uniform points only)."""
    torch.manual_seed(seed)
    net = to_memory_format(build_network(load_model_config("small")).train(), fmt)
    spec = ModelSpec.from_config(load_model_config("small"))
    loss = LossComputer(LossSettings(256, 3.0, importance, spec.sensory_aux_weight, spec.query_aux_weight))
    groups = param_groups(net, lr=1e-3, weight_decay=0.001, embed_weight_decay=0.0, backbone_lr_ratio=0.1)
    opt = torch.optim.AdamW(groups, lr=1e-3, eps=1e-6)
    plan = StagePlan("main_training", 10, 2, 2, 2, 1, None, False, 1e-6, False)
    return net, ClipModel(net, 2, 0.5, fmt), loss, opt, plan


def _step(setup, batch, iteration: int):
    net, model, loss, opt, plan = setup
    torch.manual_seed(100 + iteration)  # the clip's random choices and the loss's points, alike in every run
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return train_step(model, batch, loss.compute, opt, scaler, plan, 1e9)  # no clipping: raw gradients


def test_channels_last_step_equals_the_default_within_kernel_noise():
    batch = make_batch(b=2, t=4, o=3, size=32, num_objects=(3, 2))
    # Uniform loss points: the top-k of the most uncertain ones would turn a 1e-6 difference of logits into other
    # points, and so a 1e-4 difference of the loss (seen: ce/t2), which says nothing about the layout.
    default, chlast = _setup("contiguous", importance=0.0), _setup("channels_last", importance=0.0)
    net_cl = chlast[0]
    assert net_cl.pixel_encoder.conv1.weight.is_contiguous(memory_format=CL)
    assert not net_cl.pixel_encoder.conv1.weight.is_contiguous()
    features = []
    handle = net_cl.pixel_encoder.register_forward_hook(lambda m, i, o: features.append(o[0]))
    a, b = _step(default, batch, 0), _step(chlast, batch, 0)
    handle.remove()
    assert features[0].is_contiguous(memory_format=CL)  # the layout carries through the network
    assert a.losses.keys() == b.losses.keys()
    for k in a.losses:
        torch.testing.assert_close(b.losses[k], a.losses[k], rtol=RTOL, atol=1e-6, msg=k)
    grads_a = {k: p.grad for k, p in default[0].named_parameters() if p.grad is not None}
    grads_b = {k: p.grad for k, p in net_cl.named_parameters() if p.grad is not None}
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 100
    scale = max(float(g.abs().max()) for g in grads_a.values())
    for k, g in grads_a.items():
        assert grads_b[k].stride() == dict(net_cl.named_parameters())[k].stride(), k  # grads take the layout
        # Per tensor relative, with a floor at the largest gradient's scale (some are analytically ~0).
        torch.testing.assert_close(grads_b[k], g, rtol=RTOL, atol=RTOL * scale * 1e-2, msg=k)
    for (k, pa), pb in zip(default[0].state_dict().items(), net_cl.state_dict().values(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=RTOL, atol=1e-6, msg=k)  # the updated weights


def test_weights_files_are_the_same_bytes_in_either_format(tmp_path):
    net = build_network(load_model_config("small"))
    chlast = to_memory_format(copy.deepcopy(net), "channels_last")
    save_weights(net, tmp_path / "default.pth")
    save_weights(chlast, tmp_path / "chlast.pth")
    assert (tmp_path / "chlast.pth").read_bytes() == (tmp_path / "default.pth").read_bytes()
    loaded = read_weights_file(tmp_path / "chlast.pth")
    assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert all(v.is_contiguous() for v in loaded.values())
    fresh = build_network(load_model_config("small"))
    load_weights(fresh, loaded)  # strict: into a default-format network
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in net.state_dict().items())
    # The checkpoint's copy (cutie/training/hooks/checkpointing.py) is in the default layout too.
    plain = contiguous_copy(chlast.state_dict())
    assert all(v.is_contiguous() for v in plain.values())
    assert all(torch.equal(plain[k], v) for k, v in net.state_dict().items())


def _roundtrip(state: dict) -> dict:
    """Through bytes, as a checkpoint file (weights_only, as cutie/training/checkpoint.py loads)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def test_resume_in_channels_last_is_bit_identical():
    batch = make_batch(b=2, t=3, o=2, size=32, num_objects=(2, 1))
    straight = _setup("channels_last")
    for it in range(2):
        _step(straight, batch, it)

    first = _setup("channels_last")
    _step(first, batch, 0)
    net, _, _, opt, _ = first
    # What CheckpointHook writes, and what the run's _restore reads back.
    saved = _roundtrip({"weights": contiguous_copy(net.state_dict()), "optimizer": contiguous_copy(opt.state_dict())})
    assert all(v.is_contiguous() for s in saved["optimizer"]["state"].values() for v in s.values())
    resumed = _setup("channels_last", seed=1)  # other initial weights: all of them must come from the file
    load_weights(resumed[0], saved["weights"])
    load_optimizer_state(resumed[3], saved["optimizer"])
    for p, slots in resumed[3].state.items():
        for k in ("exp_avg", "exp_avg_sq"):
            assert slots[k].stride() == p.stride()  # the moments take their parameter's layout again
    _step(resumed, batch, 1)
    for k, v in straight[0].state_dict().items():
        assert torch.equal(resumed[0].state_dict()[k], v), k
    # The same checkpoint resumes in the default format too (kernel rounding from here on, not bit-identical).
    other = _setup("contiguous", seed=1)
    load_weights(other[0], saved["weights"])
    load_optimizer_state(other[3], saved["optimizer"])
    assert all(s["exp_avg"].is_contiguous() for s in other[3].state.values())
