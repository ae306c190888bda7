"""Full checkpoints: everything needed to resume bit-for-bit, written atomically, verified and loaded safely.

A checkpoint (format `cutie-train-checkpoint-v2`) is a dict of tensors, numbers, strings, lists and dicts only:
`weights` (plain official-key state dict), `optimizer`, `scheduler`, `scaler`, `stage`, `iteration` (completed
steps), `stage_complete`, `world_size`, `rng` (one plain entry per rank, see `rng_state`), `loader`, `hooks`,
`config` (resolved YAML text). Nothing else, so it loads with `torch.load(weights_only=True)`: a file that needs
any other Python object is refused by name and nothing in it runs.

Files are `checkpoints/<stage>_<iteration:07d>.pth`, each with a digest `<name>.pth.sha256` (sha256sum format)
written atomically just before the checkpoint takes its name: a checkpoint without its digest was never finished,
one whose bytes no longer match was damaged; both are refused (auto-resume then falls back to the previous one).
While a checkpoint is overwritten under its own name (the last step's by the stage's complete one) the digest lists
both files' sha256, so a kill between the two renames never leaves a checkpoint that reads as damaged. The newest
few are kept.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import yaml

from cutie.training.plan import STAGES
from cutie.utils.atomic import atomic_torch_save, atomic_write_text, check_free_space, file_sha256

FORMAT = "cutie-train-checkpoint-v2"
OLD_FORMAT = "cutie-train-checkpoint-v1"  # pickled numpy RNG states: cannot be loaded safely
REQUIRED = ("format", "weights", "optimizer", "scheduler", "scaler", "stage", "iteration", "rng", "config")
DIGEST_SUFFIX = ".sha256"
_NAME = re.compile(r"^(pre_training|main_training)_(\d{7})\.pth$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: one line naming the file, the reason and the fix."""


# ---------------------------------------------------------------------------------------------------- RNG states
def capture_rng() -> dict:
    """This process's random states as the libraries return them (cheap: taken every step)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the global state is what we checkpoint)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Restores a state from `capture_rng`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_state() -> dict:
    """This process's random states as plain values (safe to load): python's as version + list of ints + gauss,
    numpy's legacy MT19937 state as a dict, torch's (and CUDA's) as byte tensors."""
    native = capture_rng()
    version, internal, gauss = native["python"]
    name, keys, pos, has_gauss, cached = native["numpy"]
    state = {
        "python": {"version": int(version), "state": [int(x) for x in internal], "gauss": gauss},
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": native["torch"],
    }
    if "cuda" in native:
        state["cuda"] = list(native["cuda"])
    return state


def set_rng_state(state: dict) -> None:
    """Restores a state from `rng_state`."""
    py, npy = state["python"], state["numpy"]
    native = {
        "python": (int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss"]),
        "numpy": (
            str(npy["bit_generator"]),
            np.asarray(torch.as_tensor(npy["keys"]).numpy(), dtype=np.uint32),
            int(npy["pos"]),
            int(npy["has_gauss"]),
            float(npy["cached_gaussian"]),
        ),
        "torch": state["torch"],
    }
    if "cuda" in state:
        native["cuda"] = state["cuda"]
    restore_rng(native)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Runs a block without moving the global random streams (e.g. a DataLoader drawing its base seed when it
    starts), so the training stream depends only on the steps taken: a resumed run then matches an uninterrupted
    one."""
    state = capture_rng()  # native: this runs every step, no conversion needed
    try:
        yield
    finally:
        restore_rng(state)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- files
def checkpoint_path(run_dir: Path, stage: str, iteration: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{stage}_{iteration:07d}.pth"


def digest_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + DIGEST_SUFFIX)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (by stage order, then iteration)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append(((STAGES.index(m.group(1)), int(m.group(2))), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for p in list_checkpoints(run_dir)[:-keep]:
        p.unlink(missing_ok=True)
        digest_path(p).unlink(missing_ok=True)


def tensor_bytes(obj: object) -> int:
    """Bytes of every tensor in a nested structure: the size estimate of a checkpoint file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(state: dict, path: Path) -> None:
    """Writes a checkpoint and its digest, both atomically, after checking the disk can hold it (a full disk
    raises DiskFullError before anything is written; the previous checkpoint stays as it was). The digest lands
    first, just before the checkpoint takes its name, so a kill at any moment never leaves a checkpoint without
    its digest (at worst a digest without its checkpoint, which nothing reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The new file is written beside the old ones (which stay until pruned): its full size must be free.
    check_free_space(path.parent, tensor_bytes(state) + (1 << 20), f"the checkpoint {path.name}")
    sidecar = digest_path(path)
    # Overwriting a checkpoint (the last step's, by the stage's complete one, under the same name): until the new
    # file has the name, the digest lists the old file's digest too, so a kill between the two renames still
    # leaves a checkpoint that verifies (the old one) rather than one that reads as damaged.
    previous = _listed_digests(sidecar) if path.is_file() else []

    def write_digest(digest: str) -> None:
        atomic_write_text(sidecar, "".join(f"{d}  {path.name}\n" for d in [digest, *previous]))

    digest = atomic_torch_save(state, path, on_digest=write_digest)
    if previous:
        atomic_write_text(sidecar, f"{digest}  {path.name}\n")


_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _listed_digests(sidecar: Path) -> list[str]:
    """The sha256 values a digest file lists (first field of each line); [] if it is missing or unreadable."""
    try:
        lines = sidecar.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    fields = [line.split()[0].lower() for line in lines if line.strip()]
    return [f for f in fields if _HEX64.match(f)]


# ---------------------------------------------------------------------------------------------------- loading
def _unsafe_globals(path: Path) -> list[str]:
    """The Python objects a file's pickle would build beyond what weights_only allows (read, never run)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


def _old_format_hint(path: Path, unsafe: list[str]) -> str | None:
    if unsafe and all(g.startswith("numpy.") for g in unsafe):
        return (
            f"checkpoint {path} has the old format {OLD_FORMAT} (numpy random states pickled as numpy objects), "
            f"which cannot be loaded safely; start a new run from its weights: exp_id=<new id> weights={path}"
        )
    return None


def verify_checkpoint(path: Path) -> None:
    """Raises CheckpointError unless the file's sha256 matches its digest file."""
    path = Path(path)
    sidecar = digest_path(path)
    if not sidecar.is_file():
        hint = _old_format_hint(path, _unsafe_globals(path))
        raise CheckpointError(
            hint
            or f"checkpoint {path} is unverified: its digest {sidecar.name} is missing (the write did not finish, "
            "or the file was not written by this trainer)"
        )
    listed = _listed_digests(sidecar)
    if not listed:
        raise CheckpointError(f"checkpoint {path} is unverified: its digest {sidecar.name} is unreadable")
    expected = listed[0]
    actual = file_sha256(path)
    if actual not in listed:  # two lines only while a checkpoint is being overwritten (save_checkpoint)
        raise CheckpointError(
            f"checkpoint {path} is damaged: its sha256 {actual[:12]}... does not match {sidecar.name} "
            f"({expected[:12]}...); the file was truncated or overwritten after it was written"
        )


def load_checkpoint(path: Path, *, verify: bool = True) -> dict:
    """Verifies (digest) and loads a v2 checkpoint with weights_only=True; CheckpointError says why not."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint={path}: no such file (give a path written by this trainer)")
    if verify:
        verify_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        unsafe = _unsafe_globals(path)
        if unsafe:
            hint = _old_format_hint(path, unsafe)
            raise CheckpointError(
                hint
                or f"refusing checkpoint {path}: it needs Python objects beyond tensors, numbers, strings and "
                f"containers ({', '.join(unsafe[:4])}), so loading it could run code; nothing was loaded"
            ) from None
        first = (str(e).splitlines() or [""])[0][:160]
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {first}); use an older checkpoint of the run"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a training checkpoint (it holds a {type(ckpt).__name__})")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing and "weights" in ckpt:
        raise CheckpointError(
            f"{path} is not a full training checkpoint of format {FORMAT} (missing {missing}); to start from its "
            "weights use weights=PATH with a new exp_id"
        )
    if missing:
        raise CheckpointError(
            f"{path} is not a full training checkpoint (missing {missing}); to start from plain weights use "
            "weights=PATH instead of checkpoint=PATH"
        )
    if ckpt["format"] != FORMAT:
        raise CheckpointError(f"{path} has format {ckpt['format']!r}; this trainer reads {FORMAT}")
    if ckpt["stage"] not in STAGES or not isinstance(ckpt["iteration"], int):
        raise CheckpointError(f"{path}: stage {ckpt['stage']!r} / iteration {ckpt['iteration']!r} are not valid")
    weights = ckpt["weights"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: its 'weights' entry is not a state dict (name -> tensor)")
    return ckpt


MAX_CONFIG_CHARS = 1 << 20  # a resolved config is a few kB


class _PlainYamlLoader(yaml.SafeLoader):
    """Safe YAML without aliases: the config we write has none, and a file from elsewhere could nest aliases
    (`&a [*b, *b, ...]`) into a document that is small on disk but exponentially large to walk and compare."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        return super().compose_node(parent, index)


def checkpoint_config(ckpt: Mapping, path: Path) -> dict:
    """The resolved config a checkpoint was written with, as plain data. Raises CheckpointError (one line naming
    the file) for text that is not a YAML mapping, uses aliases, or is implausibly large."""
    text = ckpt.get("config")
    if not isinstance(text, str):
        raise CheckpointError(f"checkpoint {path}: its config is not YAML text ({type(text).__name__})")
    if len(text) > MAX_CONFIG_CHARS:
        raise CheckpointError(f"checkpoint {path}: its config is {len(text)} characters (a written one is a few "
                              "thousand); not a checkpoint of this project")  # fmt: skip
    try:
        doc = yaml.load(text, Loader=_PlainYamlLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        reason = " ".join(str(e).split())
        raise CheckpointError(f"checkpoint {path}: its config cannot be read ({reason})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"checkpoint {path}: its config is not a mapping ({type(doc).__name__})")
    return doc


def find_resumable(run_dir: Path, log: logging.Logger) -> tuple[Path, dict] | None:
    """The newest checkpoint of a run that verifies and loads; each one skipped is logged with its reason. None
    when the run has no checkpoints; CheckpointError when it has some but none is usable."""
    reasons = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            log.warning(f"skipped checkpoint {path.name}: {e}")
            reasons.append(str(e))
    if reasons:
        raise CheckpointError(
            f"none of the {len(reasons)} checkpoints in {Path(run_dir) / 'checkpoints'} is usable (newest: "
            f"{reasons[0]}); start a new run with exp_id=<new id>, or resume from a good file with checkpoint=PATH"
        )
    return None
