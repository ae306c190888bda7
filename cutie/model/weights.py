"""Network weights I/O in the official Cutie key layout.

- `read_weights_file`: a plain state dict (official releases, our `save_weights`) or a full checkpoint
  (`{'weights': state_dict, ...}`, written by the trainer) -> state dict of CPU tensors.
- `load_weights`: strict loading with every missing/unexpected/mis-shaped key listed; the one tolerated
  difference is the single-object -> multi-object widening (`widen_single_to_multi`).
- `save_weights`: atomic, official keys, CPU tensors: `torch.load` + `load_state_dict` in official Cutie works.
- `init_from_imagenet`: torchvision ResNet weights from a local folder into the two encoders, as official Cutie
  does at construction (it downloads them; we never download).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cutie.model.param_groups import official_name
from cutie.utils.atomic import atomic_torch_save

log = logging.getLogger(__name__)

# Weights whose input channels differ between the single-object network (pre-training: no "other objects"
# channel) and the multi-object one; moving from the first to the second appends one input channel.
WIDENABLE_KEYS = ("mask_encoder.conv1.weight", "pixel_fuser.sensory_compress.weight")
# File names official Cutie downloads (torch hub cache names); other torchvision releases also fit.
IMAGENET_FILES = {"resnet18": "resnet18-5c106cde.pth", "resnet50": "resnet50-19c8e357.pth"}
IMAGENET_HINT = "see README, ImageNet weights"

StateDict = dict[str, torch.Tensor]

# Checkpoints of format v1 (older versions of this trainer) hold numpy arrays (the numpy RNG state); v2 holds
# none. Allowing numpy array reconstruction (plain dtypes only, no object arrays) lets `weights=<v1 checkpoint>`
# start a new run from such a file; nothing else beyond tensors and containers is allowed.
_NUMPY_SAFE_GLOBALS = [
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    *(type(np.dtype(t)) for t in (np.bool_, np.uint8, np.int32, np.int64, np.uint32, np.float32, np.float64)),
]


class WeightsError(ValueError):
    """A weights file or state dict that does not fit: the message names the file/keys and what was expected."""


def unwrap(net: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(net, nn.parallel.DistributedDataParallel | nn.DataParallel):
            net = net.module
        elif hasattr(net, "_orig_mod") and isinstance(net._orig_mod, nn.Module):
            net = net._orig_mod
        else:
            return net


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Remove 'module.' / '_orig_mod.' key prefixes (saved from a wrapped network)."""
    return {official_name(key): value for key, value in state_dict.items()}


# ---------------------------------------------------------------------------------------------------- reading
def read_weights_file(path: str | os.PathLike) -> StateDict:
    """Load the network state dict from a weights file or a full checkpoint (its 'weights' entry), on the CPU."""
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"weights file {path} {what} (expected a .pth state dict or checkpoint)")
    with torch.serialization.safe_globals(_NUMPY_SAFE_GLOBALS), warnings.catch_warnings():
        # torch warns (with a source line) about pickle protocols of non-torch files; the error below says it all
        warnings.simplefilter("ignore", UserWarning)
        unsafe: list[str] | None = None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated zip, random bytes, pickled objects beyond tensors and containers
            unsafe = _unsafe_globals(path)
    if unsafe is not None:
        # torch's own message advises weights_only=False, i.e. running the file's code: never repeated here
        if unsafe:
            problem = (
                f"it needs Python objects other than tensors, numpy arrays, numbers, strings and containers "
                f"({', '.join(unsafe[:4])}), so loading it could run code; not loaded for safety (fix: export "
                "the network's plain state dict, torch.save(model.state_dict(), PATH), where the file was made)"
            )
        else:
            problem = _not_torch(path)
        raise WeightsError(f"{path} cannot be read as a torch weights file: {problem}")
    if isinstance(obj, Mapping) and isinstance(obj.get("weights"), Mapping):
        state_dict, what = obj["weights"], "full checkpoint"
    else:
        state_dict, what = obj, "weights file"
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise WeightsError(f"{path}: expected a non-empty state dict (key -> tensor), found {_describe(obj)}")
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"{path}: {what} is not a state dict: {len(bad)} entries are not str -> tensor, "
            f"e.g. {bad[:5]}{_nested_fix(path, state_dict) if what == 'weights file' else ''}"
        )
    return strip_wrapper_prefixes(state_dict)


def _nested_fix(path: Path, obj: Mapping) -> str:
    """Other trainers save the network under a key of their own ('state_dict', 'model', ...): name that key and
    how to export it, rather than guess which of a file's dicts is the network."""
    nested = [
        k
        for k, v in obj.items()
        if isinstance(v, Mapping) and v and all(isinstance(t, torch.Tensor) for t in v.values())
    ]
    if len(nested) != 1:
        return " (a full checkpoint keeps the network under 'weights')"
    key = nested[0]
    return (
        f'; the tensors are under {key!r} (fix: export them as a plain state dict: python -c "import torch; '
        f"torch.save(torch.load('{path}', weights_only=True)[{key!r}], 'weights.pth')\", then weights=weights.pth)"
    )


def _not_torch(path: Path) -> str:
    """Why a file that is no torch file is not one: the two stand-ins a download leaves behind are named."""
    with open(path, "rb") as f:
        head = f.read(256).lstrip().lower()
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer (a small text file), not the weights (fix: git lfs pull, or download the file)"
    if head.startswith((b"<!doctype html", b"<html")):
        return (
            "it is an HTML page (the download saved a web page: a login, quota or confirmation page), not the "
            "weights (fix: download the file itself again)"
        )
    return "the file may be truncated or corrupt, or was not written by torch.save (fix: copy it again)"


def _unsafe_globals(path: Path) -> list[str]:
    """The Python objects a file's pickle would build beyond what the safe loader allows (read, never run)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip-format torch file: nothing to name
        return []


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        return "an empty dict" if not obj else f"a dict with keys {list(obj)[:8]}"
    return f"an object of type {type(obj).__name__}"


# ---------------------------------------------------------------------------------------------------- writing
def save_weights(state_dict: Mapping[str, torch.Tensor] | nn.Module, path: str | os.PathLike) -> None:
    """Write a plain state dict of CPU tensors with official keys, atomically (temp file + os.replace)."""
    if isinstance(state_dict, nn.Module):
        state_dict = unwrap(state_dict).state_dict()
    plain = {}
    for key, value in strip_wrapper_prefixes(state_dict).items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"cannot save {key!r} to {path}: a state dict holds tensors, got {type(value)}")
        # A copy (no shared storage with live parameters) in the default layout, whatever memory format the
        # network trains in: the file is the same bytes either way.
        plain[key] = value.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
    atomic_torch_save(plain, Path(path))


# ---------------------------------------------------------------------------------------------------- loading
def new_input_channels(like: torch.Tensor, count: int, init: str) -> torch.Tensor:
    """count extra input channels for a conv weight like `like` (out*in*k*k): orthogonal (torch's global RNG)
    or zeros."""
    extra = torch.zeros(like.shape[0], count, *like.shape[2:], dtype=torch.float32)
    if init == "orthogonal":
        nn.init.orthogonal_(extra)
    elif init != "zeros":
        raise ValueError(f"unknown init {init!r} for new input channels: use 'orthogonal' or 'zeros'")
    return extra.to(like.dtype)


def widen_single_to_multi(
    state_dict: Mapping[str, torch.Tensor], target_state_dict: Mapping[str, torch.Tensor], init: str = "orthogonal"
) -> StateDict:
    """Return a copy of state_dict where the single-object weights (WIDENABLE_KEYS with one input channel less
    than in target_state_dict) gain one input channel, initialised orthogonally or with zeros; everything else
    is unchanged. Inputs are not modified."""
    out = dict(state_dict)
    for key in WIDENABLE_KEYS:
        if key not in out or key not in target_state_dict:
            continue
        src, dst = out[key], target_state_dict[key]
        if src.dim() != 4 or dst.dim() != 4:
            continue
        if src.shape[1] + 1 == dst.shape[1] and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:]:
            out[key] = torch.cat([src, new_input_channels(src, 1, init).to(src.device)], dim=1)
            log.info(
                "widened %s from single- to multi-object: %s -> %s input channels (new channel: %s)",
                key,
                src.shape[1],
                dst.shape[1],
                init,
            )
    return out


def _first_few(lines: list[str], limit: int = 3) -> str:
    """At most `limit` indented lines (a small model's weights under model=base miss 168 keys: the count and
    a few names say what happened; the whole list buried the first line)."""
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "".join(f"\n  {line}" for line in lines[:limit]) + more


def weights_misfit(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]) -> list[str]:
    """Why `source` does not load into a network whose state dict is `target`: one entry per kind of misfit
    (missing keys, unexpected keys, shape mismatches), with its count and first keys; empty when it fits.
    Shapes only, so `target` may live on the meta device."""
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    mismatched = [
        f"{k}: file {tuple(source[k].shape)} vs network {tuple(target[k].shape)}"
        for k in target
        if k in source and tuple(source[k].shape) != tuple(target[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (in the network, not in the weights):" + _first_few(missing))
    if unexpected:
        parts.append(
            f"{len(unexpected)} unexpected keys (in the weights, not in the network):" + _first_few(unexpected)
        )
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches:" + _first_few(mismatched))
    return parts


def load_weights(net: nn.Module, state_dict: Mapping[str, torch.Tensor], *, widen_init: str = "orthogonal") -> None:
    """Load state_dict into net, strictly: every key present, none extra, every shape equal, except the
    single -> multi-object widening. Raises WeightsError with the count of each kind of misfit and its first keys."""
    net = unwrap(net)
    target = net.state_dict()
    source = widen_single_to_multi(strip_wrapper_prefixes(state_dict), target, widen_init)
    misfit = weights_misfit(target, source)
    if misfit:
        raise WeightsError(
            "weights do not fit the network (is the model=small|base choice the one they were trained with?)\n"
            + "\n".join(misfit)
        )
    net.load_state_dict(source, strict=True)


# ---------------------------------------------------------------------------------------------------- ImageNet
def find_imagenet_file(imagenet_dir: Path, arch: str) -> Path | None:
    """The official file name first, then any torchvision release of the same architecture."""
    official = imagenet_dir / IMAGENET_FILES[arch]
    if official.is_file():
        return official
    others = sorted(imagenet_dir.glob(f"{arch}-*.pth"))
    return others[0] if others else None


def pixel_encoder_arch(target: Mapping[str, torch.Tensor]) -> str:
    """resnet50 (bottleneck blocks, conv3) for Cutie-base, resnet18 (basic blocks) for Cutie-small."""
    return "resnet50" if any(k.startswith("pixel_encoder.res2.0.conv3.") for k in target) else "resnet18"


# torchvision ResNet stage -> encoder key prefix. Only the stages up to stride 16 are used (no layer4, no fc).
_PIXEL_STAGES = {"conv1.": "conv1.", "bn1.": "bn1.", "layer1.": "res2.", "layer2.": "layer2.", "layer3.": "layer3."}
_MASK_STAGES = {"conv1.": "conv1.", "bn1.": "bn1.", "layer1.": "layer1.", "layer2.": "layer2.", "layer3.": "layer3."}


def imagenet_to_encoder(
    resnet: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], encoder: str, source_path: Path
) -> StateDict:
    """Map a torchvision ResNet state dict onto `encoder` ('pixel_encoder' or 'mask_encoder') keys of target.
    The first conv's input channels beyond RGB (mask encoder: mask and other-objects channels) are initialised
    orthogonally. Checks that every ResNet weight of the encoder is covered with the right shape."""
    stages = _PIXEL_STAGES if encoder == "pixel_encoder" else _MASK_STAGES
    out: StateDict = {}
    for key, value in resnet.items():
        if key.endswith("num_batches_tracked"):
            continue  # older torchvision files lack it; the network keeps its own counter
        for src_prefix, dst_prefix in stages.items():
            if key.startswith(src_prefix):
                out[f"{encoder}.{dst_prefix}{key[len(src_prefix) :]}"] = value
                break

    conv1 = f"{encoder}.conv1.weight"
    if conv1 in out and conv1 in target and out[conv1].dim() == 4:
        extra = target[conv1].shape[1] - out[conv1].shape[1]
        if extra > 0:
            out[conv1] = torch.cat([out[conv1], new_input_channels(out[conv1], extra, "orthogonal")], dim=1)

    wanted = [
        k
        for k in target
        if k.startswith(tuple(f"{encoder}.{p}" for p in stages.values())) and not k.endswith("num_batches_tracked")
    ]
    missing = [k for k in wanted if k not in out]
    unexpected = [k for k in out if k not in target]
    mismatched = [
        f"{k}: file {tuple(out[k].shape)} vs network {tuple(target[k].shape)}"
        for k in wanted
        if k in out and out[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        raise WeightsError(
            f"ImageNet weights {source_path} do not fit {encoder}: missing {missing[:10]}, "
            f"unexpected {unexpected[:10]}, shape mismatches {mismatched[:10]} (wrong ResNet depth for this model?)"
        )
    return out


def init_from_imagenet(net: nn.Module, imagenet_dir: str | os.PathLike | None) -> None:
    """Initialise the pixel encoder (ResNet-18 small / ResNet-50 base) and the mask encoder (ResNet-18) from
    torchvision ImageNet weights in imagenet_dir. Without the folder or a needed file: one log line, no change."""
    net = unwrap(net)
    target = net.state_dict()
    pixel_arch = pixel_encoder_arch(target)
    if imagenet_dir is None:
        log.info("no ImageNet weights at <not configured>: training from scratch (%s)", IMAGENET_HINT)
        return
    folder = Path(imagenet_dir)
    archs = dict.fromkeys((pixel_arch, "resnet18"))  # ordered, without duplicates
    files = {arch: find_imagenet_file(folder, arch) if folder.is_dir() else None for arch in archs}
    absent = [folder / IMAGENET_FILES[arch] for arch, found in files.items() if found is None]
    if absent:
        where = folder if not folder.is_dir() else ", ".join(str(p) for p in absent)
        log.info("no ImageNet weights at %s: training from scratch (%s)", where, IMAGENET_HINT)
        return

    resnets = {arch: _read_resnet(path) for arch, path in files.items()}
    assert files[pixel_arch] is not None and files["resnet18"] is not None
    update = imagenet_to_encoder(resnets[pixel_arch], target, "pixel_encoder", files[pixel_arch])
    update.update(imagenet_to_encoder(resnets["resnet18"], target, "mask_encoder", files["resnet18"]))
    result = net.load_state_dict(update, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # imagenet_to_encoder checked the keys
    log.info(
        "ImageNet weights: pixel_encoder <- %s (%s), mask_encoder <- resnet18 (%s; extra input channels orthogonal)",
        pixel_arch,
        files[pixel_arch],
        files["resnet18"],
    )


def _read_resnet(path: Path) -> StateDict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"ImageNet weights {path} cannot be read ({type(e).__name__}); expected a torchvision ResNet state "
            f"dict (re-download it: {IMAGENET_HINT})"
        ) from e
    if not isinstance(obj, Mapping) or "conv1.weight" not in obj:
        raise WeightsError(f"ImageNet weights {path}: expected a torchvision ResNet state dict, found {_describe(obj)}")
    return dict(obj)
