"""Distributed state from the launcher's variables (torchrun, SLURM's srun, none), SLURM's compressed forms, the
device a rank picks and the data a rank draws when its local and global ranks differ."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from cutie.data.loaders.base import TrainLoader
from cutie.training.signals import StopSignals
from cutie.utils import dist


@pytest.mark.parametrize(
    ("expr", "hosts"),
    [
        ("node01", ["node01"]),
        ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
        ("gpu[8-11]", ["gpu8", "gpu9", "gpu10", "gpu11"]),
        ("a[1,3],b,c[009-010]", ["a1", "a3", "b", "c009", "c010"]),
        ("rack[1-2]-n[3-4]", ["rack1-n3", "rack1-n4", "rack2-n3", "rack2-n4"]),
        ("n[1-2].cluster", ["n1.cluster", "n2.cluster"]),
    ],
)
def test_expand_hostlist(expr, hosts):
    assert dist.expand_hostlist(expr) == hosts


def test_expand_hostlist_rejects_unreadable_ranges():
    with pytest.raises(ValueError, match="x-y"):
        dist.expand_hostlist("node[x-y]")


@pytest.mark.parametrize(("expr", "counts"), [("4", [4]), ("2(x3),1", [2, 2, 2, 1]), ("1,3(x2)", [1, 3, 3])])
def test_expand_tasks_per_node(expr, counts):
    assert dist.expand_tasks_per_node(expr) == counts


def _srun_task(**over: str) -> dict[str, str]:
    """What srun sets for task 5 of `srun -N2 -n8` (second node), job 123457."""
    env = {
        "SLURM_JOB_ID": "123457",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_NTASKS": "8",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_TASKS_PER_NODE": "4(x2)",
        "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_STEP_NODELIST": "gpu[07-08]",
    }
    env.update(over)
    return env


def test_no_launcher_is_one_process():
    assert dist.read_env({}) == dist.DistState()
    assert not dist.read_env({}).distributed


def test_srun_task_reads_slurm():
    s = dist.read_env(_srun_task())
    assert (s.rank, s.local_rank, s.world_size, s.local_world_size) == (5, 1, 8, 4)
    assert s.launcher == "slurm" and not s.is_main
    assert s.init_method == f"tcp://gpu07:{dist.slurm_port('123457')}"
    assert 20000 <= dist.slurm_port("123457") < 30000


def test_srun_task_uneven_nodes_and_job_fallbacks():
    # Only the job's variables (older srun), 3 tasks on the first node and 1 on the second.
    env = _srun_task(SLURM_PROCID="3", SLURM_LOCALID="0", SLURM_NTASKS="4", SLURM_TASKS_PER_NODE="3,1")
    for k in ("SLURM_STEP_NUM_TASKS", "SLURM_STEP_TASKS_PER_NODE", "SLURM_STEP_NODELIST"):
        del env[k]
    s = dist.read_env(env)
    assert (s.rank, s.local_rank, s.world_size, s.local_world_size) == (3, 0, 4, 1)
    # --ntasks-per-node alone gives the local world size.
    env = _srun_task()
    for k in ("SLURM_TASKS_PER_NODE", "SLURM_STEP_TASKS_PER_NODE"):
        del env[k]
    assert dist.read_env({**env, "SLURM_NTASKS_PER_NODE": "4"}).local_world_size == 4


def test_master_addr_and_port_override_slurm():
    s = dist.read_env(_srun_task(MASTER_ADDR="10.0.0.9", MASTER_PORT="29999"))
    assert s.init_method == "tcp://10.0.0.9:29999"


def test_torchrun_wins_inside_an_allocation():
    env = _srun_task(RANK="2", WORLD_SIZE="4", LOCAL_RANK="0", LOCAL_WORLD_SIZE="2")
    s = dist.read_env(env)
    assert (s.rank, s.local_rank, s.world_size, s.local_world_size) == (2, 0, 4, 2)
    assert s.launcher == "torchrun" and s.init_method is None  # torchrun's env:// rendezvous


def test_batch_script_shell_is_not_a_task():
    # sbatch's own shell carries SLURM_PROCID=0 and the job's task count but is no srun step: a plain
    # `python cutie/train.py` there must train alone, not wait for 7 peers that never come.
    env = _srun_task(SLURM_PROCID="0")
    del env["SLURM_STEP_ID"]
    assert dist.read_env(env) == dist.DistState()
    assert dist.read_env({**env, "SLURM_STEP_ID": "batch"}) == dist.DistState()


def test_device_follows_local_rank_and_data_follows_global_rank():
    s = dist.read_env(_srun_task())  # global rank 5, local rank 1 of 4 on its node
    assert dist.device_index(s, visible=4) == 1
    assert dist.device_index(s, visible=1) == 0  # srun --gpus-per-task: each task sees its own GPU only
    with pytest.raises(RuntimeError, match="local rank 1 has no GPU"):
        dist.device_index(s, visible=0)
    assert dist.pick_device(s, "cpu") == torch.device("cpu")
    # The loader's shard: batch 2 per rank of 8 ranks, iteration 3 -> global indices of rank 5.
    loader = TrainLoader(
        None, num_objects=1, batch_size=2, rank=s.rank, world_size=s.world_size, device=torch.device("cpu")
    )
    assert loader.indices_of(3) == [3 * 16 + 5 * 2, 3 * 16 + 5 * 2 + 1]
    # Every (iteration, rank) pair draws disjoint indices that together cover each global batch once.
    shards = [
        TrainLoader(None, num_objects=1, batch_size=2, rank=r, world_size=8, device=torch.device("cpu")).indices_of(3)
        for r in range(8)
    ]
    assert sorted(i for sh in shards for i in sh) == list(range(48, 64))


def test_sigusr1_is_a_stop_request():
    with StopSignals() as sig:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert sig.requested and "SIGUSR1" in sig.reason
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def test_main_writes_keeps_the_writes_own_error_when_the_verdict_cannot_be_shared(monkeypatch):
    """A full disk on the main process stays DiskFullError (exit 5) when a dead peer breaks the verdict's
    all-reduce; with the write fine, the collective's own error is raised."""
    from cutie.utils.atomic import DiskFullError

    def dead_peer(flags):
        raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(dist, "any_rank", dead_peer)

    def full():
        raise DiskFullError(28, "no space left writing best.pth")

    with pytest.raises(DiskFullError, match="no space left") as info:
        dist.main_writes(True, full, "write best.pth")
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError, match="Connection closed"):
        dist.main_writes(True, lambda: 1, "write best.pth")
    monkeypatch.undo()
    assert dist.main_writes(True, lambda: 7, "write best.pth") == 7 and dist.main_writes(False, lambda: 7, "x") is None


def test_agree_keeps_a_ranks_own_error_when_a_peer_is_gone(monkeypatch):
    """The start-up data check's verdict: a stop signal on the checking rank stays StoppedBeforeTraining (exit 3,
    one line) when the other rank, stopped by the same signal in its own start-up, has already ended and the
    verdict's all-reduce fails (it was "internal error: ... Connection closed by peer")."""
    from cutie.training.signals import StoppedBeforeTraining

    def dead_peer(flags):
        raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(dist, "any_rank", dead_peer)
    with pytest.raises(StoppedBeforeTraining, match="received SIGTERM") as info:
        dist.agree(StoppedBeforeTraining("received SIGTERM before the first step"))
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(RuntimeError, match="Connection closed"):
        dist.agree(None)
    monkeypatch.undo()
    assert dist.agree(None, [True, False]) == [False, True, False]  # one process: the flags as they are
    with pytest.raises(ValueError, match="bad"):
        dist.agree(ValueError("bad"))
