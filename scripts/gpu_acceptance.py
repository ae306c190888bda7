#!/usr/bin/env python
"""GPU acceptance run: one command, every check a lent GPU machine should make, one JSON and one table.

    python scripts/gpu_acceptance.py OUT_DIR [--budget-s 420] [--cpu-dry-run] [--parts dali,compile,...]

Parts (each guarded: a failure is recorded and the next part runs; a global time budget skips what would not
fit): `dali` (mixed-graph main-clip throughput at 1/2/4 CPU threads vs the torch backend, frames vs the CPU
graph), `train_step` (s/iter and peak memory of the real train_step, small/base, fp16+GradScaler and bf16, DALI
and torch batches, GPU busy fraction), `inference` (scripts/benchmark_inference.py), `fixtures` (the reference
fixtures on CUDA in float32, bf16/fp16 clip forward vs float32), `ddp` (a 2-process DDP step on one GPU),
`train_py` (cutie/train.py on the tiny dataset, both stages, stopped and relaunched), `compile` (`compile: true`:
compile time and s/iter against eager; last, in what the budget leaves; `--parts compile` runs it alone).
Writes OUT_DIR/gpu_acceptance.json and OUT_DIR/gpu_acceptance.md. Installs nothing; needs torch with CUDA, DALI
for the `dali` part (else skipped), nvidia-ml-py or nvidia-smi for the busy fraction (else not measured).
`--cpu-dry-run` runs every code path on the CPU at tiny sizes (CI keeps the script working).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # the benchmark scripts' functions are reused, not copied
PARTS = ("dali", "train_step", "inference", "fixtures", "ddp", "train_py", "compile")
STATUSES = ("ok", "failed", "skipped")


@dataclass(frozen=True)
class Sizes:
    """What each part runs at: the real sizes on a GPU, tiny ones in the dry run."""

    device: str
    models: tuple[str, ...]
    batch: int
    frames: int
    size: int
    warmup: int
    steps: int
    dali_threads: tuple[int, ...]
    loader_clips: int
    inference_hw: tuple[int, int]
    inference_frames: int
    num_points: int
    loader_workers: int  # of the loaders feeding the training step
    # Batches drawn before the clips/s clock starts: more than a loader holds ready when its first batch comes
    # (torch: workers x prefetch factor 2; DALI: its queue and the source workers' batches), so that the timed
    # batches are produced while timed, not handed out from a full queue.
    loader_warmup: int


GPU = Sizes("cuda", ("small", "base"), 4, 8, 480, 3, 8, (1, 2, 4), 128, (480, 854), 40, 12544, 4, 12)
DRY = Sizes("cpu", ("small",), 1, 3, 64, 1, 1, (1,), 1, (64, 96), 4, 256, 0, 2)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, need_s: float, what: str) -> None:
        if self.left() < need_s:
            raise TimeoutError(f"time budget: {self.left():.0f} s left, {what} needs about {need_s:.0f} s")


def last_json_line(fn: Callable[[list[str]], int], argv: list[str]) -> dict:
    """Runs a benchmark script's main(argv) in this process and returns the JSON object it prints last."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = fn(argv)
    if rc:
        raise RuntimeError(f"exit status {rc}: {buf.getvalue()[-500:]}")
    return json.loads(buf.getvalue().strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------- dali


def _main_stage(merge: float = 1.0) -> dict:
    from benchmark_loader import STAGES

    return {**STAGES["main"], "merge_probability": merge}  # merges on: every clip of the throughput is merged


def _loader(data: str, tmp: str, backend: str, device: str, threads: int, batch: int, size: int, frames: int):
    from benchmark_loader import _data_cfg

    from cutie.data.loaders.build import build_train_loader

    stage = {**_main_stage(), "crop_size": [size, size], "seq_length": frames}
    return build_train_loader(
        _data_cfg(data, "main"), stage, stage="main_training", data_root=data, cache_root=tmp, seed=0, rank=0,
        world_size=1, batch_size=batch, num_workers=threads, device=torch.device(device), backend=backend,
        total_iterations=10**6,
    )  # fmt: skip


def _clips_per_s(loader, batches: int, warmup: int) -> float:
    it = loader.iterate(0)
    for _ in range(warmup):
        next(it)
    sync()
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
    sync()
    del b
    return batches * loader.batch_size / (time.perf_counter() - t0)


def part_dali(sz: Sizes, budget: Budget, data: str, tmp: str) -> dict:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        return {"status": "skipped", "reason": f"nvidia.dali is not importable ({e})"}
    out: dict = {"status": "ok", "clip": f"{sz.frames}x{sz.size}x{sz.size}, merges on", "clips_per_s": {}}
    batches = max(1, sz.loader_clips // sz.batch)
    for n in sz.dali_threads:
        budget.check(20, f"DALI with {n} threads")
        loader = _loader(data, tmp, "dali", sz.device, n, sz.batch, sz.size, sz.frames)
        try:
            out["clips_per_s"][f"dali_{'mixed' if sz.device == 'cuda' else 'cpu'}_{n}_threads"] = round(
                _clips_per_s(loader, batches, sz.loader_warmup), 2
            )
        finally:
            loader.close()
    budget.check(20, "the torch loader")
    loader = _loader(data, tmp, "torch", sz.device, max(sz.dali_threads), sz.batch, sz.size, sz.frames)
    try:
        out["clips_per_s"][f"torch_{max(sz.dali_threads)}_workers"] = round(
            _clips_per_s(loader, batches, sz.loader_warmup), 2
        )
        out["torch_slots_page_locked"] = loader.page_locked  # cutie/data/loaders/pinned.py
    finally:
        loader.close()
    # The same 4 samples from the device graph and from the CPU graph (same seed: same recipes).
    budget.check(20, "DALI mixed vs CPU frames")
    first = []
    for device in (sz.device, "cpu"):
        loader = _loader(data, tmp, "dali", device, 1, 4, sz.size, sz.frames)
        try:
            first.append(next(loader.iterate(0)))
        finally:
            loader.close()
    a, b = (x["rgb"].float().cpu() for x in first)  # 4*T*3*H*W in [0, 1]
    err = (a - b).abs()
    out["frames_vs_cpu_graph"] = {
        "samples": int(a.shape[0]),
        "max_abs": float(err.max()),
        "mean_abs": float(err.mean()),
        "masks_equal": bool(torch.equal(first[0]["cls_gt"].cpu(), first[1]["cls_gt"].cpu())),
    }
    # nvJPEG and libjpeg-turbo may round differently by a few levels of 255; the masks must agree exactly.
    if out["frames_vs_cpu_graph"]["mean_abs"] > 2 / 255 or not out["frames_vs_cpu_graph"]["masks_equal"]:
        out["status"] = "failed"
        out["reason"] = "mixed-graph frames differ from the CPU graph's beyond tolerance (mean abs > 2/255)"
    return out


# ----------------------------------------------------------------------------------------------- train_step


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class BusySampler:
    """GPU busy fraction over a window: NVML (nvidia-ml-py) if importable, else nvidia-smi sampling."""

    def __init__(self, device: str) -> None:
        self.device, self.samples, self.source = device, [], None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> BusySampler:
        if self.device != "cuda":
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            self.source = "nvml"

            def poll() -> None:
                while not self._stop.wait(0.02):
                    self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        except Exception:  # noqa: BLE001 (no NVML: fall back to nvidia-smi)
            if shutil.which("nvidia-smi"):
                self.source = "nvidia-smi"
                cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100",
                       "-i", str(torch.cuda.current_device())]  # fmt: skip
                self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._proc is not None:
            self._proc.terminate()
            text = self._proc.communicate()[0]
            self.samples = [float(v) for v in text.split() if v.replace(".", "").isdigit()]

    @property
    def fraction(self) -> float | None:
        return round(statistics.fmean(self.samples) / 100, 3) if self.samples else None


def _train_setup(model: str, amp: str, sz: Sizes, memory_format: str = "contiguous"):
    from benchmark_step import synthetic_batch  # noqa: F401 (imported here to fail early if missing)

    from cutie.model import build_network, load_model_config
    from cutie.model.losses import LossComputer, LossSettings
    from cutie.model.param_groups import param_groups
    from cutie.training.clip_model import ClipModel
    from cutie.training.memory_format import to_memory_format
    from cutie.training.plan import StagePlan

    device = torch.device(sz.device)
    model_cfg = load_model_config(model)
    net = to_memory_format(build_network(model_cfg).to(device).train(), memory_format)  # as cutie/training/run.py
    aux = model_cfg["aux_loss"]
    settings = LossSettings(sz.num_points, 3.0, 0.75, float(aux["sensory"]["weight"]), float(aux["query"]["weight"]))
    losses = LossComputer(settings)  # the main-training stage's settings (train_config.yaml)
    groups = param_groups(net, lr=1e-4, weight_decay=0.001, embed_weight_decay=0.0, backbone_lr_ratio=0.1)
    fp16 = amp == "fp16"
    # fp16 autocast on the CPU takes minutes a step: the dry run keeps the GradScaler path with bf16 kernels
    dtype = torch.float16 if fp16 and device.type == "cuda" else torch.bfloat16
    optimizer = torch.optim.AdamW(groups, lr=1e-4, eps=1e-6, fused=True)  # as build_optimizer on a GPU
    scaler = torch.amp.GradScaler(device.type, init_scale=8192.0, enabled=fp16)
    plan = StagePlan("main_training", 10**6, sz.batch, sz.batch, sz.batch, 1, dtype, fp16, 1e-6, False)
    return net, ClipModel(net, 3, 0.2, memory_format), losses, optimizer, scaler, plan


def _time_steps(
    model: str, amp: str, batches, sz: Sizes, memory_format: str = "contiguous", compile_backend: str | None = None
) -> dict:
    """Times the real train_step as training runs it (cuDNN autotuning on: `cudnn_benchmark: true`, the flag is
    restored after); `compile_backend`: compile the network's steps first, as `compile: true` does
    (cutie/training/compiling.py; compiled in the first step, whose time and loss are reported)."""
    autotune = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        return _timed_steps(model, amp, batches, sz, memory_format, compile_backend)
    finally:
        torch.backends.cudnn.benchmark = autotune


def _timed_steps(model: str, amp: str, batches, sz: Sizes, memory_format: str, compile_backend: str | None) -> dict:
    from cutie.training.step import train_step
    from cutie.training.timing import StepTimer

    torch.manual_seed(0)  # the same weights and random draws in every run (compiled vs eager losses compare)
    net, clip_model, losses, optimizer, scaler, plan = _train_setup(model, amp, sz, memory_format)
    if compile_backend is not None:
        from cutie.training.compiling import compile_network

        compile_network(net, compile_backend)
    cuda = sz.device == "cuda"
    timer = StepTimer(torch.device(sz.device))  # the training loop's step timer: CUDA events on a GPU
    times, spans = [], []
    for i in range(sz.warmup + sz.steps):
        if i == sz.warmup:
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sampler = BusySampler(sz.device).__enter__()
            window = time.perf_counter()
        batch = next(batches)
        if i < sz.warmup:  # warm-up steps one by one: the first step's own time (autotuning, compilation)
            t0 = time.perf_counter()
            result = train_step(clip_model, batch, losses.compute, optimizer, scaler, plan, 3.0)
            sync()
            times.append(time.perf_counter() - t0)
        else:  # timed as training runs: the host never waits for the GPU, each step timed by events
            start = timer.mark()
            train_step(clip_model, batch, losses.compute, optimizer, scaler, plan, 3.0)
            spans.append(timer.since(start))
        if i == 0:
            first_loss = float(result.losses["total_loss"])
    sync()
    wall = time.perf_counter() - window
    sampler.__exit__()
    timed = [span.seconds() for span in spans]
    return {
        "s_per_iter_median": round(statistics.median(timed), 4),
        "s_per_iter_with_data": round(wall / sz.steps, 4),
        "peak_gpu_allocated_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
        "gpu_busy_fraction": sampler.fraction,
        "busy_source": sampler.source,
        "first_step_s": round(times[0], 2),  # cuDNN autotuning, allocator warm-up, compilation
        "first_step_total_loss": first_loss,
    }


MEMORY_FORMATS = ("contiguous", "channels_last")  # train_config.yaml `memory_format`
CLEAR_GAIN = 0.03  # a median s/iter differing by more than 3% is a difference worth a default


def _memory_format_runs(sz: Sizes, budget: Budget, batch: dict, out: dict, failures: list[str]) -> dict:
    """`memory_format` decided here (issue 15): each model's data-free bf16 step (the main-training AMP on
    bf16-capable GPUs), contiguous vs channels_last, with cuDNN autotuning on as training runs it (_time_steps).
    Returns, per model, the speed-up of channels_last (contiguous s/iter / channels_last s/iter), both peak
    memories and the format to make the default."""
    summary: dict = {}
    for model in sz.models:
        timed = {}
        for fmt in MEMORY_FORMATS:
            name = f"{model}_bf16_synthetic_{fmt}"
            try:
                budget.check(45 if model == "base" else 30, name)
                timed[fmt] = out["runs"][name] = _time_steps(model, "bf16", iter(lambda: batch, None), sz, fmt)
            except TimeoutError as e:  # not measured: not a failure of the step
                out["runs"][name] = {"skipped": str(e)}
            except Exception as e:  # noqa: BLE001 (the other format still runs)
                failures.append(name)
                out["runs"][name] = {"error": f"{type(e).__name__}: {e}"[:400]}
            finally:
                if sz.device == "cuda":
                    torch.cuda.empty_cache()
        if len(timed) == len(MEMORY_FORMATS):
            speedup = timed["contiguous"]["s_per_iter_median"] / timed["channels_last"]["s_per_iter_median"]
            summary[model] = {
                "channels_last_speedup": round(speedup, 3),
                "peak_gpu_allocated_gb": {f: timed[f]["peak_gpu_allocated_gb"] for f in MEMORY_FORMATS},
                # Within the noise of 8 timed steps the default stays (fewer layout copies to reason about).
                "default_should_be": "channels_last" if speedup > 1 + CLEAR_GAIN else "contiguous",
            }
    return summary


def part_train_step(sz: Sizes, budget: Budget, data: str, tmp: str) -> dict:
    from benchmark_step import synthetic_batch

    try:
        import nvidia.dali  # noqa: F401

        sources = ["dali", "torch"]
    except ImportError:
        sources = ["torch"]
    out: dict = {"status": "ok", "batch": sz.batch, "clip": f"{sz.frames}x{sz.size}x{sz.size}", "runs": {}}
    failures: list[str] = []
    # First, so that the budget cannot skip it: the measurement that decides the `memory_format` default.
    gen = torch.Generator().manual_seed(0)
    fixed = synthetic_batch(sz.batch, sz.frames, 3, sz.size, torch.device(sz.device), gen)
    out["memory_format"] = _memory_format_runs(sz, budget, fixed, out, failures)
    for model in sz.models:
        for amp in ("fp16", "bf16"):
            for source in sources:
                name = f"{model}_{amp}_{source}"
                try:
                    budget.check(45 if model == "base" else 30, name)
                    loader = _loader(data, tmp, source, sz.device, sz.loader_workers, sz.batch, sz.size, sz.frames)
                    try:
                        out["runs"][name] = _time_steps(model, amp, loader.iterate(0), sz)
                    finally:
                        loader.close()
                except Exception as e:  # noqa: BLE001 (one configuration failing must not hide the others)
                    failures.append(name)
                    out["runs"][name] = {"error": f"{type(e).__name__}: {e}"[:400]}
                finally:
                    if sz.device == "cuda":
                        torch.cuda.empty_cache()
    # The data-free step (benchmark_step's synthetic clip) isolates the step from the loader.
    name = f"{sz.models[0]}_fp16_synthetic"
    try:
        budget.check(30, name)
        out["runs"][name] = _time_steps(sz.models[0], "fp16", iter(lambda: fixed, None), sz)
    except Exception as e:  # noqa: BLE001
        failures.append(name)
        out["runs"][name] = {"error": f"{type(e).__name__}: {e}"[:400]}
    if failures:
        out["status"] = "failed"
        out["reason"] = f"failed: {', '.join(failures)}"
    return out


# ------------------------------------------------------------------------------------------------ inference


def part_inference(sz: Sizes, budget: Budget, data: str, tmp: str) -> dict:
    import benchmark_inference

    out: dict = {"status": "ok", "size": f"{sz.inference_hw[0]}x{sz.inference_hw[1]}", "fps": {}}
    for model in sz.models:
        for amp in (False, True) if sz.device == "cuda" else (False,):
            budget.check(30, f"inference {model}")
            argv = [
                "--model",
                model,
                "--device",
                sz.device,
                "--frames",
                str(sz.inference_frames),
                "--height",
                str(sz.inference_hw[0]),
                "--width",
                str(sz.inference_hw[1]),
                "--warmup",
                "2",
            ]
            r = last_json_line(benchmark_inference.main, argv + (["--amp"] if amp else []))
            out["fps"][f"{model}{'_amp' if amp else ''}"] = round(r["fps"], 2)
            out.setdefault("peak_memory_mb", {})[f"{model}{'_amp' if amp else ''}"] = round(r["peak_memory_mb"])
    return out


# ------------------------------------------------------------------------------------------------- fixtures


@contextlib.contextmanager
def float32_without_tf32():
    """float32 maths inside: no TF32 in cuDNN's convolutions (on by default in PyTorch) nor in matmuls. TF32 keeps
    10 mantissa bits, ~1e-3 of relative error through the network: the fixtures' 1e-4 is for float32 maths."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def part_fixtures(sz: Sizes, budget: Budget, data: str, tmp: str) -> dict:
    from cutie.model.clip_forward import forward_clip
    from cutie.testing.reference_files import load_reference
    from cutie.testing.reference_model import TOLERANCE, TRAINING_FORMAT, _leaves, fixture_network, relative_error

    # the shared folder beside the checkout; on a lent machine the copy gpu_carry.py unpacked
    ref_dir = Path(os.environ.get("CUTIE_REFERENCE") or REPO.parent / "shared" / "reference")
    files = sorted(ref_dir.glob("fixture_*.pt"))
    if not files:
        return {"status": "skipped", "reason": f"no training fixtures in {ref_dir}"}
    device = torch.device(sz.device)
    out: dict = {"status": "ok", "tolerance": TOLERANCE, "float32_rel_error": {}, "amp_rel_error_vs_float32": {},
                 "amp_label_agreement_vs_float32": {}}  # fmt: skip
    # the dry run: the small model's fixture only (the code path, not the coverage)
    for path in files if sz.device == "cuda" else [f for f in files if "_small_" in f.name][:1]:
        budget.check(20, path.name)
        fixture = load_reference(path)
        if fixture.get("format") != TRAINING_FORMAT:
            continue
        net = fixture_network(fixture, ref_dir).to(device)
        ov = fixture["overrides"]
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in fixture["inputs"].items()}

        def run(dtype: torch.dtype | None, net=net, inputs=inputs, ov=ov) -> dict:
            torch.manual_seed(0)
            refs, deep = int(ov["num_ref_frames"]), float(ov["deep_update_prob"])
            amp = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
            with torch.no_grad(), amp:
                o = forward_clip(net, inputs, num_ref_frames=refs, deep_update_prob=deep)
            return {k: v.float().cpu() for k, v in _leaves(o)}

        with float32_without_tf32():
            f32 = run(None)
        worst = max(relative_error(f32[p], ref) for p, ref in _leaves(fixture["outputs"]))
        out["float32_rel_error"][path.name] = worst
        if worst > TOLERANCE:
            out["status"] = "failed"
            out["reason"] = f"{path.name}: float32 relative error {worst:.2e} > {TOLERANCE}"
        amps = [("bf16", torch.bfloat16)] + ([("fp16", torch.float16)] if sz.device == "cuda" else [])  # see above
        for name, dtype in amps:
            low = run(dtype)
            logits = [p for p in f32 if p.startswith("logits")]  # each B*(O+1)*H*W
            err = max(relative_error(low[p], f32[p]) for p in logits)
            out["amp_rel_error_vs_float32"][f"{path.name}:{name}"] = round(err, 5)
            # What segmentation sees: the share of pixels whose label (argmax over background + objects) agrees.
            agree = min(float((low[p].argmax(1) == f32[p].argmax(1)).float().mean()) for p in logits)
            out["amp_label_agreement_vs_float32"][f"{path.name}:{name}"] = round(agree, 5)
    return out


# ------------------------------------------------------------------------------------------------------ ddp


class _DdpWrap(torch.nn.Module):
    """The shape `train_step` expects of a model: a batch dict in, an output dict out, and `no_sync`."""

    def __init__(self, ddp: torch.nn.parallel.DistributedDataParallel) -> None:
        super().__init__()
        self.m = ddp

    def forward(self, b: dict) -> dict:
        return {"y": self.m(b["rgb"])}

    def no_sync(self):
        return self.m.no_sync()


def _ddp_step(rank: int, device: str, result_dir: str) -> None:
    from cutie.training.plan import StagePlan
    from cutie.training.step import train_step
    from cutie.utils.atomic import atomic_torch_save

    dev = torch.device(device)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).to(dev)
    ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[0] if device == "cuda" else None)
    g = torch.Generator().manual_seed(rank)
    batch = {"rgb": torch.randn(4, 8, generator=g).to(dev)}  # different data per rank
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, fused=True)
    scaler = torch.amp.GradScaler(dev.type, enabled=False)
    plan = StagePlan("main_training", 1, 8, 4, 2, 2, None, False, 1e-8, False)
    res = train_step(_DdpWrap(ddp), batch, lambda b, o: {"total_loss": (o["y"] ** 2).mean()}, opt, scaler, plan, 3.0)
    flat = torch.cat([p.detach().flatten() for p in net.parameters()]).cpu()
    # atomic: part_ddp takes a rank file that exists for a finished one, also when the rank died after it
    atomic_torch_save({"params": flat, "finite": bool(res.finite)}, Path(result_dir) / f"rank{rank}.pt")


def _ddp_worker(rank: int, world: int, port: int, device: str, backend: str, result_dir: str) -> None:
    import gc

    import torch.distributed as td

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device == "cuda":
        torch.cuda.set_device(0)  # both ranks on the one GPU (NCCL may refuse that: part_ddp then tries gloo)
    td.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=DDP_ATTEMPT_S))
    try:
        _ddp_step(rank, device, result_dir)
        # Teardown in step: no rank closes its sockets while the other still talks to it, and the DDP reducer
        # (which holds the group) is gone before the group is destroyed, not at interpreter exit.
        td.barrier()
        gc.collect()
    finally:
        td.destroy_process_group()


DDP_ATTEMPT_S = 60.0  # per backend: two spawned ranks importing torch, one tiny step; a hung rank is stopped


def _spawn_ranks(args: tuple, nprocs: int, limit_s: float) -> None:
    """Runs `_ddp_worker(rank, *args)` in `nprocs` spawned processes; raises (as torch's start_processes does) when
    a rank fails, and RuntimeError when they have not all finished within `limit_s` (a rank stuck in the
    communication library, e.g. waiting for a peer that failed its start): the ranks left are killed."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_ddp_worker, args=args, nprocs=nprocs, start_method="spawn", join=False)
    deadline = time.monotonic() + limit_s
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ranks had not finished after {limit_s:.0f} s: stopped")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join(10)


def part_ddp(sz: Sizes, budget: Budget, data: str, tmp: str) -> dict:
    """A 2-process DDP step: the weights must be equal across ranks afterwards. A rank that dies after both
    ranks saved their weights (a crash in the communication library's teardown) is recorded, not a failure of
    the step: the verdict is read from the saved weights."""
    import socket

    budget.check(40, "DDP")
    tried = []
    for backend in ("nccl", "gloo") if sz.device == "cuda" else ("gloo",):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        rd = tempfile.mkdtemp(dir=tmp)
        teardown = None
        try:
            _spawn_ranks((2, port, sz.device, backend, rd), 2, min(DDP_ATTEMPT_S, max(10.0, budget.left() - 5)))
        except Exception as e:  # noqa: BLE001 (NCCL may refuse two ranks on one GPU: gloo next)
            reason = f"{backend}: {type(e).__name__}: {str(e)[-300:]}"
            if not all((Path(rd) / f"rank{i}.pt").is_file() for i in range(2)):
                tried.append(reason)
                continue
            teardown = reason
        r = [torch.load(Path(rd) / f"rank{i}.pt", weights_only=True) for i in range(2)]
        same = bool(torch.equal(r[0]["params"], r[1]["params"]))
        out = {
            "status": "ok" if same and r[0]["finite"] else "failed",
            "backend": backend,
            "ranks": 2,
            "weights_equal_across_ranks": same,
            "tried": tried,
        }
        if teardown is not None:
            out["teardown_error"] = teardown
        return out
    return {"status": "failed", "reason": "no backend worked", "tried": tried}


# -------------------------------------------------------------------------------------------------- train_py


def part_train_py(sz: Sizes, budget: Budget, data: str, tmp: str) -> dict:
    """The product itself on the device: `cutie/train.py` on the tiny dataset, both stages (AMP in main training:
    bf16 on a bf16-capable GPU, else fp16 + GradScaler; the loader `auto` picks: DALI's mixed graph on a GPU),
    stopped at iteration 3 like a preemption (exit 3, a checkpoint) and relaunched to the end, with validation at
    the end of main training."""
    budget.check(90, "train.py end to end")
    tiny = Path(tmp) / "tiny"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_dataset.py"), "--out", str(tiny), "--seed",
                    "0"], check=True, capture_output=True, timeout=120)  # fmt: skip
    iters = 6 if sz.device == "cuda" else 4
    args = [sys.executable, str(REPO / "cutie" / "train.py"), "exp_id=gpu", "model=small", "data=tiny",
            f"data_root={tiny}", f"cache_root={tmp}/cache", f"output_root={tmp}/out", f"device={sz.device}",
            f"num_workers={min(sz.loader_workers, 2)}", "eval_interval=0", "log_text_interval=2",
            "log_image_interval=1000", "model.imagenet_dir=null", f"pre_training.num_iterations={iters}",
            f"main_training.num_iterations={iters}", f"main_training.lr_schedule_steps=[{iters - 1}]",
            "save_checkpoint_interval=2"]  # fmt: skip
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:  # DALI's chunks lost between the device calls: `auto` would pick it on a GPU anyway
        args.append("loader=torch")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    out: dict = {"status": "ok", "iterations_per_stage": iters, "runs": [], "loader_forced": "loader=torch" in args}
    for extra, want in ((["stop_at_iteration=3"], 3), ([], 0)):
        t0 = time.monotonic()
        limit = max(10.0, min(budget.left() - 5, 300.0))
        proc = subprocess.run(args + extra, env=env, capture_output=True, text=True, timeout=limit, cwd=tmp)
        out["runs"].append({"extra": extra, "exit": proc.returncode, "seconds": round(time.monotonic() - t0, 1)})
        if proc.returncode != want:
            out["status"] = "failed"
            out["reason"] = f"train.py {' '.join(extra)} exited {proc.returncode}, expected {want}"
            out["stderr_tail"] = (proc.stdout + proc.stderr)[-1500:]
            return out
    run = Path(tmp) / "out" / "gpu"
    losses = [json.loads(line)["total_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    found = re.search(r"process\(es\), loader (\w+)", (run / "train.log").read_text())  # run.py's start line
    out["loader"] = found.group(1) if found else None
    out["weights"] = sorted(p.name for p in run.glob("*.pth"))
    out["losses_finite"] = bool(torch.isfinite(torch.tensor(losses)).all())
    missing = {"gpu_pre_training_last.pth", "gpu_main_training_last.pth", "best.pth"} - set(out["weights"])
    if missing or not out["losses_finite"]:
        out["status"] = "failed"
        out["reason"] = f"missing {sorted(missing)}" if missing else "non-finite losses"
    return out


# -------------------------------------------------------------------------------------------------- compile


def part_compile(sz: Sizes, budget: Budget, data: str, tmp: str) -> dict:
    """`compile: true` (the network's steps compiled, cutie/training/compiling.py): the compile time (the first
    compiled step less an eager step), s/iter compiled vs eager and the first step's total loss against eager's
    (the same weights and draws), for the first model, bf16, the data-free clip. Last, so that it takes only
    what the other parts left of the budget. Inductor on a GPU; the dry run captures the graphs with dynamo's
    `eager` backend (inductor's code generation takes ~9 min on the 2-core CI machine: docs/model.md)."""
    from benchmark_step import synthetic_batch

    cuda = sz.device == "cuda"
    backend = "inductor" if cuda else "eager"
    budget.check(180 if cuda else 30, f"torch.compile ({backend})")
    model = sz.models[0]
    batch = synthetic_batch(sz.batch, sz.frames, 3, sz.size, torch.device(sz.device), torch.Generator().manual_seed(0))
    eager = _time_steps(model, "bf16", iter(lambda: batch, None), sz)
    try:
        compiled = _time_steps(model, "bf16", iter(lambda: batch, None), sz, compile_backend=backend)
    finally:
        torch._dynamo.reset()  # no compiled graphs kept for what runs after
    a, b = eager["first_step_total_loss"], compiled["first_step_total_loss"]
    return {
        "status": "ok",
        "backend": backend,
        "model": model,
        "compile_s": round(compiled["first_step_s"] - eager["s_per_iter_median"], 1),
        "speedup": round(eager["s_per_iter_median"] / compiled["s_per_iter_median"], 3),
        "first_loss_rel_diff": abs(a - b) / max(abs(a), 1e-12),
        "eager": eager,
        "compiled": compiled,
    }


# ------------------------------------------------------------------------------------------------- the run

RUNNERS = {"dali": part_dali, "train_step": part_train_step, "inference": part_inference,
           "fixtures": part_fixtures, "ddp": part_ddp, "train_py": part_train_py, "compile": part_compile}  # fmt: skip


def write_markdown(report: dict, path: Path) -> None:
    lines = ["# GPU acceptance", "", f"{report['meta']['device']}, torch {report['meta']['torch']}, "
             f"{report['meta']['wall_s']} s{' (CPU dry run)' if report['meta']['cpu_dry_run'] else ''}", "",
             "| part | status | figures |", "| --- | --- | --- |"]  # fmt: skip
    for part in PARTS:
        r = report[part]
        figures = json.dumps({k: v for k, v in r.items() if k != "status"}, sort_keys=True).replace("|", "/")
        lines.append(f"| {part} | {r['status']} | `{figures}` |")
    from cutie.utils.atomic import atomic_write_text

    atomic_write_text(path, "\n".join(lines) + "\n")


def run(out_dir: Path, dry: bool, budget_s: float, parts: tuple[str, ...] = PARTS) -> dict:
    sz = DRY if dry else GPU
    if not dry and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device visible (use --cpu-dry-run to exercise the script on the CPU)")
    if dry:
        torch.set_num_threads(1)
    start = time.monotonic()
    budget = Budget(budget_s)
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="gpu_acceptance_") as tmp:
        data = ""
        try:
            from benchmark_loader import _generate

            data = _generate(tmp, "main")  # 854x480 textured videos, as the loader benchmark
        except Exception as e:  # noqa: BLE001 (parts that need data fail on their own)
            print(f"generating data failed: {e}", file=sys.stderr)
        for part in PARTS:
            if part not in parts:
                report[part] = {"status": "skipped", "reason": "not selected (--parts)"}
                continue
            t0 = time.monotonic()
            try:
                if budget.left() <= 5:
                    raise TimeoutError("time budget spent")
                r = RUNNERS[part](sz, budget, data, tmp)
            except TimeoutError as e:
                r = {"status": "skipped", "reason": str(e)}
            except Exception as e:  # noqa: BLE001 (recorded; the next part runs)
                r = {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:500]}
                r["traceback"] = traceback.format_exc()[-1500:]
            r["seconds"] = round(time.monotonic() - t0, 1)
            report[part] = r
            print(f"{part}: {r['status']} ({r['seconds']} s)", file=sys.stderr, flush=True)
            if sz.device == "cuda":
                torch.cuda.empty_cache()
            _write(report, out_dir, sz, dry, budget_s, start)  # after every part: a kill keeps what ran
        _write(report, out_dir, sz, dry, budget_s, start)  # with the parts not selected after the last one
    return report


def _versions() -> dict[str, str | None]:
    """What the run used (the lent machine's own packages and the carried ones), None where not importable."""
    out: dict[str, str | None] = {}
    for name in ("nvidia.dali", "hydra", "omegaconf", "numpy", "cv2", "torchvision"):
        try:
            out[name] = __import__(name, fromlist=["__version__"]).__version__
        except Exception:  # noqa: BLE001 (missing or broken: recorded as such)
            out[name] = None
    return out


def _write(report: dict, out_dir: Path, sz: Sizes, dry: bool, budget_s: float, start: float) -> None:
    done = {p: report.get(p, {"status": "skipped", "reason": "not reached (the run was cut short)"}) for p in PARTS}
    meta = {
        "device": torch.cuda.get_device_name() if sz.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "packages": _versions(),
        "cpu_dry_run": dry,
        "budget_s": budget_s,
        "wall_s": round(time.monotonic() - start, 1),
    }
    full = {**done, "meta": meta}
    from cutie.utils.atomic import atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "gpu_acceptance.json", json.dumps(full, indent=2) + "\n")
    write_markdown(full, out_dir / "gpu_acceptance.md")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--cpu-dry-run", action="store_true", help="every part on the CPU at tiny sizes")
    p.add_argument("--budget-s", type=float, default=420.0, help="global time budget (the run ends within ~8 min)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)} (default: all)")
    args = p.parse_args(argv)
    parts = tuple(x.strip() for x in args.parts.split(",") if x.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        p.error(f"--parts: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PARTS)}")
    report = run(args.out_dir, args.cpu_dry_run, args.budget_s, parts)
    failed = [k for k in PARTS if report[k]["status"] == "failed"]
    print(f"wrote {args.out_dir / 'gpu_acceptance.json'}; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
