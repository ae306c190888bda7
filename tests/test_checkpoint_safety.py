"""Checkpoint files on their own: safe loading (nothing in a file runs), sha256 verification, the fallback to the
previous checkpoint, the old v1 format, disk-space checks, and the leftovers of killed runs (temporaries of the
atomic writer, shared-memory files of dead processes). Real files throughout."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cutie.data.sampling.source import SharedInt, remove_dead_segments
from cutie.model.weights import WeightsError, read_weights_file
from cutie.training import checkpoint as ckpt_io
from cutie.training.checkpoint import CheckpointError
from cutie.training.plan import ConfigError
from cutie.training.resume import check_same_run, compare
from cutie.utils.atomic import DiskFullError, atomic_write_text, file_sha256, remove_stale_temps


def write_crafted_pickle(path: Path, marker: Path) -> None:
    """A .pth whose unpickling runs a shell command creating `marker` (in a child process, so this test's own
    interpreter never holds the class)."""
    code = textwrap.dedent(f"""
        import os, torch
        class Payload:
            def __reduce__(self):
                return (os.system, ("touch {marker}",))
        torch.save({{"format": "cutie-train-checkpoint-v2", "weights": {{}}, "x": Payload()}}, {str(path)!r})
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def _state(iteration: int, value: float = 0.0) -> dict:
    """A small but complete v2 checkpoint."""
    return {
        "format": ckpt_io.FORMAT,
        "weights": {"w": torch.full((4, 3), value)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]},
        "scheduler": {"last_epoch": iteration},
        "scaler": {},
        "stage": "main_training",
        "iteration": iteration,
        "stage_complete": False,
        "world_size": 1,
        "rng": [ckpt_io.rng_state()],
        "config": "seed: 1\n",
    }


def _save(run: Path, iteration: int, value: float = 0.0) -> Path:
    path = ckpt_io.checkpoint_path(run, "main_training", iteration)
    ckpt_io.save_checkpoint(_state(iteration, value), path)
    return path


def test_crafted_pickle_runs_nothing_and_is_refused_by_name(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    write_crafted_pickle(evil, marker)
    # The payload is live: a careless loader would run it (checked on a copy with its own marker).
    live_marker, live = tmp_path / "live_marker", tmp_path / "live.pth"
    write_crafted_pickle(live, live_marker)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(live)!r}, weights_only=False)"], check=True)
    assert live_marker.exists()

    with pytest.raises(CheckpointError, match="unverified") as e:  # no digest: never even unpickled
        ckpt_io.load_checkpoint(evil)
    assert str(evil) in str(e.value)
    # Even with a matching digest (an attacker can write one), weights_only refuses the object.
    atomic_write_text(ckpt_io.digest_path(evil), f"{file_sha256(evil)}  evil.pth\n")
    with pytest.raises(CheckpointError, match=r"refusing checkpoint .*evil\.pth.*(system|posix)") as e:
        ckpt_io.load_checkpoint(evil)
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(WeightsError, match=r"evil\.pth"):
        read_weights_file(evil)
    assert not marker.exists()


def test_v2_checkpoint_holds_only_plain_values_and_round_trips_the_rng(tmp_path):
    ckpt_io.seed_everything(5)
    random.random(), np.random.rand(), torch.rand(2)  # noqa: NPY002 (move every stream off its seed)
    path = _save(tmp_path, 3)
    expected = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    ckpt = torch.load(path, weights_only=True)  # loads with the strict unpickler: nothing but plain values

    def plain(x) -> bool:
        if isinstance(x, dict):
            return all(isinstance(k, str | int) and plain(v) for k, v in x.items())
        if isinstance(x, list | tuple):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, bool | int | float | str | torch.Tensor)

    assert plain(ckpt)
    ckpt_io.seed_everything(99)
    ckpt_io.set_rng_state(ckpt_io.load_checkpoint(path)["rng"][0])
    got = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_old_v1_checkpoint_gets_one_line_naming_the_format(tmp_path):
    path = tmp_path / "checkpoints" / "main_training_0000004.pth"
    path.parent.mkdir()
    state = _state(4)
    state["format"] = ckpt_io.OLD_FORMAT
    state["rng"] = [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]  # noqa: NPY002
    torch.save(state, path)
    for with_digest in (False, True):
        if with_digest:
            atomic_write_text(ckpt_io.digest_path(path), f"{file_sha256(path)}  {path.name}\n")
        with pytest.raises(CheckpointError) as e:
            ckpt_io.load_checkpoint(path)
        msg = str(e.value)
        assert len(msg.splitlines()) == 1 and ckpt_io.OLD_FORMAT in msg and str(path) in msg
        assert f"weights={path}" in msg
    # The suggested fix works: its weights load as a plain weights file.
    assert torch.equal(read_weights_file(path)["w"], torch.zeros(4, 3))


def test_damaged_truncated_and_unverified_checkpoints_are_refused(tmp_path):
    for name, damage in [("overwritten", "middle"), ("truncated", "truncate"), ("unverified", "digest")]:
        path = _save(tmp_path / name, 2)
        data = path.read_bytes()
        if damage == "middle":
            mid = len(data) // 2
            path.write_bytes(data[:mid] + os.urandom(4096) + data[mid + 4096 :])
        elif damage == "truncate":
            path.write_bytes(data[: len(data) // 2])
        else:
            ckpt_io.digest_path(path).unlink()
        expected = "unverified" if damage == "digest" else "damaged"
        with pytest.raises(CheckpointError, match=expected):
            ckpt_io.load_checkpoint(path)


def test_auto_resume_takes_the_newest_that_verifies_and_logs_the_skipped(tmp_path, caplog):
    run = tmp_path / "run"
    _save(run, 2, 2.0)
    _save(run, 4, 4.0)
    newest = _save(run, 6, 6.0)
    data = newest.read_bytes()
    newest.write_bytes(data[:-100])  # truncated
    log = logging.getLogger("test_resume")
    with caplog.at_level(logging.WARNING, logger="test_resume"):
        path, ckpt = ckpt_io.find_resumable(run, log)
    assert path.name == "main_training_0000004.pth" and ckpt["iteration"] == 4
    assert torch.equal(ckpt["weights"]["w"], torch.full((4, 3), 4.0))
    assert "main_training_0000006.pth" in caplog.text and "damaged" in caplog.text
    # None usable: an error naming the folder, not a silent fresh start.
    for p in ckpt_io.list_checkpoints(run):
        ckpt_io.digest_path(p).unlink()
    with pytest.raises(CheckpointError, match="none of the 3 checkpoints"):
        ckpt_io.find_resumable(run, log)
    assert ckpt_io.find_resumable(tmp_path / "empty", log) is None


def test_pruning_removes_digests_with_their_checkpoints(tmp_path):
    for it in (1, 2, 3):
        _save(tmp_path, it)
    ckpt_io.prune_checkpoints(tmp_path, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [
        "main_training_0000002.pth",
        "main_training_0000002.pth.sha256",
        "main_training_0000003.pth",
        "main_training_0000003.pth.sha256",
    ]


def test_full_disk_refuses_the_write_and_keeps_the_previous_checkpoint(tmp_path):
    previous = _save(tmp_path, 2, 2.0)
    state = _state(4, 4.0)
    # A meta tensor has a size but no storage: a 4 PB "checkpoint" that cannot fit anywhere, without allocating.
    state["weights"]["huge"] = torch.empty(10**15, device="meta")
    target = ckpt_io.checkpoint_path(tmp_path, "main_training", 4)
    with pytest.raises(DiskFullError) as e:
        ckpt_io.save_checkpoint(state, target)
    msg = e.value.strerror
    assert len(msg.splitlines()) == 1 and "needs about" in msg and "free" in msg and str(target.parent) in msg
    assert not target.exists() and not ckpt_io.digest_path(target).exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [previous.name, previous.name + ".sha256"]
    assert ckpt_io.load_checkpoint(previous)["iteration"] == 2


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = [run / ".config.yaml.abc123.cutie-tmp", run / "checkpoints" / ".main_training_0000004.pth.x1.cutie-tmp"]
    keep = [run / "config.yaml", run / "checkpoints" / "main_training_0000002.pth", run / "notes.cutie-tmp"]
    for p in stale + keep:
        p.write_bytes(b"x")
    removed = remove_stale_temps(run, recursive=True)
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_shared_memory_files_are_named_by_their_creator_and_dead_ones_removed(tmp_path):
    shared = SharedInt(7)
    try:
        name = Path(shared.path).name
        assert name.startswith(f"cutie_{os.getpid()}_"), name
        # Files as a killed run leaves them (a SIGKILL skips every finalizer), in a folder of our own.
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        dead_pid = int(dead.stdout)
        ns = name.split("_")[2]
        shm = tmp_path / "shm"
        shm.mkdir()
        dead_file = shm / f"cutie_{dead_pid}_{ns}_shared_abc"
        live_file = shm / f"cutie_{os.getpid()}_{ns}_shared_def"
        other_ns = shm / f"cutie_{dead_pid}_{int(ns) + 1}_shared_ghi"  # another container's PID space
        unknown = shm / "cutie_shared_old"
        for p in (dead_file, live_file, other_ns, unknown):
            p.write_bytes(b"\0" * 8)
        assert remove_dead_segments(str(shm)) == [dead_file]
        assert not dead_file.exists() and live_file.exists() and other_ns.exists() and unknown.exists()
        assert shared.get() == 7  # a live segment keeps working
    finally:
        shared.close()
    assert not Path(shared.path).exists()


def _cfg(**main) -> dict:
    stage = {"learning_rate": 1e-4, "num_iterations": 6, "enabled": True, "crop_size": [96, 96]}
    return {
        "seed": 1,
        "num_workers": 1,
        "model": {"name": "small", "pixel_encoder": {"type": "resnet18"}},
        "pre_training": dict(stage),
        "main_training": {**stage, **main},
    }


def test_same_run_rules():
    ckpt = {"stage": "main_training", "iteration": 6}
    blocking, tolerated = compare(_cfg(), {**_cfg(learning_rate=1e-3), "num_workers": 4}, "main_training")
    assert blocking == ["main_training.learning_rate: 0.0001 -> 0.001"]
    assert tolerated == ["num_workers: 1 -> 4"]
    assert compare(_cfg(), _cfg(num_iterations=9), "main_training") == ([], ["main_training.num_iterations: 6 -> 9"])
    # Settings of a stage that has not started may change; those of a finished one may not.
    assert compare(_cfg(), _cfg(learning_rate=1e-3), "pre_training")[0] == []
    earlier = _cfg()
    earlier["pre_training"]["num_iterations"] = 9
    assert compare(_cfg(), earlier, "main_training")[0] == ["pre_training.num_iterations: 6 -> 9"]
    other_model = _cfg()
    other_model["model"] = {"name": "base", "pixel_encoder": {"type": "resnet50"}}
    with pytest.raises(ConfigError, match=r"model\.pixel_encoder\.type: 'resnet18' -> 'resnet50'") as e:
        check_same_run(_cfg(), other_model, ckpt, "ck.pth", 6)
    assert "exp_id=<new id> weights=ck.pth" in str(e.value)
    with pytest.raises(ConfigError, match="below the 6 iterations"):
        check_same_run(_cfg(), _cfg(num_iterations=4), ckpt, "ck.pth", 4)


def test_catalogue_entries_no_started_stage_reads_may_differ():
    """A newer catalogue (an added entry) does not block a resume; a changed entry that a started stage reads does."""

    def cfg(extra: dict, davis_interval: int = 2) -> dict:
        data = {
            "pre_training": {"datasets": ["FSS"]},
            "main_training": {"datasets": ["DAVIS"]},
            "image_datasets": {"FSS": {"multiplier": 1}, **extra},
            "vos_datasets": {"DAVIS": {"frame_interval": davis_interval}},
        }
        return {**_cfg(), "data": data}

    old, new = cfg({}), cfg({"SA1B": {"multiplier": 1}})
    assert compare(old, new, "main_training") == ([], ["data.image_datasets.SA1B.multiplier: '<absent>' -> 1"])
    assert compare(old, cfg({}, davis_interval=5), "main_training")[0] == [
        "data.vos_datasets.DAVIS.frame_interval: 2 -> 5"
    ]
    assert compare(old, cfg({}, davis_interval=5), "pre_training")[0] == []  # main training has not started


def test_checkpoint_config_reads_ours_and_refuses_alias_bombs(tmp_path):
    from cutie.config.overrides import compose_config
    from cutie.config.train import parse_train_config

    cfg = parse_train_config(compose_config("train_config", ["exp_id=x", "data=tiny", "model=small"]))
    path = tmp_path / "c.pth"
    assert ckpt_io.checkpoint_config({"config": cfg.resolved_yaml}, path)["main_training"]["num_iterations"] > 0
    # 9 levels of 9 aliases: a few hundred bytes, 9**9 leaves to walk once expanded
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    with pytest.raises(CheckpointError, match=r"c\.pth: its config cannot be read \(aliases"):
        ckpt_io.checkpoint_config({"config": "\n".join(lines)}, path)
    for bad, reason in (
        ("- 1\n", "not a mapping"),
        (b"seed: 1", "not YAML text"),
        ("a: " + "x" * (1 << 20), "characters"),
    ):
        with pytest.raises(CheckpointError, match=reason):
            ckpt_io.checkpoint_config({"config": bad}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        ckpt_io.checkpoint_config({"config": "a: [unclosed"}, path)


def test_start_weights_of_the_other_model_are_refused_with_the_misfit(tmp_path):
    """weights=<Cutie-small file> with model=base: one error naming the file and the model choice, then the count
    and first keys of each kind of misfit (from the one misfit check load_weights uses too)."""
    from cutie.config.overrides import compose_config
    from cutie.config.train import parse_train_config
    from cutie.model import build_network
    from cutie.training.run import _read_start_weights

    small = tmp_path / "small.pth"
    small_cfg = parse_train_config(compose_config("train_config", ["exp_id=x", "data=tiny", "model=small"]))
    torch.save(build_network(small_cfg.model, single_object=False).state_dict(), small)
    assert _read_start_weights(
        parse_train_config(
            compose_config("train_config", ["exp_id=x", "data=tiny", "model=small", f"weights={small}"])
        ),
        ["main_training"],
    )
    cfg = parse_train_config(
        compose_config("train_config", ["exp_id=x", "data=tiny", "model=base", f"weights={small}"])
    )
    with pytest.raises(WeightsError) as err:
        _read_start_weights(cfg, ["main_training"])
    first, *rest = str(err.value).splitlines()
    assert first.startswith(f"weights={small} do not fit model=base") and "model=small|base" in first
    assert any(line.endswith("missing keys (in the network, not in the weights):") for line in rest)
    assert any("shape mismatches:" in line for line in rest)
    assert "  pixel_encoder.res2.0.conv1.weight: file (64, 64, 3, 3) vs network (64, 64, 1, 1)" in rest


_KILLED_OVERWRITE = """
import os, sys, torch
from pathlib import Path
from cutie.training import checkpoint as ckpt_io

path, when = Path(sys.argv[1]), sys.argv[2]
state = lambda v: {"format": ckpt_io.FORMAT, "weights": {"w": torch.full((4, 3), v)}, "iteration": 6}
ckpt_io.save_checkpoint(state(1.0), path)  # the last step's checkpoint
real_replace = os.replace

def replace(src, dst):
    if Path(dst) == path and when == "before":
        os._exit(137)  # killed just before the new checkpoint takes the name
    real_replace(src, dst)
    if Path(dst) == path and when == "after":
        os._exit(137)  # killed just after, before its digest is rewritten

os.replace = replace
ckpt_io.save_checkpoint(state(2.0), path)  # the stage's complete one, under the same name
"""


@pytest.mark.parametrize(("when", "survivor"), [("before", 1.0), ("after", 2.0)])
def test_a_kill_while_a_checkpoint_is_overwritten_leaves_one_that_verifies(tmp_path, when, survivor):
    # The last step's checkpoint is overwritten by the stage's complete one under the same name; a kill between
    # the digest's rename and the checkpoint's must not leave a checkpoint that reads as damaged (auto-resume
    # would fall back to an older one and redo every step since).
    path = ckpt_io.checkpoint_path(tmp_path, "main_training", 6)
    proc = subprocess.run([sys.executable, "-c", _KILLED_OVERWRITE, str(path), when], check=False)
    assert proc.returncode == 137
    ckpt_io.verify_checkpoint(path)
    assert torch.equal(torch.load(path, weights_only=True)["weights"]["w"], torch.full((4, 3), survivor))
    # The next save under that name leaves a digest of one line again, as sha256sum writes it.
    ckpt_io.save_checkpoint({"format": ckpt_io.FORMAT, "weights": {"w": torch.zeros(1)}}, path)
    assert ckpt_io.digest_path(path).read_text() == f"{file_sha256(path)}  {path.name}\n"
