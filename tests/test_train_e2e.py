"""End-to-end training on the generated tiny dataset, on the CPU: one process, two processes (torchrun + gloo),
resume == uninterrupted, strict reloading of the weights files, errors before training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _damage import wrong_size_mask

from cutie.model import build_network
from cutie.model.weights import read_weights_file
from cutie.training import checkpoint as ckpt_io

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "cutie" / "train.py")


def _run(args: list[str], tmp: Path, *, torchrun: int = 0, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}", TRAIN]
    else:
        cmd = [sys.executable, TRAIN]
    proc = subprocess.run(cmd + args, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT\n{proc.stdout[-6000:]}\nSTDERR\n{proc.stderr[-6000:]}")
    return proc


def _common(tiny_data: Path, tmp: Path, exp: str) -> list[str]:
    return [
        f"exp_id={exp}",
        "model=small",
        "data=tiny",
        f"data_root={tiny_data}",
        f"cache_root={tmp / 'cache'}",
        f"output_root={tmp / 'output'}",
        "device=cpu",
        "num_workers=1",
        "log_text_interval=2",
        "log_image_interval=3",
        "eval_interval=0",
        "model.imagenet_dir=null",
    ]


def _losses(run_dir: Path) -> dict[tuple[str, int], float]:
    """The last record of every (stage, iteration): a resumed run re-does the steps after its checkpoint."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[(r["stage"], r["iteration"])] = r["total_loss"]
    return out


def test_single_process_both_stages(tiny_data, tmp_path, repo_root):
    args = _common(tiny_data, tmp_path, "single") + [
        "pre_training.num_iterations=4",
        "main_training.num_iterations=4",
        "main_training.lr_schedule_steps=[3]",
    ]
    proc = _run(args, tmp_path)
    run = tmp_path / "output" / "single"
    for name in (
        "config.yaml",
        "env.json",
        "train.log",
        "metrics.jsonl",
        "single_pre_training_last.pth",
        "single_main_training_last.pth",
    ):
        assert (run / name).is_file(), f"{name} missing; stdout:\n{proc.stdout[-3000:]}"
    assert list((run / "tb").glob("events.out.tfevents.*")), "no TensorBoard events"
    assert list((run / "images").glob("main_training_*.png")), "no picture grids"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    tb.Reload()
    assert [e.step for e in tb.Scalars("main_training/train/total_loss")] == [2, 4]  # log_text_interval=2
    assert [e.step for e in tb.Images("main_training/clip")] == [3, 4]  # log_image_interval=3, and the last
    assert "ETA" in proc.stdout and "it 4/4" in proc.stdout
    losses = _losses(run)
    assert sorted(k[1] for k in losses if k[0] == "main_training") == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    # Weights files are plain official-key state dicts that load strictly into a fresh network.
    import omegaconf

    model_cfg = omegaconf.OmegaConf.load(run / "config.yaml").model
    pre = read_weights_file(run / "single_pre_training_last.pth")
    main = read_weights_file(run / "single_main_training_last.pth")
    single, multi = build_network(model_cfg, single_object=True), build_network(model_cfg, single_object=False)
    single.load_state_dict(pre, strict=True)
    multi.load_state_dict(main, strict=True)
    official = json.loads((repo_root.parent / "shared/reference/official_keys_small.json").read_text())
    assert {k: list(v.shape) for k, v in main.items()} == {k: list(v) for k, v in official.items()}
    assert (run / "best.pth").is_file()  # validation on the tiny val split ran at the end of main training
    # Relaunching the same exp_id finds both stages complete and trains nothing more.
    again = _run(args, tmp_path)
    assert "already" in again.stdout and _losses(run) == losses


def test_resume_equals_uninterrupted(tiny_data, tmp_path):
    base = _common(tiny_data, tmp_path, "x") + [
        "pre_training.enabled=False",
        "main_training.num_iterations=6",
        "main_training.lr_schedule_steps=[4]",
        "save_checkpoint_interval=2",
        "~data.val_dataset",
    ]
    straight = [a.replace("exp_id=x", "exp_id=straight") for a in base]
    _run(straight, tmp_path)
    stopped = [a.replace("exp_id=x", "exp_id=stopped") for a in base]
    proc = _run(stopped + ["stop_at_iteration=3"], tmp_path, check=False)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "simulated preemption" in proc.stdout + proc.stderr
    run_b = tmp_path / "output" / "stopped"
    assert (run_b / "checkpoints" / "main_training_0000003.pth").is_file()
    _run(stopped, tmp_path)  # relaunch: resumes from iteration 3
    a, b = _losses(tmp_path / "output" / "straight"), _losses(run_b)
    assert a == b, f"resumed losses differ:\n{a}\n{b}"
    wa = read_weights_file(tmp_path / "output/straight/straight_main_training_last.pth")
    wb = read_weights_file(run_b / "stopped_main_training_last.pth")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # A hook that fails (the picture of iteration 3 cannot be written: `images` is a file) stops the run after
    # the next step with a checkpoint; once fixed, the relaunch resumes and ends as the uninterrupted run.
    broken = [a.replace("exp_id=x", "exp_id=broken") for a in base]
    run_c = tmp_path / "output" / "broken"
    run_c.mkdir()
    (run_c / "images").write_text("not a folder")
    proc = _run(broken, tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "ImageHook failed at iteration 3: FileExistsError" in out
    assert "training stopped at iteration 4" in out and "relaunch the same command to resume" in out
    assert proc.stderr.strip().splitlines()[-1].startswith("file error: [Errno 17] File exists") and "images" in out
    assert "Traceback" not in out
    assert sorted(p.name for p in (run_c / "checkpoints").glob("*.pth"))[-1] == "main_training_0000004.pth"
    (run_c / "images").unlink()
    proc = _run(broken, tmp_path)
    assert "resuming from" in proc.stdout + proc.stderr and "iteration 4" in proc.stdout + proc.stderr
    assert _losses(run_c) == a
    wc = read_weights_file(run_c / "broken_main_training_last.pth")
    assert all(torch.equal(wa[k], wc[k]) for k in wa)

    # The loader's worker killed mid-run with SIGKILL, as the kernel's out-of-memory killer does: the death comes
    # out between two steps (not inside one), the completed iterations are saved, the run ends with one line
    # (exit 2) naming the worker and the fix, and the relaunch ends as the uninterrupted run.
    killed = [a.replace("exp_id=x", "exp_id=killed") for a in base]
    run_d = tmp_path / "output" / "killed"
    proc = _kill_the_loader_worker_once_training(killed, tmp_path, run_d)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("loader error: data loader worker(s) ended during training: pid "), last
    assert "killed by SIGKILL (usually the kernel's out-of-memory killer" in last and "num_workers (now 1)" in last
    k = _last_checkpoint_iteration(run_d)
    assert f"the data loader failed after iteration {k} (LoaderFailure: " in out and "Traceback" not in out
    assert f"a checkpoint of the {k} completed iterations was saved" in out and 1 <= k < 6
    proc = _run(killed, tmp_path)
    assert f"(sha256 verified): main_training iteration {k}\n" in proc.stdout + proc.stderr
    assert _losses(run_d) == a
    wd = read_weights_file(run_d / "killed_main_training_last.pth")
    assert all(torch.equal(wa[k], wd[k]) for k in wa)


def _last_checkpoint_iteration(run_dir: Path) -> int:
    return int(ckpt_io.load_checkpoint(ckpt_io.latest_checkpoint(run_dir))["iteration"])


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _rank_of(pid: int) -> int:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return int(next(v for v in environ if v.startswith(b"RANK="))[5:])


def _kill_the_loader_worker_once_training(
    args: list[str], tmp: Path, run_dir: Path, *, torchrun: int = 0
) -> subprocess.CompletedProcess:
    """Trains with `args`; once the first step is logged, SIGKILLs the trainer's child processes (its one loader
    worker: the data check's pool has ended by then); under torchrun, those of rank 1 (a rank that does not write
    the checkpoint)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun else []
    proc = subprocess.Popen([sys.executable, *launcher, TRAIN, *args], cwd=tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not ((run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first step"
            time.sleep(0.05)
        trainer = proc.pid
        if torchrun:
            (trainer,) = [pid for pid in _children(proc.pid) if _rank_of(pid) == 1]
        workers = _children(trainer)
        assert len(workers) == 1, workers  # num_workers=1
        os.kill(workers[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


# The trainer, its start-up check of every file signalled once STOP_AT files were checked (0: never), as SLURM's
# time limit, torchrun or a Ctrl-C would. MODE=inline: the trainer itself gets SIGUSR1 and prints how many files
# the check read. MODE=pool: the check runs in a process pool and a worker signals the trainer's process group, as
# torchrun does (the trainer terminates the pool, whose workers end quietly). MODE=torchrun: rank 0 sends SIGTERM to
# torchrun, which passes it on to both ranks (rank 1 waits for rank 0's check in a collective meanwhile).
# MODE=torchrun-late: the same, but rank 1 is still starting up (before its log is set up) when the signal comes,
# so it ends first and rank 0 finds it gone when the check's verdict is shared.
_STOPPED_DURING_THE_CHECK = """
import atexit, os, runpy, signal, sys
from cutie.data.index import frame_check
real, read, mode = frame_check._check_task, [0], os.environ["MODE"]
def check(task):
    if read[0] + 1 == int(os.environ["STOP_AT"]) and os.environ.get("RANK", "0") == "0":
        if mode == "pool":  # a worker left the trainer's group (quiet_pool_worker): it signals the trainer's group
            os.killpg(os.getpgid(os.getppid()), signal.SIGTERM)
        else:
            os.kill(os.getppid(), signal.SIGTERM) if mode != "inline" else os.kill(os.getpid(), signal.SIGUSR1)
    result = real(task)
    read[0] += 1
    return result
check.__module__, check.__qualname__ = frame_check.__name__, "_check_task"  # pickled by name for the pool
frame_check._check_task = check
if mode == "pool":
    frame_check.INLINE_BELOW = 1
elif mode == "inline":
    atexit.register(lambda: print(f"files read: {read[0]}", file=sys.stderr))
elif mode == "torchrun-late" and os.environ["RANK"] == "1" and os.environ["STOP_AT"] != "0":
    import time
    from cutie.training import run
    def late(*args, _setup=run.setup_logging):
        time.sleep(30)  # the signal ends it
        return _setup(*args)
    run.setup_logging = late
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("mode", ["inline", "pool", "torchrun", "torchrun-late"])
def test_a_stop_signal_during_the_data_check_ends_the_run_at_once_and_keeps_the_check(tiny_data, tmp_path, mode):
    """Before the first step there is nothing to save: the run ends with exit 3 (so train.sbatch requeues it) and
    one line, and the relaunch checks only the files the stopped check had not reached."""
    args = _common(tiny_data, tmp_path, "early") + [
        "pre_training.num_iterations=2",
        "main_training.num_iterations=2",
        "main_training.lr_schedule_steps=[1]",
    ]
    if mode.startswith("torchrun"):
        args += ["num_workers=0", "~data.val_dataset"]
    harness = tmp_path / "harness.py"
    harness.write_text(_STOPPED_DURING_THE_CHECK)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO), MODE=mode)
    launcher = [sys.executable] + (
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] * mode.startswith("torchrun")
    )

    def launch(stop_at: int) -> subprocess.CompletedProcess:
        # a session of its own: the pool variant signals its whole process group
        return subprocess.run(
            [*launcher, str(harness), TRAIN, *args],
            cwd=tmp_path,
            env=dict(env, STOP_AT=str(stop_at)),
            capture_output=True,
            text=True,
            timeout=600,
            start_new_session=True,
        )

    stopped = launch(stop_at=8)
    out = stopped.stdout + stopped.stderr
    signal_name = "SIGUSR1" if mode == "inline" else "SIGTERM"
    stop_line = f"training stopped: received {signal_name} before the first step: nothing to save"
    if mode.startswith("torchrun"):
        # torchrun ends with its own exit code and traceback; each rank ends at once with the line and exit 3
        # (before torchrun's grace period would SIGKILL it). Rank 1 may get the signal while it still joins the
        # group, before its log has a rank prefix; rank 0 then finds it gone and still says why it stops.
        assert stopped.returncode != 0 and f"[rank 0] {stop_line}" in out and out.count(stop_line) == 2, out[-4000:]
        assert "internal error" not in out, out[-4000:]
        assert "exitcode: -9" not in out and "SIGKILL" not in out, out[-4000:]
    else:
        assert stopped.returncode == 3, out[-4000:]
        assert stop_line in out, out[-4000:]
        assert "Traceback" not in out, out[-4000:]  # neither the trainer nor a pool worker
    run = tmp_path / "output" / "early"
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
    relaunched = launch(stop_at=0)
    assert relaunched.returncode == 0, (relaunched.stdout + relaunched.stderr)[-4000:]
    assert (run / "early_main_training_last.pth").is_file()
    if mode == "inline":
        assert "files read: 7" in stopped.stderr
        cached = sum(len(json.loads(p.read_text())["files"]) for p in (tmp_path / "cache").glob("data_check/*.json"))
        assert f"files read: {cached - 7}" in relaunched.stderr  # the 7 checked before the stop: not read again


def test_sparse_custom_folder_trains(tiny_data, tmp_path):
    """data=custom on the tiny sparse folder (masks on some frames, partial labels, a wrong-size mask): the
    annotated frames make the clips, the wrong-size mask is left out, training runs end to end."""
    args = [a for a in _common(tiny_data, tmp_path, "sparse") if not a.startswith(("data=", "data_root="))] + [
        "data=custom",
        f"data.custom_root={tiny_data / 'custom-sparse'}",
        f"data_root={tmp_path}",
        "pre_training.enabled=False",
        "main_training.num_iterations=3",
        "main_training.lr_schedule_steps=[2]",
        "main_training.batch_size=2",
        "main_training.seq_length=4",
        "main_training.crop_size=[64,64]",
        "~data.val_dataset",
    ]
    _run(args, tmp_path)
    run = tmp_path / "output" / "sparse"
    losses = _losses(run)
    assert sorted(k[1] for k in losses) == [1, 2, 3] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert (run / "sparse_main_training_last.pth").is_file()


def test_torchrun_two_processes_gloo(tiny_data, tmp_path):
    args = _common(tiny_data, tmp_path, "ddp") + [
        "pre_training.num_iterations=2",
        "main_training.num_iterations=2",
        "main_training.lr_schedule_steps=[1]",
        "num_workers=0",
        "~data.val_dataset",
    ]
    proc = _run(args, tmp_path, torchrun=2)
    run = tmp_path / "output" / "ddp"
    assert (run / "ddp_main_training_last.pth").is_file(), proc.stdout[-3000:]
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    assert "2 process(es)" in proc.stdout
    assert "that local rank 0 had not cached" not in proc.stdout  # rank 1 checked the data against rank 0's cache


def test_a_hook_failing_on_one_rank_stops_both_after_the_next_step_with_a_checkpoint(tiny_data, tmp_path):
    """Pictures are written by rank 0 only: its failure reaches rank 1 with the next step's stop all-reduce, so
    both save the checkpoint together and end (none waits in a collective for the other)."""
    args = _common(tiny_data, tmp_path, "ddpfail") + [
        "pre_training.enabled=False",
        "main_training.num_iterations=5",
        "main_training.lr_schedule_steps=[4]",
        "num_workers=0",
        "~data.val_dataset",
    ]
    run = tmp_path / "output" / "ddpfail"
    run.mkdir(parents=True)
    (run / "images").write_text("not a folder")
    proc = _run(args, tmp_path, torchrun=2, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "ImageHook failed at iteration 3: FileExistsError" in out
    assert "because a hook failed on another process" in out  # rank 1
    assert "file error: [Errno 17] File exists" in out  # rank 0's own error
    assert "internal error" not in out
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pth")) == ["main_training_0000004.pth"]
    assert not (run / "ddpfail_main_training_last.pth").exists()


def test_a_dali_source_worker_killed_mid_run_saves_the_completed_steps(tiny_data, tmp_path):
    """The DALI backend (the default on a GPU; its CPU mode here): a Python source worker SIGKILLed used to leave
    the trainer blocked inside DALI for ever; now the run saves the completed steps, ends with the loader error
    line (exit 2), and the relaunch resumes there and finishes."""
    args = _common(tiny_data, tmp_path, "dalikill") + [
        "loader=dali",
        "pre_training.enabled=False",
        "main_training.num_iterations=6",
        "main_training.lr_schedule_steps=[4]",
        "~data.val_dataset",
    ]
    run = tmp_path / "output" / "dalikill"
    proc = _kill_the_loader_worker_once_training(args, tmp_path, run)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("loader error: data loader worker(s) ended during training: pid "), last
    k = _last_checkpoint_iteration(run)
    assert f"a checkpoint of the {k} completed iterations was saved" in out and 1 <= k < 6, out[-3000:]
    relaunched = _run(args, tmp_path)
    assert f"(sha256 verified): main_training iteration {k}\n" in relaunched.stdout + relaunched.stderr
    assert (run / "dalikill_main_training_last.pth").is_file()


def test_a_loader_worker_killed_on_one_rank_stops_both_with_a_checkpoint(tiny_data, tmp_path):
    """Rank 1's worker dies: its death reaches rank 0 with the stop all-reduce, rank 0 writes the checkpoint of the
    completed steps, both end (none waits for the other), and the relaunch resumes there and finishes."""
    args = _common(tiny_data, tmp_path, "ddpkill") + [
        "pre_training.enabled=False",
        "main_training.num_iterations=6",
        "main_training.lr_schedule_steps=[4]",
        "~data.val_dataset",
    ]
    run = tmp_path / "output" / "ddpkill"
    proc = _kill_the_loader_worker_once_training(args, tmp_path, run, torchrun=2)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    k = _last_checkpoint_iteration(run)
    assert 1 <= k < 6, out[-3000:]
    assert f"the data loader failed after iteration {k} (LoaderFailure: " in out  # rank 1
    assert "loader error: data loader worker(s) ended during training: pid " in out  # rank 1's last line
    assert f"the data loader failed on another process; a checkpoint of the {k} completed iterations" in out  # 0
    assert "internal error" not in out
    relaunched = _run(args, tmp_path, torchrun=2)
    assert f"(sha256 verified): main_training iteration {k}\n" in relaunched.stdout + relaunched.stderr
    assert (run / "ddpkill_main_training_last.pth").is_file()


@pytest.mark.parametrize(
    ("override", "needle"),
    [("data=nope", "data"), ("model=nope", "model"), ("main_training.batch_size=0", "main_training.batch_size")],
)
def test_bad_options_fail_before_training(tmp_path, override, needle):
    proc = _run([f"output_root={tmp_path / 'o'}", "device=cpu", override], tmp_path, check=False)
    assert proc.returncode != 0
    assert needle in proc.stderr + proc.stdout
    assert not list(tmp_path.glob("o/*/metrics.jsonl"))  # nothing was trained


def test_missing_dataset_fails_before_training(tmp_path):
    proc = _run(
        [f"output_root={tmp_path / 'o'}", "device=cpu", f"data_root={tmp_path / 'nowhere'}", "data=tiny"],
        tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert "nowhere" in proc.stderr + proc.stdout


def test_non_divisible_batch_fails_before_training_under_torchrun(tiny_data, tmp_path):
    args = _common(tiny_data, tmp_path, "odd") + ["pre_training.batch_size=3"]
    proc = _run(args, tmp_path, torchrun=2, check=False)
    assert proc.returncode != 0
    assert "pre_training.batch_size=3" in proc.stderr + proc.stdout
    assert not (tmp_path / "output" / "odd" / "metrics.jsonl").exists()


def test_data_problem_under_torchrun_stops_every_rank_with_the_file_named(tiny_data, tmp_path):
    """Local rank 0 checks the data first while the other waits (tests the release on failure: no rank hangs)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "DAVIS", data / "DAVIS")
    shutil.copytree(tiny_data / "static", data / "static")
    bad = sorted((data / "DAVIS/2017/trainval/Annotations/480p/crowd").glob("*.png"))[3]
    wrong_size_mask(bad)
    args = _common(data, tmp_path, "bad") + ["num_workers=0", "~data.val_dataset"]
    proc = _run(args, tmp_path, torchrun=2, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert out.count(str(bad)) >= 2, out[-4000:]  # both ranks name it (rank 1 after rank 0's check)
    assert not (tmp_path / "output" / "bad" / "metrics.jsonl").exists()


def test_too_little_shared_memory_fails_before_training(tiny_data, tmp_path):
    """The loader's batch slots of the largest stage must fit in /dev/shm: said at start, not at main training."""
    args = _common(tiny_data, tmp_path, "shm") + ["num_workers=100000000"]
    proc = _run(args, tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "shared memory" in proc.stderr and "--shm-size" in proc.stderr
    assert not (tmp_path / "output" / "shm" / "metrics.jsonl").exists()


def test_errors_are_one_line_unless_hydra_full_error(tmp_path):
    """No traceback for the user (one line with the fix, exit 2), the full one with HYDRA_FULL_ERROR=1."""
    args = [sys.executable, TRAIN, f"output_root={tmp_path / 'o'}", "device=cuda"]  # no GPU visible in tests
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("CUTIE_DEBUG", None)
    short = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert short.returncode == 2, short.stderr[-2000:]
    assert "Traceback" not in short.stderr and len(short.stderr.strip().splitlines()) == 1
    assert short.stderr.startswith("device error: device=cuda was requested") and "device=cpu" in short.stderr
    full = subprocess.run(
        args, cwd=tmp_path, env={**env, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True, timeout=300
    )
    assert full.returncode != 0 and "Traceback" in full.stderr and "pick_device" in full.stderr


def test_a_bad_validation_file_stops_before_training(tiny_data, tmp_path):
    """The validation set is checked with the training data: a truncated frame of a val video is named at start
    (exit 2), not at the first validation hours in."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)  # 4 MB
    val = data / "DAVIS/2017/trainval"
    video = (val / "ImageSets/2017/val.txt").read_text().split()[0]
    bad = sorted((val / "JPEGImages/480p" / video).glob("*.jpg"))[2]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    proc = _run(_common(data, tmp_path, "badval") + ["num_workers=0"], tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "[d17-val]" in proc.stderr and str(bad) in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "output" / "badval" / "metrics.jsonl").exists()
    # the run's log says why it ended too (it held only the first lines, and a log read later told nothing)
    log = (tmp_path / "output/badval/train.log").read_text()
    assert " E data error: " in log and str(bad) in log.split(" E data error: ")[-1], log[-2000:]


@pytest.mark.parametrize("name", ["train.log", "checkpoints", "tb", "val/main_training_0000004"])
def test_a_symlink_inside_the_run_folder_stops_before_anything_is_written(tmp_path, name):
    """A link planted where the run writes (or prunes old checkpoints) is refused by name before train.log is
    opened: exit 2, one line, nothing created or deleted behind it."""
    run, victim = tmp_path / "o" / "linked", tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.pth").write_bytes(b"x")
    (run / name).parent.mkdir(parents=True, exist_ok=True)
    target = victim / "train.log" if name == "train.log" else victim
    (run / name).symlink_to(target, target_is_directory=target.is_dir())
    proc = _run([f"output_root={tmp_path / 'o'}", "exp_id=linked", "device=cpu", "data=tiny"], tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("path error: ") and str(run / name) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in victim.iterdir()) == ["keep.pth"]
    assert sorted(p.name for p in run.iterdir()) == [name.split("/")[0]]


def test_a_run_folder_that_is_itself_a_symlink_is_used(tmp_path):
    """output/<exp_id> linked to another disk is the user's choice: the run gets past the folder check (here to
    the missing data) and writes its log there."""
    real = tmp_path / "big_disk" / "run"
    real.mkdir(parents=True)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "linked").symlink_to(real, target_is_directory=True)
    args = [f"output_root={tmp_path / 'o'}", "exp_id=linked", "device=cpu", "data=tiny"]
    proc = _run(args + [f"data_root={tmp_path / 'nowhere'}"], tmp_path, check=False)
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "path error" not in proc.stderr, proc.stderr
    assert (real / "train.log").is_file()
