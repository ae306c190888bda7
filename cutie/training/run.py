"""Runs the enabled stages: pre-training, then main training with the weights handed over in memory.

Everything that can be wrong with the configuration or the data is checked before the first step. A relaunch of
the same exp_id resumes from its newest checkpoint (or `checkpoint=PATH`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from cutie.data.index import validate as validate_data
from cutie.data.loader import build_train_loader, shared_memory_needed
from cutie.data.slots import SharedMemoryTooSmallError, check_shared_memory
from cutie.model import build_network
from cutie.model.losses import LossComputer
from cutie.model.weights import init_from_imagenet, load_weights, read_weights_file
from cutie.training import checkpoint as ckpt_io
from cutie.training import env_info
from cutie.training.clip_model import ClipModel
from cutie.training.context import StageContext
from cutie.training.hooks import (
    CheckpointHook,
    CurriculumHook,
    Hook,
    ImageHook,
    NonFiniteHook,
    ProgressHook,
    ValidationHook,
)
from cutie.training.logs import setup_logging
from cutie.training.loop import StopTraining, run_stage
from cutie.training.optim import build_optimizer, build_scheduler
from cutie.training.plan import STAGES, ConfigError, StagePlan, enabled_stages, plan_stage
from cutie.training.signals import StopSignals
from cutie.utils import dist
from cutie.utils.atomic import atomic_write_text


class _StopAt(Hook):
    """Simulated preemption (`stop_at_iteration=N`), for testing resume: behaves exactly like a SIGTERM."""

    def __init__(self, iteration: int | None, signals: StopSignals) -> None:
        self.iteration, self.signals = iteration, signals

    def before_step(self, ctx: StageContext) -> None:
        if self.iteration is not None and ctx.iteration + 1 == self.iteration:
            self.signals.request(f"stop_at_iteration={self.iteration} reached (simulated preemption)")


def _loader_backend(cfg: DictConfig, device: torch.device) -> str:
    backend = str(cfg.loader)
    if backend == "auto":
        return "dali" if device.type == "cuda" else "torch"
    if backend not in ("dali", "torch"):
        raise ConfigError(f"loader={backend!r}: choose auto, dali or torch")
    return backend


def _check_shared_memory(cfg: DictConfig, stages: list[str], plans: dict, state, device: torch.device) -> None:
    """The largest stage's loader slots, for every rank on this node, must fit in /dev/shm (checked now rather
    than when main training starts hours later)."""
    per_rank = max(
        shared_memory_needed(
            cfg[s],
            backend=_loader_backend(cfg, device),
            batch_size=plans[s].per_rank_batch,
            num_workers=int(cfg.num_workers),
        )
        for s in stages
    )
    try:
        check_shared_memory(per_rank * state.local_world_size)
    except SharedMemoryTooSmallError as e:
        raise ConfigError(str(e)) from None


def _find_resume(cfg: DictConfig, run_dir: Path, log) -> dict | None:
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
    else:
        path = ckpt_io.latest_checkpoint(run_dir)
        if path is None:
            return None
    ckpt = ckpt_io.load_checkpoint(path)
    log.info(
        f"resuming from {path}: {ckpt['stage']} iteration {ckpt['iteration']}"
        f"{' (stage complete)' if ckpt.get('stage_complete') else ''}"
    )
    return ckpt


def _initial_weights(net, stage: str, cfg: DictConfig, previous: dict | None, resume: dict | None, log) -> None:
    """Same-stage resume > weights handed over from the previous stage > weights= > ImageNet > scratch."""
    if resume is not None and resume["stage"] == stage:
        load_weights(net, resume["weights"])
    elif previous is not None:
        load_weights(net, previous)  # widens single -> multi-object where needed
        log.info(f"[{stage}] starting from the previous stage's weights")
    elif cfg.weights:
        load_weights(net, read_weights_file(cfg.weights))
        log.info(f"[{stage}] starting from weights={cfg.weights}")
    else:
        init_from_imagenet(net, cfg.model.get("imagenet_dir"))


def _build_stage(cfg, plan: StagePlan, state, device, run_dir, log, writer, resume, previous, later_iterations):
    stage = plan.stage
    stage_cfg = cfg[stage]
    # The same seed at the start of each stage (offset by rank so ranks differ where they should).
    ckpt_io.seed_everything(int(cfg.seed) + state.rank)
    net = build_network(cfg.model, single_object=plan.single_object).to(device)
    _initial_weights(net, stage, cfg, previous, resume, log)
    model = ClipModel(net, int(stage_cfg.num_ref_frames), float(stage_cfg.deep_update_prob))
    if state.distributed:
        # Some parameters (e.g. the deep update) are unused in some iterations.
        model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
            broadcast_buffers=False,
        )
    optimizer = build_optimizer(net, stage_cfg, plan.adam_eps)
    scheduler = build_scheduler(optimizer, stage_cfg)
    scaler = torch.amp.GradScaler(device.type, init_scale=8192.0, enabled=plan.use_grad_scaler)
    loader = build_train_loader(
        cfg.data,
        stage_cfg,
        stage=stage,
        data_root=str(cfg.data_root),
        cache_root=str(cfg.cache_root),
        seed=int(cfg.seed),
        rank=state.rank,
        world_size=state.world_size,
        batch_size=plan.per_rank_batch,
        num_workers=int(cfg.num_workers),
        device=device,
        backend=_loader_backend(cfg, device),
        total_iterations=plan.num_iterations,
        max_bad_fraction=float(cfg.max_bad_sample_fraction),
    )
    ctx = StageContext(
        cfg=cfg,
        plan=plan,
        dist=state,
        device=device,
        run_dir=run_dir,
        net=net,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        loader=loader,
        log=log,
        writer=writer,
        later_stage_iterations=later_iterations,
    )
    return ctx


def run_training(cfg: DictConfig) -> None:
    state, device = dist.init(str(cfg.device))
    try:
        _run(cfg, state, device)
    finally:
        dist.shutdown()


def _run(cfg: DictConfig, state, device: torch.device) -> None:
    run_dir = Path(cfg.output_root) / str(cfg.exp_id)
    log = setup_logging(run_dir, state)
    # Everything checkable is checked before the first step.
    stages = enabled_stages(cfg)
    plans = {s: plan_stage(cfg, s, state.world_size, device) for s in stages}
    _loader_backend(cfg, device)
    if cfg.weights and not Path(cfg.weights).is_file():
        raise ConfigError(f"weights={cfg.weights}: no such file")
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    for s in stages:  # every stage's datasets, so main-training data problems surface before pre-training
        validate_data(
            data_cfg, str(cfg.data_root), seq_length=int(cfg[s].seq_length), stages=[s], cache_root=str(cfg.cache_root)
        )
    _check_shared_memory(cfg, stages, plans, state, device)
    resume = _find_resume(cfg, run_dir, log)
    if resume is not None and resume.get("world_size", state.world_size) != state.world_size:
        log.warning(
            f"checkpoint was written with {resume['world_size']} processes, now {state.world_size}: "
            "training continues, but random states are re-seeded, so it is not bit-identical"
        )

    writer = None
    if state.is_main:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write_text(run_dir / "env.json", json.dumps(env_info.collect(state.world_size), indent=2))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tb"))
        log.info(f"run directory: {run_dir.resolve()} (config.yaml, env.json, train.log, tb/, images/)")
        log.info(f"device {device}, {state.world_size} process(es), loader {_loader_backend(cfg, device)}")

    previous: dict | None = None
    try:
        with StopSignals() as signals:
            for i, stage in enumerate(stages):
                plan = plans[stage]
                if resume is not None and STAGES.index(resume["stage"]) > STAGES.index(stage):
                    log.info(f"[{stage}] already finished in the resumed run: skipped")
                    continue
                if resume is not None and resume["stage"] == stage and resume.get("stage_complete"):
                    log.info(f"[{stage}] already complete in {resume['stage']} checkpoint: handing its weights on")
                    previous, resume = resume["weights"], None
                    continue
                later = sum(plans[s].num_iterations for s in stages[i + 1 :])
                ctx = _build_stage(cfg, plan, state, device, run_dir, log, writer, resume, previous, later)
                hooks: list[Hook] = [
                    _StopAt(cfg.get("stop_at_iteration"), signals),
                    CurriculumHook(),
                    NonFiniteHook(int(cfg.max_nonfinite_steps)),
                    ProgressHook(int(cfg.log_text_interval)),
                    ImageHook(int(cfg.log_image_interval)),
                    ValidationHook(),
                ]
                hooks.append(CheckpointHook(lambda hs=tuple(hooks): {type(h).__name__: h.state_dict() for h in hs}))
                if resume is not None and resume["stage"] == stage:
                    _restore(ctx, hooks, resume, state)
                    resume = None
                ctx.run_start_iteration = ctx.iteration
                loss = LossComputer(cfg[stage], cfg.model)
                try:
                    run_stage(ctx, hooks, loss.compute, signals)
                finally:
                    ctx.loader.close()
                previous = {k: v.detach().cpu() for k, v in ctx.net.state_dict().items()}
                log.info(f"[{stage}] done: weights {run_dir / f'{cfg.exp_id}_{stage}_last.pth'}")
    except StopTraining as e:
        log.warning(f"training stopped: {e}")
        raise SystemExit(3) from None
    finally:
        if writer is not None:
            writer.close()


def _restore(ctx: StageContext, hooks: list[Hook], ckpt: dict, state) -> None:
    ctx.optimizer.load_state_dict(ckpt["optimizer"])
    ctx.scheduler.load_state_dict(ckpt["scheduler"])
    ctx.scaler.load_state_dict(ckpt["scaler"])
    ctx.iteration = int(ckpt["iteration"])
    states = ckpt.get("hooks", {})
    for h in hooks:
        h.load_state_dict(states.get(type(h).__name__, {}))
    rng = ckpt["rng"]
    if len(rng) == state.world_size:
        ckpt_io.set_rng_state(rng[state.rank])
