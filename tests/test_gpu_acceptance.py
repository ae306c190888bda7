"""scripts/gpu_acceptance.sh --cpu-dry-run runs every part's code path on the CPU and writes the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
PARTS = ("dali", "train_step", "inference", "fixtures", "ddp", "train_py", "compile")


def test_cpu_dry_run_writes_every_part(repo_root, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [str(repo_root / "scripts" / "gpu_acceptance.sh"), str(tmp_path / "out"), "--cpu-dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads((tmp_path / "out" / "gpu_acceptance.json").read_text())
    for part in PARTS:
        assert report[part]["status"] in ("ok", "failed", "skipped"), part
    # On the CPU every part's path runs (DALI has a CPU graph; DDP runs over gloo): none may fail.
    failed = {p: report[p] for p in PARTS if report[p]["status"] == "failed"}
    assert not failed and proc.returncode == 0, f"{failed}\n{proc.stderr[-3000:]}"
    assert report["meta"]["cpu_dry_run"] is True
    assert report["ddp"]["backend"] == "gloo" and report["ddp"]["weights_equal_across_ranks"]
    runs = report["train_step"]["runs"]
    assert {"small_fp16_torch", "small_bf16_torch", "small_fp16_synthetic"} <= set(runs)
    assert all(r["s_per_iter_median"] > 0 for r in runs.values())
    # The memory_format decision (issue 15): both layouts timed, and a verdict.
    assert {"small_bf16_synthetic_contiguous", "small_bf16_synthetic_channels_last"} <= set(runs)
    verdict = report["train_step"]["memory_format"]["small"]
    assert verdict["channels_last_speedup"] > 0 and verdict["default_should_be"] in ("contiguous", "channels_last")
    assert report["inference"]["fps"]["small"] > 0
    # DALI is a dependency and the fixtures sit beside the checkout: here neither part may be skipped.
    assert report["fixtures"]["status"] == "ok", report["fixtures"]
    assert report["dali"]["status"] == "ok", report["dali"]
    assert all(e < report["fixtures"]["tolerance"] for e in report["fixtures"]["float32_rel_error"].values())
    agreement = report["fixtures"]["amp_label_agreement_vs_float32"]
    assert agreement.keys() == report["fixtures"]["amp_rel_error_vs_float32"].keys()
    assert all(0.0 <= v <= 1.0 for v in agreement.values())
    assert report["dali"]["frames_vs_cpu_graph"]["max_abs"] == 0.0  # the CPU graph against itself: identical
    assert report["meta"]["packages"]["nvidia.dali"] and report["meta"]["packages"]["hydra"]
    # the product's own entry point: stopped at iteration 3 (exit 3), relaunched to the end (exit 0)
    assert [r["exit"] for r in report["train_py"]["runs"]] == [3, 0] and report["train_py"]["losses_finite"]
    assert {"gpu_pre_training_last.pth", "gpu_main_training_last.pth", "best.pth"} <= set(report["train_py"]["weights"])
    # `compile: true`'s steps, captured by dynamo's eager backend here: the same first loss as eager, to the bit
    assert report["compile"]["backend"] == "eager" and report["compile"]["first_loss_rel_diff"] == 0.0
    assert report["compile"]["compiled"]["s_per_iter_median"] > 0
    table = (tmp_path / "out" / "gpu_acceptance.md").read_text()
    assert all(f"| {p} | {report[p]['status']} |" in table for p in PARTS)


def test_parts_selects_what_runs(repo_root, tmp_path):
    script = str(repo_root / "scripts" / "gpu_acceptance.py")
    env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    bad = subprocess.run([sys.executable, script, str(tmp_path / "x"), "--cpu-dry-run", "--parts", "ddp,nccl"],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "--parts: unknown nccl; choose from dali, train_step" in bad.stderr
    assert not (tmp_path / "x").exists()
    proc = subprocess.run([sys.executable, script, str(tmp_path / "out"), "--cpu-dry-run", "--parts", "ddp"],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    report = json.loads((tmp_path / "out" / "gpu_acceptance.json").read_text())
    assert proc.returncode == 0 and report["ddp"]["status"] == "ok", (proc.stderr[-2000:], report["ddp"])
    assert all(report[p] == {"status": "skipped", "reason": "not selected (--parts)"} for p in PARTS if p != "ddp")


def test_ddp_ranks_that_hang_are_stopped(repo_root, tmp_path, monkeypatch):
    """A rank stuck in the process group's start (here: a world of 3 with 2 ranks started, as when NCCL's start
    fails on one rank only) is stopped at the part's limit, so that the next backend still gets its turn."""
    monkeypatch.syspath_prepend(str(repo_root / "scripts"))
    import socket

    import gpu_acceptance

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError, match="had not finished after 20 s: stopped"):
        gpu_acceptance._spawn_ranks((3, port, "cpu", "gloo", str(tmp_path)), 2, 20.0)
    assert not list(tmp_path.glob("rank*.pt"))


def test_fixtures_compare_float32_without_tf32(repo_root, tmp_path, monkeypatch):
    """The float32 pass of the fixtures part runs with TF32 off (cuDNN convolutions use TF32 by default on a GPU,
    ~1e-3 of relative error, ten times the fixtures' tolerance); the AMP passes and what runs after keep the
    settings they had."""
    monkeypatch.syspath_prepend(str(repo_root / "scripts"))
    # where the part looks (CUTIE_REFERENCE, else ../shared/reference beside the checkout)
    ref = os.environ.get("CUTIE_REFERENCE") or str(repo_root.parent / "shared" / "reference")
    if not list(Path(ref).glob("fixture_*.pt")):
        pytest.fail(f"training fixtures not found in {ref} (set CUTIE_REFERENCE or clone beside ../shared)")
    import gpu_acceptance

    from cutie.model import clip_forward

    seen = []
    original = clip_forward.forward_clip

    def recording(*a, **k):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return original(*a, **k)

    monkeypatch.setattr(clip_forward, "forward_clip", recording)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32  # flags, not attributes
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        report = gpu_acceptance.part_fixtures(gpu_acceptance.DRY, gpu_acceptance.Budget(600), "", str(tmp_path))
        assert report["status"] == "ok", report
        assert seen[0] == (False, False) and seen[1:] == [(True, True)]  # float32, then bf16
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_timed_steps_run_as_training_runs_them(repo_root, monkeypatch):
    """train_step's timing: the steps of the timed window follow each other without a host synchronisation (as
    in training, where the GPU busy target applies: each step timed by the loop's own CUDA-event timer), and
    cuDNN autotuning is on as `cudnn_benchmark: true` has it in training, restored afterwards."""
    import dataclasses
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(repo_root / "scripts"))
    import gpu_acceptance

    from cutie.training import step

    events: list[str] = []

    def fake_step(*a, **k):
        events.append(f"step autotune={torch.backends.cudnn.benchmark}")
        return SimpleNamespace(losses={"total_loss": torch.tensor(1.0)})

    monkeypatch.setattr(step, "train_step", fake_step)
    monkeypatch.setattr(gpu_acceptance, "sync", lambda: events.append("sync"))
    sizes = dataclasses.replace(gpu_acceptance.DRY, warmup=2, steps=3)
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        r = gpu_acceptance._time_steps("small", "bf16", iter(lambda: {}, None), sizes)
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = saved
    on = "step autotune=True"
    assert events == [on, "sync", on, "sync", "sync", on, on, on, "sync"]  # warm-up steps one by one, then none
    assert r["s_per_iter_median"] >= 0 and r["first_step_total_loss"] == 1.0


@pytest.mark.parametrize("dali", [True, False])
def test_train_py_takes_the_torch_loader_when_dali_is_missing(repo_root, tmp_path, monkeypatch, dali):
    """A lost DALI chunk (docs/benchmarks.md) skips the DALI figures; train_py then runs with the torch loader
    (`auto` picks DALI on a GPU whether importable or not) instead of failing."""
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(repo_root / "scripts"))
    import gpu_acceptance

    if not dali:
        monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import nvidia.dali raises ImportError
    calls: list[list[str]] = []

    def fake_run(argv, **kw):
        calls.append([str(a) for a in argv])
        return SimpleNamespace(returncode=0 if len(calls) == 1 else 99, stdout="", stderr="")

    monkeypatch.setattr(gpu_acceptance.subprocess, "run", fake_run)
    report = gpu_acceptance.part_train_py(gpu_acceptance.DRY, gpu_acceptance.Budget(600), "", str(tmp_path))
    assert len(calls) == 2 and calls[1][1].endswith("train.py") and report["status"] == "failed"  # stopped there
    assert ("loader=torch" in calls[1]) is (not dali) and report["loader_forced"] is (not dali)
