"""Weights I/O (cutie/model/weights.py) against the official key layout.

Until (and besides) the real network, a stand-in module is built from official_keys_*.json: same keys and
shapes, so strict loading, widening and the ImageNet mapping are checked against the official layout.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cutie.model.weights import (
    WeightsError,
    init_from_imagenet,
    load_weights,
    read_weights_file,
    save_weights,
    widen_single_to_multi,
)

BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "inv_freq")


def official_shapes(reference_dir: Path, model: str) -> dict[str, list[int]]:
    return json.loads((reference_dir / f"official_keys_{model}.json").read_text())


def single_object_shapes(shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    out = dict(shapes)
    for key in ("mask_encoder.conv1.weight", "pixel_fuser.sensory_compress.weight"):
        out[key] = [shapes[key][0], shapes[key][1] - 1, *shapes[key][2:]]
    return out


def stand_in_network(shapes: dict[str, list[int]]) -> nn.Module:
    """A module whose state_dict has exactly these keys and shapes (random values)."""
    root = nn.Module()
    for key, shape in shapes.items():
        *path, leaf = key.split(".")
        node = root
        for name in path:
            if not hasattr(node, name):
                node.add_module(name, nn.Module())
            node = getattr(node, name)
        if leaf == "num_batches_tracked":
            node.register_buffer(leaf, torch.tensor(0))
        elif leaf in BUFFER_SUFFIXES:
            node.register_buffer(leaf, torch.randn(shape))
        else:
            node.register_parameter(leaf, nn.Parameter(torch.randn(shape)))
    return root


def random_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s, generator=gen)
        for k, s in shapes.items()
    }


@pytest.fixture(scope="module")
def small_shapes(reference_dir: Path) -> dict[str, list[int]]:
    return official_shapes(reference_dir, "small")


# ------------------------------------------------------------------------------------------- read / save
def test_save_then_read_round_trip_with_official_keys(tmp_path: Path, small_shapes) -> None:
    state = random_state(small_shapes)
    path = tmp_path / "out" / "w.pth"
    save_weights(state, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.pth"]  # no temp file left
    # what official Cutie does with a weights file: plain torch.load, keys and shapes as in the manifest
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert list(raw) == list(small_shapes)
    assert all(v.device.type == "cpu" for v in raw.values())
    back = read_weights_file(path)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_save_strips_wrapper_prefixes_and_copies(tmp_path: Path) -> None:
    net = nn.Linear(3, 2)
    wrapped = {f"module._orig_mod.{k}": v for k, v in net.state_dict().items()}
    save_weights(wrapped, tmp_path / "w.pth")
    raw = torch.load(tmp_path / "w.pth", weights_only=True)
    assert set(raw) == {"weight", "bias"}
    save_weights(net, tmp_path / "m.pth")  # a module is accepted too
    assert torch.equal(torch.load(tmp_path / "m.pth", weights_only=True)["weight"], net.weight.detach())


def test_read_full_checkpoint_uses_weights_entry(tmp_path: Path) -> None:
    state = {"a.weight": torch.randn(2, 2)}
    torch.save({"weights": state, "it": 10, "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "ck.pth")
    back = read_weights_file(tmp_path / "ck.pth")
    assert list(back) == ["a.weight"] and torch.equal(back["a.weight"], state["a.weight"])


def test_read_errors_name_the_file(tmp_path: Path, small_shapes) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_weights_file(tmp_path / "nope.pth")

    good = tmp_path / "good.pth"
    save_weights(random_state(small_shapes), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated.pth.*truncated or corrupt"):
        read_weights_file(truncated)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(WeightsError, match="garbage.pth"):
        read_weights_file(garbage)

    # what a download leaves instead of the file: named as such, not as a file to copy again
    lfs = tmp_path / "lfs.pth"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 140403617\n")
    with pytest.raises(WeightsError, match=r"lfs.pth cannot be read .*: it is a Git LFS pointer .*git lfs pull"):
        read_weights_file(lfs)
    page = tmp_path / "page.pth"
    page.write_text("\n<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>")
    with pytest.raises(WeightsError, match=r"page.pth cannot be read .*: it is an HTML page .*download the file"):
        read_weights_file(page)

    not_state = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_state)
    with pytest.raises(WeightsError, match="list.pth: expected a non-empty state dict"):
        read_weights_file(not_state)

    mixed = tmp_path / "mixed.pth"
    torch.save({"it": 3, "optimizer": {}}, mixed)
    with pytest.raises(WeightsError, match="mixed.pth.*not a state dict.*'weights'"):
        read_weights_file(mixed)


def test_weights_under_another_trainers_key_are_named_with_a_fix_that_works(tmp_path: Path) -> None:
    """Other trainers (Lightning, most forks) save the network under 'state_dict' or 'model' beside their own
    entries. The error names the key and gives the one command that exports it; that command's file loads."""
    import shlex
    import subprocess
    import sys

    wrapped = tmp_path / "lightning.ckpt"
    net = {"pixel_encoder.conv1.weight": torch.randn(2, 3, 1, 1), "key_proj.bias": torch.randn(2)}
    torch.save({"epoch": 3, "state_dict": net, "optimizer_states": [{"lr": 1e-4}]}, wrapped)
    with pytest.raises(WeightsError) as info:
        read_weights_file(wrapped)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "under 'state_dict'" in message and "fix:" in message
    command = re.search(r"(python -c \".*\")", message).group(1)
    subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=tmp_path, check=True)
    exported = read_weights_file(tmp_path / "weights.pth")
    assert exported.keys() == net.keys() and all(torch.equal(exported[k], net[k]) for k in net)


# ------------------------------------------------------------------------------------------- strict loading
def test_load_is_strict_and_lists_keys(small_shapes) -> None:
    net = stand_in_network(small_shapes)
    state = random_state(small_shapes, seed=1)
    load_weights(net, state)
    assert all(torch.equal(net.state_dict()[k], state[k]) for k in state)

    broken = dict(state)
    del broken["object_transformer.query_init.weight"]
    del broken["key_proj.d_proj.bias"]
    broken["extra.weight"] = torch.zeros(1)
    broken["pix_feat_proj.bias"] = torch.zeros(7)
    with pytest.raises(WeightsError) as err:
        load_weights(net, broken)
    msg = str(err.value)
    assert "2 missing keys" in msg and "object_transformer.query_init.weight" in msg and "key_proj.d_proj.bias" in msg
    assert "1 unexpected keys" in msg and "extra.weight" in msg
    assert "pix_feat_proj.bias: file (7,) vs network (256,)" in msg
    # many offending keys (another model's weights): the count and a few names, not hundreds of lines
    with pytest.raises(WeightsError) as err:
        load_weights(net, {f"other.{i}.weight": torch.zeros(1) for i in range(50)})
    msg = str(err.value)
    assert "50 unexpected keys" in msg and "... and 47 more" in msg and "other.9.weight" not in msg
    assert len(msg.splitlines()) <= 12


def test_widening_is_pure_and_appends_one_channel(small_shapes) -> None:
    single = random_state(single_object_shapes(small_shapes))
    target = random_state(small_shapes)
    before = {k: v.clone() for k, v in single.items()}
    torch.manual_seed(0)
    wide = widen_single_to_multi(single, target, "orthogonal")
    assert all(torch.equal(single[k], before[k]) for k in single)  # input untouched
    for key in ("mask_encoder.conv1.weight", "pixel_fuser.sensory_compress.weight"):
        assert wide[key].shape == target[key].shape
        assert torch.equal(wide[key][:, :-1], single[key])
        new = wide[key][:, -1:].flatten(1)  # out*(k*k)
        gram = new.T @ new if new.shape[0] >= new.shape[1] else new @ new.T
        assert torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-5)  # orthogonal
    assert all(
        torch.equal(wide[k], single[k])
        for k in single
        if k not in ("mask_encoder.conv1.weight", "pixel_fuser.sensory_compress.weight")
    )
    zeros = widen_single_to_multi(single, target, "zeros")
    assert zeros["mask_encoder.conv1.weight"][:, -1].abs().sum() == 0
    with pytest.raises(ValueError, match="unknown init"):
        widen_single_to_multi(single, target, "ones")


def test_load_widens_single_object_weights(small_shapes, caplog) -> None:
    net = stand_in_network(small_shapes)
    single = random_state(single_object_shapes(small_shapes))
    with caplog.at_level(logging.INFO, logger="cutie.model.weights"):
        load_weights(net, single, widen_init="zeros")
    assert "widened mask_encoder.conv1.weight" in caplog.text
    loaded = net.state_dict()
    assert torch.equal(loaded["mask_encoder.conv1.weight"][:, :4], single["mask_encoder.conv1.weight"])
    assert loaded["pixel_fuser.sensory_compress.weight"][:, -1].abs().sum() == 0
    # the other direction is not a documented conversion: refused with the shapes listed
    multi_net = stand_in_network(single_object_shapes(small_shapes))
    with pytest.raises(WeightsError, match=r"mask_encoder.conv1.weight: file \(64, 5, 7, 7\) vs network \(64, 4"):
        load_weights(multi_net, random_state(small_shapes))


# ------------------------------------------------------------------------------------------- ImageNet
@pytest.fixture(scope="module")
def resnet18_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("imagenet")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), folder / "resnet18-5c106cde.pth")
    return folder


def test_imagenet_init_small(small_shapes, resnet18_dir: Path, caplog) -> None:
    net = stand_in_network(small_shapes)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    resnet = torch.load(resnet18_dir / "resnet18-5c106cde.pth", weights_only=True)
    with caplog.at_level(logging.INFO, logger="cutie.model.weights"):
        init_from_imagenet(net, resnet18_dir)
    after = net.state_dict()
    assert "ImageNet weights: pixel_encoder <- resnet18" in caplog.text
    assert torch.equal(after["pixel_encoder.conv1.weight"], resnet["conv1.weight"])
    assert torch.equal(after["pixel_encoder.res2.1.bn2.running_var"], resnet["layer1.1.bn2.running_var"])
    assert torch.equal(after["pixel_encoder.layer3.0.downsample.0.weight"], resnet["layer3.0.downsample.0.weight"])
    assert torch.equal(after["mask_encoder.layer2.1.conv2.weight"], resnet["layer2.1.conv2.weight"])
    conv1 = after["mask_encoder.conv1.weight"]  # 64*5*7*7: RGB from ImageNet, 2 new channels orthogonal
    assert torch.equal(conv1[:, :3], resnet["conv1.weight"])
    extra = conv1[:, 3:].flatten(1)  # 64*98
    assert torch.allclose(extra @ extra.T, torch.eye(64), atol=1e-5)
    # everything outside the encoders' ResNet part is untouched
    for key in (
        "key_proj.key_proj.weight",
        "mask_encoder.fuser.block1.conv1.weight",
        "pixel_encoder.bn1.num_batches_tracked",
    ):
        assert torch.equal(after[key], before[key]), key


def test_imagenet_init_base_uses_resnet50(reference_dir: Path, tmp_path: Path) -> None:
    shapes = official_shapes(reference_dir, "base")
    net = stand_in_network(shapes)
    resnet50 = torchvision.models.resnet50(weights=None).state_dict()
    torch.save(resnet50, tmp_path / "resnet50-0676ba61.pth")  # a newer torchvision file name is accepted
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18-f37072fd.pth")
    init_from_imagenet(net, tmp_path)
    after = net.state_dict()
    assert torch.equal(after["pixel_encoder.res2.2.conv3.weight"], resnet50["layer1.2.conv3.weight"])
    assert torch.equal(after["pixel_encoder.layer3.5.bn3.bias"], resnet50["layer3.5.bn3.bias"])


def test_imagenet_missing_logs_and_changes_nothing(small_shapes, tmp_path: Path, caplog) -> None:
    net = stand_in_network(small_shapes)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="cutie.model.weights"):
        init_from_imagenet(net, tmp_path / "absent")
        init_from_imagenet(net, tmp_path)  # exists, but holds no ResNet file
        init_from_imagenet(net, None)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all("training from scratch" in line for line in lines)
    assert f"no ImageNet weights at {tmp_path / 'absent'}" in lines[0]
    assert "resnet18-5c106cde.pth" in lines[1]
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_imagenet_wrong_depth_is_an_error(reference_dir: Path, resnet18_dir: Path) -> None:
    net = stand_in_network(official_shapes(reference_dir, "base"))  # wants resnet50 for the pixel encoder
    folder = resnet18_dir.parent / "fake50"
    folder.mkdir(exist_ok=True)
    (folder / "resnet18-5c106cde.pth").write_bytes((resnet18_dir / "resnet18-5c106cde.pth").read_bytes())
    (folder / "resnet50-19c8e357.pth").write_bytes((resnet18_dir / "resnet18-5c106cde.pth").read_bytes())
    with pytest.raises(WeightsError, match="resnet50-19c8e357.pth do not fit pixel_encoder"):
        init_from_imagenet(net, folder)


def test_read_accepts_numpy_rng_state_but_refuses_other_objects(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    checkpoint = {
        "weights": {"a": torch.zeros(1)},
        "rng": {"numpy": ("MT19937", rng.integers(0, 9, 624).astype(np.uint32))},
    }
    torch.save(checkpoint, tmp_path / "ck.pth")  # like the trainer's checkpoints (numpy RNG state inside)
    assert list(read_weights_file(tmp_path / "ck.pth")) == ["a"]
    torch.save({"weights": {"a": torch.zeros(1)}, "where": Path("/x")}, tmp_path / "obj.pth")
    with pytest.raises(WeightsError, match="obj.pth.*not loaded for safety"):
        read_weights_file(tmp_path / "obj.pth")


# ------------------------------------------------------------------------------------------- real network
@pytest.fixture(scope="module")
def small_cfg():
    from cutie.model import load_model_config

    return load_model_config("small")


def test_real_network_round_trip_and_widening(small_cfg, small_shapes, tmp_path: Path, resnet18_dir: Path) -> None:
    from cutie.model import build_network

    torch.manual_seed(0)
    net = build_network(small_cfg)
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == small_shapes
    init_from_imagenet(net, resnet18_dir)
    save_weights(net.state_dict(), tmp_path / "multi.pth")
    fresh = build_network(small_cfg)
    load_weights(fresh, read_weights_file(tmp_path / "multi.pth"))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in fresh.state_dict().items())

    single = build_network(small_cfg, single_object=True)
    save_weights(single, tmp_path / "single.pth")
    load_weights(fresh, read_weights_file(tmp_path / "single.pth"))  # pre-training -> main training
    loaded, source = fresh.state_dict(), single.state_dict()
    assert torch.equal(loaded["mask_encoder.conv1.weight"][:, :4], source["mask_encoder.conv1.weight"])
    assert torch.equal(
        loaded["pixel_fuser.sensory_compress.weight"][:, :-1], source["pixel_fuser.sensory_compress.weight"]
    )
    assert all(torch.equal(loaded[k], v) for k, v in source.items() if k in loaded and loaded[k].shape == v.shape)


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_weights_file_that_would_run_code_is_refused_naming_the_call(tmp_path: Path, capfd) -> None:
    """A .pth whose pickle calls os.system: nothing runs, the error names the call, and it never repeats torch's
    advice to load with weights_only=False (which would run it); random bytes are called corrupt, without
    torch's warning (and its source line) on stderr."""
    marker = tmp_path / "ran"
    torch.save({"weights": {"a": torch.zeros(1)}, "x": _RunsACommand(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError) as info:
        read_weights_file(tmp_path / "evil.pth")
    message = str(info.value)
    assert not marker.exists()
    assert "evil.pth" in message and "system" in message and "could run code" in message and "fix:" in message
    assert "weights_only" not in message and len(message.splitlines()) == 1
    (tmp_path / "garbage.pth").write_bytes(b"\x80\x04garbage")
    with pytest.raises(WeightsError, match="garbage.pth.*truncated or corrupt") as info:
        read_weights_file(tmp_path / "garbage.pth")
    assert "weights_only" not in str(info.value) and "Python objects" not in str(info.value)
    assert capfd.readouterr().err == ""
    torch.save(None, tmp_path / "none.pth")
    with pytest.raises(WeightsError, match="none.pth: expected a non-empty state dict"):
        read_weights_file(tmp_path / "none.pth")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        read_weights_file(tmp_path)


def test_weights_of_the_other_model_size_name_the_model_they_fit(repo_root, tmp_path):
    """model=small with a base file listed the mismatching keys under a question ('is the model=small|base
    choice the one they were trained with?') whose answer the trainer can give: the file fits model=base."""
    from hydra import compose, initialize_config_dir

    from cutie.config.train import parse_train_config
    from cutie.model import ModelSpec, build_network, load_model_config
    from cutie.model.weights import WeightsError
    from cutie.training.run import _read_start_weights

    with torch.device("meta"):
        base = build_network(ModelSpec.from_config(load_model_config("base")), single_object=False).state_dict()
    path = tmp_path / "cutie-base-mega.pth"
    # Shapes are what is checked: one zero per tensor, expanded (a file of a few kB).
    torch.save({k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in base.items()}, path)
    overrides = ["model=small", f"weights={path}", "pre_training.enabled=False"]
    with initialize_config_dir(config_dir=str(repo_root / "cutie" / "config"), version_base="1.3"):
        cfg = parse_train_config(compose("train_config", overrides=overrides))
    with pytest.raises(WeightsError) as e:
        _read_start_weights(cfg, ["main_training"])
    first = str(e.value).splitlines()[0]
    assert first == (
        f"weights={path} do not fit model=small: is the model=small|base choice the one they were trained with? "
        "They fit model=base: pass model=base."
    )
