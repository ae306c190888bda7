"""Beyond one launcher on one machine: the same tiny 2-process run (both stages, gloo on the CPU) started by
`srun -n2`, by `sbatch scripts/slurm/train.sbatch`, by an sbatch job that gets its time-limit signal mid-stage (or
during its data check) and requeues itself, and by two torchrun launchers rendezvousing as two nodes, trains to
weights bit-identical to `torchrun --nproc_per_node=2`.

The SLURM tests use a real single-host cluster (scripts/slurm/local_cluster.sh): .ci/run starts it and exports
CUTIE_SLURM_CONF; without that the tests start it themselves (installing slurm-wlm/munge with apt-get as root)
and skip only when the packages are missing and cannot be installed, never under CI=true."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cutie.model.weights import read_weights_file

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "cutie" / "train.py")
CLUSTER = REPO / "scripts" / "slurm" / "local_cluster.sh"
SBATCH = REPO / "scripts" / "slurm" / "train.sbatch"
STAGES = ("pre_training", "main_training")
PACKAGES_MISSING = 77  # local_cluster.sh start: slurm-wlm/munge absent and not installable


def _env(**extra: str) -> dict[str, str]:
    # PYTHONPATH: srun/sbatch carry the submitting environment to the tasks (--export=ALL, the default).
    return dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO), **extra)


def _args(tiny_data: Path, out: Path, exp: str) -> list[str]:
    """The smallest run of tests/test_train_e2e.py's torchrun test, with one more main-training step so that a
    signal after the first main step lands mid-stage."""
    return [
        f"exp_id={exp}",
        "model=small",
        "data=tiny",
        f"data_root={tiny_data}",
        f"cache_root={out / 'cache'}",
        f"output_root={out / 'output'}",
        "device=cpu",
        "num_workers=0",
        "log_text_interval=1",
        "log_image_interval=3",
        "eval_interval=0",
        "model.imagenet_dir=null",
        "pre_training.num_iterations=2",
        "main_training.num_iterations=3",
        "main_training.lr_schedule_steps=[2]",
        "~data.val_dataset",
    ]


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise AssertionError(
            f"{what}: exit {proc.returncode}\nSTDOUT\n{proc.stdout[-5000:]}\nSTDERR\n{proc.stderr[-5000:]}"
        )


def _weights(out: Path, exp: str) -> dict[str, dict[str, torch.Tensor]]:
    return {s: read_weights_file(out / "output" / exp / f"{exp}_{s}_last.pth") for s in STAGES}


def _assert_same_weights(a: dict, b: dict) -> None:
    for stage in STAGES:
        assert a[stage].keys() == b[stage].keys()
        differ = [k for k in a[stage] if not torch.equal(a[stage][k], b[stage][k])]
        assert not differ, f"{stage}: {len(differ)} tensors differ, e.g. {differ[:3]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reference(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The run under `torchrun --standalone --nproc_per_node=2`: what every launcher must reproduce."""
    out = tmp_path_factory.mktemp("torchrun")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", TRAIN]
    proc = subprocess.run(cmd + _args(tiny_data, out, "ref"), cwd=out, env=_env(), capture_output=True, text=True)
    _check(proc, "torchrun")
    return _weights(out, "ref")


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """The environment that points SLURM's commands at the running local cluster."""
    conf = os.environ.get("CUTIE_SLURM_CONF")
    if conf:
        env = _env(SLURM_CONF=conf)
        up = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
        assert up.returncode == 0 and "idle" in up.stdout, f"CUTIE_SLURM_CONF={conf}: no idle node\n{up.stderr}"
        yield env
        return
    if os.environ.get("CI") == "true":
        pytest.fail(
            "CI=true but no SLURM cluster: .ci/run starts scripts/slurm/local_cluster.sh and exports CUTIE_SLURM_CONF"
        )
    ours = subprocess.run(["bash", str(CLUSTER), "status"], capture_output=True).returncode != 0
    start = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True)
    if start.returncode == PACKAGES_MISSING:
        pytest.skip(f"no SLURM here and it cannot be installed: {start.stderr.strip()}")
    assert start.returncode == 0, f"local cluster did not start:\n{start.stderr}"
    conf = start.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=")
    try:
        yield _env(SLURM_CONF=conf)
    finally:
        if ours:  # leave a cluster someone else started running
            subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True)


def _job(env: dict[str, str], job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (JobState, Restarts, Reason, ExitCode, ...)."""
    proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)


def _sbatch(env: dict[str, str], out: Path, args: list[str], python: str = sys.executable) -> str:
    cmd = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
           "--time=15", f"--chdir={out}", f"--output={out}/slurm-%j.out", str(SBATCH), *args]  # fmt: skip
    env = {**env, "CUTIE_REPO": str(REPO), "CUTIE_PYTHON": python}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    _check(proc, "sbatch")
    return proc.stdout.strip().split(";")[0]


def _release_requeued(env: dict[str, str], job_id: str) -> None:
    """SLURM holds a requeued job back for 2 minutes; a real cluster would wait, the test need not. But slurmd
    refuses the new start while the old run's revoked credential is as new as it (1 s granularity): release the
    job once the node has finished the old run (idle again) and a second has passed."""
    for _ in range(60):
        node = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()
        if node == "idle":
            break
        time.sleep(0.5)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True)


def _wait_job(env: dict[str, str], job_id: str, out: Path, timeout_s: float = 600) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = _job(env, job_id)
        state = job["JobState"]
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return job
        if state == "PENDING" and job.get("Reason") == "BeginTime" and int(job.get("Restarts", "0")) > 0:
            _release_requeued(env, job_id)
        time.sleep(0.5)
    log = "".join(p.read_text() for p in out.glob("slurm-*.out"))
    raise AssertionError(f"job {job_id} still {_job(env, job_id)['JobState']} after {timeout_s}s\n{log[-5000:]}")


def _main_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]
    return [r["iteration"] for r in records if r["stage"] == "main_training"]


def test_srun_two_tasks(slurm, reference, tiny_data, tmp_path):
    cmd = ["srun", "-N1", "-n2", "--cpus-per-task=1", sys.executable, TRAIN, *_args(tiny_data, tmp_path, "srun")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=slurm, capture_output=True, text=True, timeout=600)
    _check(proc, "srun")
    assert "2 process(es)" in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "output/srun/env.json").read_text())["world_size"] == 2
    _assert_same_weights(_weights(tmp_path, "srun"), reference)


def test_sbatch_job(slurm, reference, tiny_data, tmp_path):
    job_id = _sbatch(slurm, tmp_path, _args(tiny_data, tmp_path, "batch"))
    job = _wait_job(slurm, job_id, tmp_path)
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log[-5000:]
    assert "2 task(s)" in log and "trainer exited 0" in log
    _assert_same_weights(_weights(tmp_path, "batch"), reference)


def test_sbatch_time_limit_signal_saves_requeues_and_resumes(slurm, reference, tiny_data, tmp_path):
    job_id = _sbatch(slurm, tmp_path, _args(tiny_data, tmp_path, "requeue"))
    run_dir = tmp_path / "output" / "requeue"
    deadline = time.monotonic() + 600
    while not _main_steps(run_dir):  # the first main-training step is done: 2 more to go
        assert time.monotonic() < deadline and _job(slurm, job_id)["JobState"] in ("PENDING", "RUNNING")
        time.sleep(0.2)
    # What --signal=B:USR1@120 does near the time limit: USR1 to the batch shell, which passes it to the tasks.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=slurm, check=True)
    job = _wait_job(slurm, job_id, tmp_path)
    log = (tmp_path / f"slurm-{job_id}.out").read_text()  # --open-mode=append: both runs of the job
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", log[-5000:]
    assert "received SIGUSR1" in log and f"requeueing job {job_id}" in log and "(restart 1)" in log
    saved = re.findall(r"checkpoint saved: \S*main_training_(\d+)\.pth", log)
    assert saved and int(saved[0]) < 3, saved  # the signal's save, mid-stage; the requeued job finished the stage
    assert "resuming from" in log and "trainer exited 0" in log
    _assert_same_weights(_weights(tmp_path, "requeue"), reference)


# The trainer under srun, whose rank 0 asks for the job's time-limit signal (scancel --signal=USR1 --batch, what
# --signal=B:USR1@120 does) while its data check is half-way, in the job's first run only, and waits for it.
_SIGNAL_DURING_THE_CHECK = """
import os, runpy, subprocess, sys, time
from cutie.data.index import frame_check
real, read = frame_check._check_task, [0]
signal_now = os.environ.get("SLURM_RESTART_COUNT", "0") == "0" and os.environ["SLURM_PROCID"] == "0"
def check(task):
    if signal_now and read[0] == 3:
        subprocess.run(["scancel", "--signal=USR1", "--batch", os.environ["SLURM_JOB_ID"]], check=True)
        time.sleep(120)  # the signal comes back through the batch shell and srun, and ends the check here
    result = real(task)
    read[0] += 1
    return result
check.__module__, check.__qualname__ = frame_check.__name__, "_check_task"  # pickled by name for a pool
frame_check._check_task = check
frame_check.INLINE_BELOW = 10**9  # in this process, where the signal lands
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_sbatch_time_limit_signal_during_the_data_check_requeues_and_trains(slurm, reference, tiny_data, tmp_path):
    """Before the first step there is nothing to save: every task ends with exit 3 at once (rank 1 waits for rank
    0's check meanwhile), train.sbatch requeues the job, and the requeued job trains the same weights."""
    harness = tmp_path / "harness.py"
    harness.write_text(_SIGNAL_DURING_THE_CHECK)
    python = tmp_path / "python-with-harness"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(harness))} "$@"\n')
    python.chmod(0o755)
    job_id = _sbatch(slurm, tmp_path, _args(tiny_data, tmp_path, "early"), python=str(python))
    job = _wait_job(slurm, job_id, tmp_path)
    log = (tmp_path / f"slurm-{job_id}.out").read_text()  # --open-mode=append: both runs of the job
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", log[-5000:]
    stop_line = "training stopped: received SIGUSR1 before the first step: nothing to save"
    assert log.count(stop_line) == 2, log[-5000:]  # each task, once
    assert f"requeueing job {job_id}" in log and "(restart 1)" in log and "trainer exited 0" in log
    assert "internal error" not in log and "Traceback" not in log, log[-5000:]
    first_run = log.split("(restart 1)")[0]
    assert "checkpoint saved" not in first_run and "resuming from" not in log
    _assert_same_weights(_weights(tmp_path, "early"), reference)


def test_torchrun_two_nodes(reference, tiny_data, tmp_path):
    """Two launchers, one process each, meeting by c10d rendezvous: the same run as one launcher with two."""
    port = _free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=two-nodes",
               "--nproc_per_node=1", TRAIN, *_args(tiny_data, tmp_path, "nodes")]  # fmt: skip
        log = (tmp_path / f"node{node}.log").open("w")
        procs.append((subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=log, stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        rc = proc.wait(timeout=600)
        log.close()
        assert rc == 0, f"{shlex.join(proc.args)}: exit {rc}\n{Path(log.name).read_text()[-5000:]}"
    env_info = json.loads((tmp_path / "output/nodes/env.json").read_text())
    assert env_info["world_size"] == 2
    _assert_same_weights(_weights(tmp_path, "nodes"), reference)
