"""Trustworthy runs, end to end (real `python cutie/train.py` runs on the tiny dataset, CPU): a damaged newest
checkpoint is skipped for the previous one and the run still ends bit-identical; a relaunch that would change what
is trained stops before the first step; a larger num_iterations continues a finished stage; crafted files run
nothing; a full disk, too many bad samples and the leftovers of a killed run are handled with one line."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_checkpoint_safety import write_crafted_pickle
from test_train_e2e import TRAIN, _common, _losses

from cutie.model.weights import read_weights_file
from cutie.training import checkpoint as ckpt_io

pytestmark = pytest.mark.slow

MAIN_ONLY = [
    "pre_training.enabled=False",
    "main_training.num_iterations=6",
    "main_training.lr_schedule_steps=[4]",
    "save_checkpoint_interval=2",
    "~data.val_dataset",
]


def _train(
    args: list[str], cwd: Path, *, expect: int = 0, fsize: int | None = None, torchrun: int = 0
) -> subprocess.CompletedProcess:
    """cutie/train.py in one process, or under torchrun with `torchrun` processes (torchrun exits 1 when a process
    fails, and prints its own traceback then)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("HYDRA_FULL_ERROR", None)

    def limit() -> None:  # a file-size limit: writes past it fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun else []
    proc = subprocess.run(
        [sys.executable, *launcher, TRAIN, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        preexec_fn=limit if fsize else None,
    )
    if proc.returncode != expect:
        raise AssertionError(
            f"exit {proc.returncode}, expected {expect}\nSTDOUT\n{proc.stdout[-5000:]}\nSTDERR\n{proc.stderr[-5000:]}"
        )
    if not torchrun:
        assert "Traceback" not in proc.stderr + proc.stdout
    return proc


def _args(tiny_data: Path, tmp: Path, exp: str, *extra: str) -> list[str]:
    return _common(tiny_data, tmp, exp) + MAIN_ONLY + list(extra)


def _copy_run(tmp: Path, src: str, dst: str) -> Path:
    """A copy of a run folder under another exp_id (exp_id may differ on resume): independent tests, one run."""
    shutil.copytree(tmp / "output" / src, tmp / "output" / dst)
    return tmp / "output" / dst


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory) -> Path:
    """An uninterrupted 6-iteration main-training run (checkpoints at 4 and 6); returns the tmp folder."""
    tmp = tmp_path_factory.mktemp("ckres")
    _train(_args(tiny_data, tmp, "straight"), tmp)
    return tmp


def _weights(run: Path, exp: str) -> dict:
    return read_weights_file(run / f"{exp}_main_training_last.pth")


def test_damaged_newest_checkpoint_is_skipped_and_the_run_ends_bit_identical(tiny_data, finished):
    tmp = finished
    _train(_args(tiny_data, tmp, "stopped", "stop_at_iteration=5"), tmp, expect=3)
    run = tmp / "output" / "stopped"
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["main_training_0000004.pth", "main_training_0000005.pth"]
    trunc = _copy_run(tmp, "stopped", "truncated")
    newest = ckpt_io.checkpoint_path(run, "main_training", 5)
    data = newest.read_bytes()
    mid = len(data) // 2
    newest.write_bytes(data[:mid] + os.urandom(4096) + data[mid + 4096 :])  # 4 KB overwritten in the middle
    t = ckpt_io.checkpoint_path(trunc, "main_training", 5)
    t.write_bytes(t.read_bytes()[: len(data) // 3])
    # What a SIGKILLed run leaves behind: writer temporaries, and shared-memory files of a dead process.
    stale = [run / ".config.yaml.k1ll3d.cutie-tmp", run / "checkpoints" / ".main_training_0000006.pth.x.cutie-tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    ns = os.stat("/proc/self/ns/pid").st_ino
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)
    dead_shm = Path(f"/dev/shm/cutie_{dead_pid}_{ns}_shared_testdead")
    live_shm = Path(f"/dev/shm/cutie_{os.getpid()}_{ns}_shared_testlive")  # this test process is alive
    try:
        for p in (dead_shm, live_shm):
            p.write_bytes(b"\0" * 8)
        proc = _train(_args(tiny_data, tmp, "stopped"), tmp)
        assert not dead_shm.exists() and live_shm.exists()
    finally:
        dead_shm.unlink(missing_ok=True)
        live_shm.unlink(missing_ok=True)
    assert not any(p.exists() for p in stale)
    assert "skipped checkpoint main_training_0000005.pth" in proc.stdout and "damaged" in proc.stdout
    assert "resuming from" in proc.stdout and "main_training_0000004.pth" in proc.stdout
    proc_t = _train(_args(tiny_data, tmp, "truncated"), tmp)
    assert "skipped checkpoint main_training_0000005.pth" in proc_t.stdout

    straight = tmp / "output" / "straight"
    a = _weights(straight, "straight")
    for exp, folder in (("stopped", run), ("truncated", trunc)):
        b = _weights(folder, exp)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), exp
        assert _losses(folder) == _losses(straight), exp


def test_changed_settings_stop_before_the_first_step(tiny_data, finished):
    tmp = finished
    run = tmp / "output" / "straight"
    before = {p: (run / p).read_bytes() for p in ("config.yaml", "metrics.jsonl")}
    proc = _train(_args(tiny_data, tmp, "straight", "main_training.learning_rate=0.001"), tmp, expect=2)
    assert "main_training.learning_rate: 0.0001 -> 0.001" in proc.stderr
    assert "exp_id=<new id>" in proc.stderr and "weights=" in proc.stderr
    # A checkpoint of the other model is an error too (never "already complete").
    proc = _train(_args(tiny_data, tmp, "straight", "model=base"), tmp, expect=2)
    assert "model.pixel_encoder.type: 'resnet18' -> 'resnet50'" in proc.stderr
    assert "already complete" not in proc.stdout
    # Same settings, but a file holding another network: named, with the fix.
    ck = ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(run))
    ck["weights"] = {k: v[..., :1] if v.dim() == 4 else v for k, v in ck["weights"].items()}
    other = tmp / "other" / "main_training_0000006.pth"
    ckpt_io.save_checkpoint(ck, other)
    proc = _train(_args(tiny_data, tmp, "other_net", f"checkpoint={other}"), tmp, expect=2)
    assert f"checkpoint {other} holds the weights of another network" in proc.stderr
    assert {p: (run / p).read_bytes() for p in before} == before  # nothing trained, config.yaml untouched
    assert not (tmp / "output" / "other_net" / "config.yaml").exists()


def test_crafted_files_run_nothing_and_are_refused_by_name(tiny_data, finished, tmp_path):
    tmp = finished
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    write_crafted_pickle(evil, marker)
    proc = _train(_args(tiny_data, tmp, "evil_ckpt", f"checkpoint={evil}"), tmp, expect=2)
    assert str(evil) in proc.stderr
    proc = _train(_args(tiny_data, tmp, "evil_weights", f"weights={evil}"), tmp, expect=2)
    assert str(evil) in proc.stderr
    # An auto-resume candidate, with a digest that matches (so it gets as far as the loader).
    planted = ckpt_io.checkpoint_path(tmp / "output" / "evil_auto", "main_training", 9)
    planted.parent.mkdir(parents=True)
    shutil.copy(evil, planted)
    ckpt_io.digest_path(planted).write_text(f"{ckpt_io.file_sha256(planted)}  {planted.name}\n")
    proc = _train(_args(tiny_data, tmp, "evil_auto"), tmp, expect=2)
    assert planted.name in proc.stderr and "refusing" in proc.stderr
    assert not marker.exists()


def test_more_iterations_continue_a_finished_stage(tiny_data, finished):
    tmp = finished
    run = _copy_run(tmp, "straight", "extend")
    proc = _train(_args(tiny_data, tmp, "extend", "main_training.num_iterations=8"), tmp)
    assert "num_iterations 6 -> 8" in proc.stdout and "training continues to 8" in proc.stdout
    assert "already complete" not in proc.stdout and "the data changed" not in proc.stdout
    ck = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(run, "main_training", 8))
    assert ck["iteration"] == 8 and ck["stage_complete"]
    iterations = [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [1, 2, 3, 4, 5, 6, 7, 8]
    assert "num_iterations: 8" in (run / "config.yaml").read_text()
    # The first launch's config is kept beside it: the run directory still says what trained steps 1-6.
    assert "num_iterations: 6" in (run / "config.1.yaml").read_text() and "config.1.yaml" in proc.stdout
    a, b = _weights(tmp / "output" / "straight", "straight"), _weights(run, "extend")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the two extra steps did train


def test_a_resume_on_data_changed_under_the_same_paths_names_it(tiny_data, finished):
    """The resume check compares settings and paths; data that changed under them (here a YouTube-VOS video more,
    in a copy of the data under another data_root) is named with the counts before and after, and training goes
    on."""
    tmp = finished
    run = _copy_run(tmp, "straight", "changed")
    data = tmp / "changed_data"
    shutil.copytree(tiny_data, data)
    for sub in ("JPEGImages", "Annotations"):
        folder = data / "YouTube" / "train" / sub
        shutil.copytree(sorted(folder.iterdir())[0], folder / "zz_added")
    proc = _train(_args(tiny_data, tmp, "changed", "main_training.num_iterations=8", f"data_root={data}"), tmp)
    warning = proc.stdout[proc.stdout.index("the data changed since the checkpoint (iteration 6)") :]
    lines = warning.splitlines()
    assert re.fullmatch(r"  YouTubeVOS: 4 videos, (\d+) frames -> 5 videos, (\d+) frames", lines[1]), lines[:3]
    assert lines[2].startswith("training continues on the data as it is now")  # DAVIS, MOSE: the same data
    ck = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(run, "main_training", 8))
    assert [e["name"] for e in ck["data"]] == ["DAVIS", "YouTubeVOS", "MOSE"] and ck["data"][1]["videos"] == 5


def test_relaunch_with_checkpoint_from_elsewhere_continues_the_runs_own(tiny_data, finished):
    """checkpoint=PATH outside the run starts it; a relaunch with the same command (a requeued job) continues from
    the run's own newer checkpoint instead of starting over from PATH."""
    tmp = finished
    start = ckpt_io.checkpoint_path(tmp / "output" / "straight", "main_training", 4)
    run = _copy_run(tmp, "straight", "relaunch")  # as if started from `start`, now at 6 of 6
    proc = _train(_args(tiny_data, tmp, "relaunch", f"checkpoint={start}"), tmp)
    own = ckpt_io.checkpoint_path(run, "main_training", 6)
    assert f"checkpoint={start} not used: the run has its own newer checkpoint {own}" in proc.stdout
    assert "already complete" in proc.stdout  # nothing retrained from iteration 4
    iterations = [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [1, 2, 3, 4, 5, 6]


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tiny_data, finished):
    tmp = finished
    run = _copy_run(tmp, "straight", "full")
    previous = ckpt_io.latest_checkpoint(run)
    args = _args(tiny_data, tmp, "full", "main_training.num_iterations=8", "save_checkpoint_interval=1")
    proc = _train([*args, "num_workers=0"], tmp, expect=5, fsize=8 << 20)  # the checkpoint at 7 cannot be written
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("out of disk space") and "main_training_0000007.pth" in lines[0]
    assert ckpt_io.latest_checkpoint(run) == previous
    assert ckpt_io.load_checkpoint(previous)["iteration"] == 6
    assert not list(run.rglob("*.cutie-tmp"))


def test_full_disk_under_torchrun_stops_every_rank_and_keeps_the_previous_checkpoint(tiny_data, tmp_path):
    """Two processes: rank 0's checkpoint write fails (EFBIG past the file-size limit, as on a full disk); it says
    so in one line and exits 5; rank 1 gets that verdict with the checkpoint's all-reduce and stops with it (before,
    it trained on and died on the next collective, exit 1, whenever torchrun had not terminated it first); the
    previous checkpoint stays the latest, with no temporary left."""
    base = _args(tiny_data, tmp_path, "fulldist", "num_workers=0")
    _train(base, tmp_path, torchrun=2)  # checkpoints at 4 and 6, without a limit
    run = tmp_path / "output" / "fulldist"
    previous = ckpt_io.latest_checkpoint(run)
    more = [*base, "main_training.num_iterations=8", "save_checkpoint_interval=1"]
    proc = _train(more, tmp_path, expect=1, fsize=8 << 20, torchrun=2)  # torchrun: 1 when a process failed
    out = proc.stdout + proc.stderr
    assert "out of disk space" in out and "main_training_0000007.pth" in out, out[-4000:]
    assert "exitcode  : 5" in out, out[-3000:]  # the rank that could not write exits 5 (out of disk space)
    assert "exitcode  : 1 " not in out  # no rank failed on an internal error (a hang would hit the timeout)
    assert ckpt_io.latest_checkpoint(run) == previous
    assert ckpt_io.load_checkpoint(previous)["iteration"] == 6
    assert not list(run.rglob("*.cutie-tmp"))


@pytest.mark.parametrize("processes", [1, 2])
def test_too_many_bad_samples_mid_run_save_a_checkpoint_and_exit_4(tiny_data, tmp_path, processes):
    """Also under torchrun: the ranks agree on the stop in the step's one host all-reduce, so none waits for the
    other, every rank exits 4 and rank 0 saves the checkpoint."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    # The start-up check reads every frame, so the damage must come after it: a first check fills the cache,
    # then files rot in place (same size, same mtime: the cache still vouches for them), as on a failing disk.
    check = [sys.executable, str(Path(TRAIN).parents[1] / "scripts" / "check_data.py"), "data=tiny",
             f"data_root={data}", f"cache_root={tmp_path / 'cache'}", "pre_training.enabled=False"]  # fmt: skip
    assert subprocess.run(check, capture_output=True, text=True, timeout=600).returncode == 0
    annotations = [data / "DAVIS/2017/trainval/Annotations/480p", data / "YouTube/train/Annotations"]
    for folder in annotations + [data / "MOSE/train/Annotations"]:
        for video in sorted(folder.iterdir())[::2]:  # half of the videos: frame 0 readable, the rest garbage
            for png in sorted(video.glob("*.png"))[1:]:
                st = png.stat()
                png.write_bytes(b"not a png".ljust(st.st_size, b"\0")[: st.st_size])
                os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns))
    args = _common(data, tmp_path, "bad") + [
        "pre_training.enabled=False",
        "main_training.num_iterations=30",
        "save_checkpoint_interval=1000",
        "max_bad_sample_fraction=0.01",
        "~data.val_dataset",
    ]
    if processes > 1:
        args.append("num_workers=0")
    proc = _train(args, tmp_path, expect=4 if processes == 1 else 1, torchrun=processes if processes > 1 else 0)
    assert "max_bad_sample_fraction=0.01" in proc.stdout and "a checkpoint of the" in proc.stdout
    if processes > 1:
        out = proc.stdout + proc.stderr
        assert "exitcode  : 4" in out, out[-3000:]  # torchrun's report: a rank stopped on the bad data
        assert "exitcode  : 1 " not in out  # and none of an internal error (a hang would hit the timeout)
    run = tmp_path / "output" / "bad"
    ck_path = ckpt_io.latest_checkpoint(run)
    ck = ckpt_io.load_checkpoint(ck_path)
    assert not ck["stage_complete"] and 0 <= ck["iteration"] < 30
    assert f"a checkpoint of the {ck['iteration']} completed iterations was saved ({ck_path})" in proc.stdout
