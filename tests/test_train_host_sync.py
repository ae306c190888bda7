"""The stage loop does not wait for the device between log intervals: a real loop (run_stage, the real
progress and non-finite hooks, the fused AdamW a GPU run uses) on a tiny module, with every host read of a tensor
counted and attributed to the step it happens in."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from _helpers import TinyLinear, cpu_stage_context
from hydra import compose, initialize_config_dir

from cutie.config.train import parse_train_config
from cutie.training.context import StageContext
from cutie.training.hooks import Hook, NonFiniteHook, ProgressHook
from cutie.training.loop import run_stage
from cutie.training.plan import StagePlan
from cutie.training.signals import StopSignals

ITERATIONS, LOG_INTERVAL, NAN_STEP = 10, 4, 6  # sync steps: 4, 8 and the last, 10
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


class _Loader:
    """Stateless like the real loaders: batch i derives from i; step NAN_STEP's loss is non-finite."""

    bad_samples = 0

    def iterate(self, start: int):
        for i in range(start, 10**6):
            g = torch.Generator().manual_seed(i)
            scale = float("nan") if i + 1 == NAN_STEP else 1.0
            yield {"rgb": torch.randn(4, 3, generator=g), "scale": torch.tensor(scale)}


def _loss(batch: dict, out: dict) -> dict:
    mse = (out["y"] ** 2).mean() * batch["scale"]
    return {"total_loss": mse + 0.0, "mse": mse}


class _Probe(Hook):
    """First in the list: marks where the loop is (the step, or the hooks after it) and snapshots weights."""

    def __init__(self, phase: list[str], model: torch.nn.Module) -> None:
        self.phase, self.model, self.weights = phase, model, {}

    def before_step(self, ctx: StageContext) -> None:
        self.phase[0] = "step"

    def after_step(self, ctx: StageContext, result) -> None:
        self.phase[0] = "hooks"
        self.weights[ctx.iteration] = self.model.lin.weight.detach().clone()  # a device copy, not a host read


def _ctx(repo_root, tmp_path, model: torch.nn.Module) -> StageContext:
    with initialize_config_dir(config_dir=str(repo_root / "cutie" / "config"), version_base="1.3"):
        cfg = parse_train_config(
            compose(
                "train_config",
                overrides=[
                    f"log_text_interval={LOG_INTERVAL}",
                    "log_image_interval=0",
                    "save_weights_interval=0",
                    "save_checkpoint_interval=0",
                ],
            )
        )
    plan = StagePlan("main_training", ITERATIONS, 4, 4, 4, 1, None, False, 1e-8, False)
    # fused: the implementation a GPU run uses (build_optimizer), which skips a step from a device-side flag
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    return cpu_stage_context(cfg, plan, model, opt, tmp_path, loader=_Loader(), log_name="test_host_sync")


def test_host_reads_only_at_sync_steps(repo_root, tmp_path, monkeypatch, caplog):
    torch.manual_seed(0)
    model = TinyLinear()
    ctx = _ctx(repo_root, tmp_path, model)
    phase = ["setup"]
    reads: list[tuple[str, int, str]] = []  # (phase, ctx.iteration, what)

    def counting(name: str):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, **k):
            if phase[0] in ("step", "hooks"):
                reads.append((phase[0], ctx.iteration, name))
            return original(self, *a, **k)

        return wrapper

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    probe = _Probe(phase, model)
    hooks = [probe, NonFiniteHook(max_consecutive=3), ProgressHook(LOG_INTERVAL)]
    with caplog.at_level(logging.INFO, logger="test_host_sync"):
        run_stage(ctx, hooks, _loss, StopSignals())
    phase[0] = "done"
    monkeypatch.undo()

    assert not [r for r in reads if r[0] == "step"], f"host reads inside the step: {reads}"
    sync_steps = {LOG_INTERVAL, 2 * LOG_INTERVAL, ITERATIONS}
    assert {it for _, it, _ in reads} <= sync_steps, f"host reads on non-sync steps: {reads}"
    assert {it for _, it, _ in reads} == sync_steps  # ...and the hooks did read at every sync step
    assert len(reads) <= 4 * len(sync_steps)  # a few batched reads per sync step, not one per value

    # The non-finite step was skipped on the device (weights and step count untouched) and reported late but exact.
    assert torch.equal(probe.weights[NAN_STEP], probe.weights[NAN_STEP - 1])
    assert not torch.equal(probe.weights[NAN_STEP + 1], probe.weights[NAN_STEP])
    state = next(iter(ctx.optimizer.state.values()))
    assert float(state["step"]) == ITERATIONS - 1
    assert f"iteration {NAN_STEP}: non-finite loss" in caplog.text
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(1, ITERATIONS + 1))
    assert [r["iteration"] for r in records if not r["finite"]] == [NAN_STEP]
    assert all(r["mse"] > 0 for r in records if r["finite"])
    assert "it 4/10 | loss" in caplog.text and "it 10/10 | loss" in caplog.text


def test_logged_losses_equal_the_step_losses(repo_root, tmp_path):
    """metrics.jsonl, written in bursts from device tensors, holds exactly what each step computed."""
    torch.manual_seed(0)
    model = TinyLinear()
    ctx = _ctx(repo_root, tmp_path, model)
    seen: dict[int, float] = {}

    class _Record(Hook):
        def after_step(self, c: StageContext, result) -> None:
            seen[c.iteration] = result.losses["mse"].item()

    run_stage(ctx, [_Record(), NonFiniteHook(3), ProgressHook(LOG_INTERVAL)], _loss, StopSignals())
    records = {r["iteration"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    for it, v in seen.items():
        assert records[it]["mse"] == pytest.approx(v, nan_ok=True, rel=0, abs=0) or it == NAN_STEP


def test_clip_forward_and_losses_read_no_batch_value_on_the_host(monkeypatch):
    """The real network's clip forward and losses, on a batch made by TrainLoader._to_batch (the format of both
    backends), with 1 and 2 micro-batches: no tensor is read on the host (on a GPU each read waits for the work
    queued before it: the object counts come from the batch's host-side `object_counts`)."""
    from cutie.data.loaders.base import TrainLoader
    from cutie.model import build_network, load_model_config
    from cutie.model.losses import LossComputer, LossSettings
    from cutie.training.clip_model import ClipModel
    from cutie.training.step import train_step

    torch.manual_seed(0)
    loader = TrainLoader(None, num_objects=3, batch_size=2, rank=0, world_size=1, device=torch.device("cpu"))
    cls_gt = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    cls_gt[0, :, 4:20, 4:20], cls_gt[0, :, 20:, 20:], cls_gt[1, :, 8:24, 8:24] = 1, 2, 1
    rgb = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    batch = loader._to_batch(rgb, cls_gt, torch.tensor([2, 1]))
    assert batch["object_counts"] == (2, 1) and batch["num_objects"].tolist() == [2, 1]
    net = build_network(load_model_config("small")).train()
    model = ClipModel(net, 3, 0.5)
    losses = LossComputer(LossSettings(64, 3.0, 0.75, 1.0, 1.0))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    reads: list[tuple[str, tuple[int, ...], torch.dtype]] = []

    def counting(name: str):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *a, **k):
            # plan_clip's deep-update coins: 0-d bools drawn from the CPU generator, host tensors on a GPU too
            if (name, self.dim(), self.dtype) != ("__bool__", 0, torch.bool):
                reads.append((name, tuple(self.shape), self.dtype))
            return original(self, *a, **k)

        return wrapper

    for accumulation in (1, 2):
        plan = StagePlan("main_training", 10, 2, 2, 2 // accumulation, accumulation, None, False, 1e-8, False)
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, counting(name))
        result = train_step(model, batch, losses.compute, opt, scaler, plan, 3.0)
        monkeypatch.undo()
        assert not reads, f"host reads in the step ({accumulation} micro-batches): {reads}"
        assert bool(result.finite)
