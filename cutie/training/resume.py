"""A resume continues the same run: the relaunch's resolved config is compared with the checkpoint's.

Rules (checked before the first step; a violation is a ConfigError, exit code 2):
- `ALLOWED` keys may differ: they change where and how fast the run goes, not what a step computes.
- Settings of a stage that has not started yet (after the checkpoint's stage) may differ: nothing of it ran.
- Catalogue entries (`data.image_datasets.<NAME>`, `data.vos_datasets.<NAME>`) that no stage up to the
  checkpoint's reads, in either config, may differ: e.g. an entry that a newer version of the catalogue added.
- `<stage>.enabled` may differ for the checkpoint's stage and later ones (e.g. pre-training alone first, then
  main training), not for earlier ones (they would claim a stage that did or did not run).
- `<stage>.num_iterations` of the checkpoint's stage may change to any total not below the completed steps:
  training continues to the new total. The lr milestones (`lr_schedule_steps`, compared strictly) stay where they
  were, in absolute iterations; the max-skip curriculum's switch points are fractions of the new total.
- Everything else (model.*, crop_size, seq_length, num_objects, batch_size, seed, learning_rate, weight decay,
  the lr schedule, data.* ...) must be equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cutie.training.plan import STAGES, ConfigError

# Keys (or key prefixes, ending in '.') that may differ between a checkpoint's run and its relaunch.
ALLOWED = (
    "exp_id",
    "output_root",
    "data_root",
    "cache_root",
    "weights",
    "checkpoint",
    "device",
    "loader",
    "num_workers",
    "max_batch_per_gpu",  # a memory knob: the global batch is kept (micro-batch sums round differently)
    "cudnn_benchmark",
    "compile",
    "memory_format",  # a layout: kernels round differently, the saved files do not differ
    "log_text_interval",
    "log_image_interval",
    "save_weights_interval",
    "save_checkpoint_interval",
    "eval_interval",
    "max_nonfinite_steps",
    "max_bad_sample_fraction",
    "stop_at_iteration",
    "model.imagenet_dir",  # only used to initialise a new run
    "data.val_dataset.",  # validation only: never changes a training step
    "data.val_dataset",
)
_MISSING = "<absent>"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {'a.b.c': value}; lists stay whole values."""
    if not isinstance(tree, Mapping):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _allowed(key: str) -> bool:
    return any(key == a or (a.endswith(".") and key.startswith(a)) for a in ALLOWED)


def _stage_of(key: str) -> str | None:
    for s in STAGES:
        if key.startswith(f"{s}.") or key.startswith(f"data.{s}."):
            return s
    return None


def _is_iterations(key: str, stage: str) -> bool:
    return key in (f"{stage}.num_iterations", f"data.{stage}.num_iterations")


_CATALOGUES = ("image_datasets", "vos_datasets")


def _datasets_used(cfg: Mapping, stages: tuple[str, ...]) -> set[str]:
    data = cfg.get("data")
    if not isinstance(data, Mapping):
        return set()
    out: set[str] = set()
    for s in stages:
        names = data.get(s, {}).get("datasets", []) if isinstance(data.get(s), Mapping) else []
        out.update(str(n) for n in names or [])
    return out


def _unused_catalogue_entry(key: str, used: set[str]) -> bool:
    parts = key.split(".")
    return len(parts) >= 3 and parts[0] == "data" and parts[1] in _CATALOGUES and parts[2] not in used


def compare(old: Mapping, new: Mapping, ckpt_stage: str) -> tuple[list[str], list[str]]:
    """(blocking differences, tolerated differences), each as 'key: old -> new' lines."""
    a, b = flatten(old), flatten(new)
    blocking, tolerated = [], []
    ckpt_index = STAGES.index(ckpt_stage)
    used = _datasets_used(old, STAGES[: ckpt_index + 1]) | _datasets_used(new, STAGES[: ckpt_index + 1])
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va == vb:
            continue
        line = f"{key}: {va!r} -> {vb!r}"
        stage = _stage_of(key)
        later = stage is not None and STAGES.index(stage) > ckpt_index
        own = stage == ckpt_stage
        if (
            _allowed(key)
            or later
            or _unused_catalogue_entry(key, used)
            or (own and _is_iterations(key, stage))
            or (stage is not None and key.endswith(".enabled") and not STAGES.index(stage) < ckpt_index)
        ):
            tolerated.append(line)
        else:
            blocking.append(line)
    return blocking, tolerated


def check_same_run(old: Mapping, new: Mapping, ckpt: Mapping, where: str, new_total: int | None) -> list[str]:
    """Raises ConfigError (with the differences and the fix) unless the relaunch continues the checkpoint's run;
    returns the tolerated differences. `new_total`: the relaunch's num_iterations of the checkpoint's stage (None
    when that stage is not enabled now)."""
    stage, done = str(ckpt["stage"]), int(ckpt["iteration"])
    blocking, tolerated = compare(old, new, stage)
    if new_total is not None and new_total < done:
        blocking.append(f"{stage}.num_iterations: {new_total} is below the {done} iterations already completed")
    if blocking:
        raise ConfigError(
            f"this relaunch differs from the run of {where} ({stage}, iteration {done}) in settings that change "
            "what is trained:\n  "
            + "\n  ".join(blocking)
            + "\nFix: relaunch with the checkpoint's settings to resume; exp_id=<new id> for a new run; or "
            f"exp_id=<new id> weights={where} to start a new run from these weights"
        )
    return tolerated
