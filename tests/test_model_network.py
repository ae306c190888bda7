"""The network's layout (official checkpoint keys), config, variants and the clip forward's behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cutie.model import ModelConfigError, ModelSpec, build_network, load_model_config
from cutie.model.clip_forward import forward_clip
from cutie.model.memory_read import softmax_affinity


@pytest.fixture(scope="module")
def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(load_model_config("small")).train()


def make_batch(b: int = 2, t: int = 4, o: int = 3, size: int = 32, num_objects: tuple = (3, 2)) -> dict:
    g = torch.Generator().manual_seed(1)
    cls_gt = torch.randint(0, o + 1, (b, t, 1, size, size), generator=g)
    first = torch.stack([cls_gt[:, 0, 0] == k + 1 for k in range(o)], 1).unsqueeze(1).long()
    selector = torch.tensor([[1.0 if k < n else 0.0 for k in range(o)] for n in num_objects])
    return {
        "rgb": torch.rand(b, t, 3, size, size, generator=g),
        "first_frame_gt": first,
        "cls_gt": cls_gt,
        "selector": selector,
        "num_objects": torch.tensor(num_objects),
    }


@pytest.mark.parametrize("name", ["small", "base"])
def test_state_dict_is_official_layout(name: str, reference_dir: Path) -> None:
    official = json.loads((reference_dir / f"official_keys_{name}.json").read_text())
    ours = {k: list(v.shape) for k, v in build_network(load_model_config(name)).state_dict().items()}
    assert list(ours) == list(official)  # same keys, same order
    assert ours == official


def test_single_object_variant_differs_in_two_weights() -> None:
    spec = ModelSpec.from_config(load_model_config("small"))
    multi = {k: v.shape for k, v in build_network(load_model_config("small")).state_dict().items()}
    single = {k: v.shape for k, v in build_network(load_model_config("small"), single_object=True).state_dict().items()}
    assert multi.keys() == single.keys()
    diff = {k: (multi[k][1], single[k][1]) for k in multi if multi[k] != single[k]}
    assert diff == {
        "mask_encoder.conv1.weight": (5, 4),
        "pixel_fuser.sensory_compress.weight": (spec.sensory_dim + 2, spec.sensory_dim + 1),
    }


def test_config_matches_hydra_composition() -> None:
    from hydra import compose, initialize_config_dir

    from cutie.config.model import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR.parent), version_base="1.3"):
        for name, encoder in (("small", "resnet18"), ("base", "resnet50")):
            cfg = compose("train_config", overrides=[f"model={name}"])
            spec = ModelSpec.from_config(cfg.model)
            assert spec == ModelSpec.from_config(load_model_config(name))
            assert (spec.name, spec.pixel_encoder_type, spec.num_queries) == (name, encoder, 16)
            assert cfg.model.imagenet_dir == "weights/imagenet"


def test_config_errors_name_the_option() -> None:
    with pytest.raises(ModelConfigError, match="pixel_encoder.type"):
        build_network(load_model_config("small", {"pixel_encoder": {"type": "vit"}}))
    cfg = dict(load_model_config("small"))
    del cfg["key_dim"]
    with pytest.raises(ModelConfigError, match="model.key_dim"):
        build_network(cfg)


def test_clip_forward_shapes_and_probabilities(small_net: torch.nn.Module) -> None:
    batch = make_batch(num_objects=(2, 2))  # 3 object slots, at most 2 used: outputs cut to 2
    torch.manual_seed(0)
    out = forward_clip(small_net, batch, num_ref_frames=2, deep_update_prob=0.5)  # frame 3 picks 2 of 3
    assert sorted(out) == sorted(f"{k}_{t}" for t in (1, 2, 3) for k in ("logits", "masks", "aux"))
    for t in (1, 2, 3):
        assert out[f"logits_{t}"].shape == (2, 3, 32, 32)
        assert out[f"masks_{t}"].shape == (2, 2, 32, 32)
        probs = torch.softmax(out[f"logits_{t}"], dim=1)
        torch.testing.assert_close(probs[:, 1:], out[f"masks_{t}"])
        aux = out[f"aux_{t}"]
        assert aux["sensory_logits"].shape == (2, 3, 2, 2)
        assert aux["q_logits"].shape == (2, 3, 4, 2, 2)
        assert aux["attn_mask"].shape == (2, 2, 16, 2, 2) and aux["attn_mask"].dtype == torch.bool


def test_clip_forward_uses_global_rng(small_net: torch.nn.Module) -> None:
    batch = make_batch(t=5)

    def run(seed: int, p: float) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return forward_clip(small_net, batch, num_ref_frames=1, deep_update_prob=p)["logits_4"]

    torch.testing.assert_close(run(3, 0.5), run(3, 0.5), rtol=0, atol=0)
    assert not torch.equal(run(3, 1.0), run(3, 0.0))  # deep updates change later frames
    assert any(not torch.equal(run(3, 1.0), run(s, 1.0)) for s in range(4, 8))  # reference frames are random


def test_every_parameter_trains_and_encoder_bn_stays_frozen(small_net: torch.nn.Module) -> None:
    small_net.zero_grad()
    bn = small_net.mask_encoder.bn1
    running = bn.running_mean.clone()
    torch.manual_seed(0)
    out = forward_clip(small_net, make_batch(t=3), num_ref_frames=2, deep_update_prob=1.0)
    loss = sum(out[f"logits_{t}"].sum() + sum(v.float().sum() for v in out[f"aux_{t}"].values()) for t in (1, 2))
    loss.backward()
    unused = [n for n, p in small_net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unused  # DDP needs no find_unused_parameters
    assert not bn.training and torch.equal(bn.running_mean, running)  # official: encoder BN statistics frozen
    small_net.zero_grad()


def test_bf16_autocast_on_cpu(small_net: torch.nn.Module) -> None:
    batch = make_batch(t=3)
    with torch.no_grad():
        torch.manual_seed(0)
        ref = forward_clip(small_net, batch, num_ref_frames=2, deep_update_prob=1.0)
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = forward_clip(small_net, batch, num_ref_frames=2, deep_update_prob=1.0)
            # The memory readout stays float32 under autocast.
            q = torch.rand(1, 64, 2, 2)
            read = small_net.read_pixel_memory(
                q, q, torch.rand(1, 64, 2, 2, 2), torch.ones(1, 1, 2, 2, 2), torch.rand(1, 2, 256, 2, 2, 2).bfloat16()
            )
    assert read.dtype == torch.float32
    for t in (1, 2):
        assert low[f"logits_{t}"].dtype == torch.float32  # aggregation is float32
        assert torch.isfinite(low[f"logits_{t}"]).all()
        err = (low[f"masks_{t}"] - ref[f"masks_{t}"]).abs().max()
        assert err < 0.2, f"bf16 masks drift {err}"


def test_chunked_objects_match_all_at_once(small_net: torch.nn.Module) -> None:
    net = small_net.eval()
    try:
        g = torch.Generator().manual_seed(2)
        image = torch.rand(1, 3, 32, 32, generator=g)
        masks = torch.rand(1, 3, 32, 32, generator=g)
        with torch.no_grad():
            ms_feat, pix_feat = net.encode_image(image)
            sensory = torch.rand(1, 3, 256, 2, 2, generator=g)
            whole = net.encode_mask(image, pix_feat, sensory, masks)
            parts = net.encode_mask(image, pix_feat, sensory, masks, chunk_size=1)
            for a, b in zip(whole[:3], parts[:3], strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
            readout = torch.rand(1, 3, 256, 2, 2, generator=g)
            whole = net.segment(ms_feat, readout, sensory)
            parts = net.segment(ms_feat, readout, sensory, chunk_size=2)
            for a, b in zip(whole, parts, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    finally:
        net.train()


def test_top_k_affinity() -> None:
    sim = torch.randn(2, 10, 7)
    aff = softmax_affinity(sim, top_k=3)
    assert ((aff > 0).sum(dim=1) == 3).all()
    torch.testing.assert_close(aff.sum(dim=1), torch.ones(2, 7))
    top = sim.topk(3, dim=1).indices
    torch.testing.assert_close(aff.gather(1, top), torch.softmax(sim.gather(1, top), dim=1))
    torch.testing.assert_close(softmax_affinity(sim), torch.softmax(sim, dim=1))


def test_single_object_network_runs_a_clip() -> None:
    torch.manual_seed(0)
    net = build_network(load_model_config("small"), single_object=True).train()
    batch = make_batch(b=1, t=3, o=1, num_objects=(1,))
    with torch.no_grad():
        out = forward_clip(net, batch, num_ref_frames=2, deep_update_prob=1.0)
    assert out["logits_2"].shape == (1, 2, 32, 32) and out["masks_2"].shape == (1, 1, 32, 32)
    assert torch.isfinite(out["logits_2"]).all()


def test_stem_shortcuts_match_the_plain_stem() -> None:
    """The mask encoder's stem (image convolved once per frame) and the CPU channels-last max-pool give the
    plain conv-BN-ReLU-maxpool of [image, planes] per object: values and gradients."""
    from torch import nn

    from cutie.model import resnet

    torch.manual_seed(0)
    conv, bn = resnet.stem(5)
    bn.eval()
    image = torch.randn(2, 3, 40, 48)
    planes = torch.rand(2, 3, 2, 40, 48).round().requires_grad_()  # binary masks: many ties after the ReLU
    ref_in = torch.cat([image.unsqueeze(1).expand(2, 3, 3, 40, 48), planes], dim=2).flatten(0, 1)
    ref = nn.functional.max_pool2d(torch.relu(bn(conv(ref_in))), 3, stride=2, padding=1)
    out = resnet.object_stem_forward(image, planes, conv, bn)
    assert out.shape == ref.shape == (6, 64, 10, 12)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, [planes, conv.weight, bn.weight], grad)
    g_out = torch.autograd.grad(out, [planes, conv.weight, bn.weight], grad)
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    x = torch.relu(torch.randn(3, 8, 21, 20)).requires_grad_()  # odd sizes, ties at zero
    y_ref, y = nn.functional.max_pool2d(x, 3, stride=2, padding=1), resnet._ChannelsLastMaxPool.apply(x)
    assert torch.equal(y, y_ref) and y.is_contiguous()
    gy = torch.randn_like(y)
    assert torch.equal(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(y_ref, x, gy)[0])
