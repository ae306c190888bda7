"""Runs the enabled stages: pre-training, then main training with the weights handed over in memory.

`run_training` is a fixed sequence; each step finishes before the next starts:
1. plan: derive every stage's per-rank values (the config itself was parsed and checked in the entry point);
2. check the inputs: the weights file, every frame of every stage's data, shared memory for the loaders;
3. plan the resume: the newest checkpoint that verifies (or `checkpoint=PATH`), which must continue the same run
   (cutie/training/resume.py), and `weights=` read and checked against the network;
4. open the run directory: only now, after every check passed, `config.yaml` (what actually runs; an earlier
   launch's different one is kept as `config.<k>.yaml`), `env.json` and TensorBoard are written;
5. train the stages, each with the hooks of `build_hooks` (saving a checkpoint before any stop).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

from cutie.config.model import CONFIG_DIR as MODEL_CONFIG_DIR
from cutie.config.model import ModelSpec, load_model_config
from cutie.config.train import STAGES, TrainConfig
from cutie.data.index.datasets import validate as validate_data
from cutie.data.index.fingerprint import data_changes, index_fingerprint
from cutie.data.loaders.build import build_train_loader, shared_memory_needed
from cutie.data.loaders.slots import SharedMemoryTooSmallError, check_shared_memory
from cutie.data.sampling.source import remove_dead_segments
from cutie.model import build_network
from cutie.model.losses import LossComputer, LossSettings
from cutie.model.weights import (
    WeightsError,
    init_from_imagenet,
    load_weights,
    read_weights_file,
    strip_wrapper_prefixes,
    weights_misfit,
    widen_single_to_multi,
)
from cutie.training import checkpoint as ckpt_io
from cutie.training import env_info
from cutie.training.checkpoint import CheckpointError
from cutie.training.clip_model import ClipModel
from cutie.training.compiling import compile_network
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
from cutie.training.memory_format import contiguous_copy, load_optimizer_state, to_memory_format
from cutie.training.optim import build_optimizer, build_scheduler
from cutie.training.plan import ConfigError, StagePlan, enabled_stages, plan_stage
from cutie.training.resume import check_same_run
from cutie.training.signals import StoppedBeforeTraining, StopSignals
from cutie.training.tb_events import EventWriter
from cutie.utils import dist
from cutie.utils.atomic import atomic_write_text, remove_stale_temps
from cutie.utils.paths import PathEscapeError, check_output_folder, is_inside


@dataclass(frozen=True)
class ResumePlan:
    """Where the run starts: a verified checkpoint of the same run, and/or weights= (read and checked)."""

    path: Path | None = None
    checkpoint: dict | None = None
    start_weights: dict | None = None


class _StopAt(Hook):
    """Simulated preemption (`stop_at_iteration=N`), for testing resume: behaves exactly like a SIGTERM."""

    def __init__(self, iteration: int | None, signals: StopSignals) -> None:
        self.iteration, self.signals = iteration, signals

    def before_step(self, ctx: StageContext) -> None:
        if self.iteration is not None and ctx.iteration + 1 == self.iteration:
            self.signals.request(f"stop_at_iteration={self.iteration} reached (simulated preemption)")


def _loader_backend(cfg: TrainConfig, device: torch.device) -> str:
    backend = cfg.runtime.loader
    if backend == "auto":
        return "dali" if device.type == "cuda" else "torch"
    return backend


def _check_shared_memory(cfg: TrainConfig, stages: list[str], plans: dict, state, device: torch.device) -> None:
    """The largest stage's loader slots, for every rank on this node, must fit in /dev/shm (checked now rather
    than when main training starts hours later)."""
    per_rank = max(
        shared_memory_needed(
            cfg.stage(s),
            backend=_loader_backend(cfg, device),
            batch_size=plans[s].per_rank_batch,
            num_workers=cfg.runtime.num_workers,
        )
        for s in stages
    )
    try:
        check_shared_memory(per_rank * state.local_world_size)
    except SharedMemoryTooSmallError as e:
        raise ConfigError(str(e)) from None


def _find_resume(cfg: TrainConfig, run_dir: Path, log) -> tuple[Path, dict] | None:
    """The newest verified checkpoint of the run, else checkpoint=PATH (verified, or an error naming it).

    A checkpoint=PATH outside the run is where the run started from: once the run has checkpoints of its own, a
    relaunch with the same command (a requeued SLURM job, a restarted container) continues from them instead of
    starting over from PATH. A PATH inside the run folder is a deliberate roll-back and always wins."""
    if not cfg.run.checkpoint:
        return ckpt_io.find_resumable(run_dir, log)
    path = Path(cfg.run.checkpoint)
    if not is_inside(run_dir, path):
        try:
            own = ckpt_io.find_resumable(run_dir, log)
        except CheckpointError as e:  # none of the run's own is usable: PATH is the way back in
            log.warning(f"{e}; using checkpoint={path}")
            own = None
        if own is not None:
            log.info(f"checkpoint={path} not used: the run has its own newer checkpoint {own[0]}")
            return own
    return path, ckpt_io.load_checkpoint(path)


def _check_resume(cfg: TrainConfig, path: Path, ckpt: dict, plans: dict, log) -> None:
    """The relaunch must continue the checkpoint's run (same settings, same network); raises before any step."""
    stage, done = str(ckpt["stage"]), int(ckpt["iteration"])
    old = ckpt_io.checkpoint_config(ckpt, path)
    try:
        old_total = int(old[stage]["num_iterations"])
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: its config has no {stage}.num_iterations ({type(e).__name__}: "
                              f"{e})") from None  # fmt: skip
    new = yaml.safe_load(cfg.resolved_yaml)
    plan = plans.get(stage)
    for line in check_same_run(old, new, ckpt, str(path), None if plan is None else plan.num_iterations):
        log.info(f"resume: allowed difference {line}")
    # Equal model settings should mean equal shapes; a file from elsewhere may still hold another network.
    with torch.device("meta"):
        net = build_network(cfg.model, single_object=cfg.stage(stage).num_objects == 1)
    misfit = weights_misfit(net.state_dict(), ckpt["weights"])
    if misfit:
        raise CheckpointError(
            f"checkpoint {path} holds the weights of another network than model={cfg.model.name}; resume it with "
            "its own model setting, or start a new run (exp_id=<new id>)\n" + "\n".join(misfit)
        )
    if plan is not None and plan.num_iterations != old_total:
        curriculum = ""
        if stage == "main_training":
            fractions = cfg.stage(stage).max_skip_schedule_fraction
            curriculum = (
                "; the max-skip curriculum's switch points are fractions of the new total (iterations "
                f"{[round(plan.num_iterations * f) for f in fractions]})"
            )
        log.info(
            f"[{stage}] num_iterations {old_total} -> {plan.num_iterations} (checkpoint at {done}"
            f"{', stage complete' if ckpt.get('stage_complete') else ''}): training continues to "
            f"{plan.num_iterations}; lr_schedule_steps stay at absolute iterations "
            f"{list(cfg.stage(stage).lr_schedule_steps)}{curriculum}"
        )


def _models_that_fit(cfg: TrainConfig, weights: dict, single_object: bool) -> list[str]:
    """The other model= configs whose network these weights fit: a misfit is usually the wrong model= (a base
    file under model=small), and naming the right one is the fix."""
    fits = []
    for name in sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml")):
        if name == cfg.model.name:
            continue
        try:
            spec = ModelSpec.from_config(load_model_config(name))
        except ConfigError:
            continue
        with torch.device("meta"):
            target = build_network(spec, single_object=single_object).state_dict()
        if not weights_misfit(target, widen_single_to_multi(weights, target, init="zeros")):
            fits.append(name)
    return fits


def _read_start_weights(cfg: TrainConfig, stages: list[str]) -> dict:
    """weights=PATH, read safely and checked against the first stage's network now (not after writing)."""
    weights = strip_wrapper_prefixes(read_weights_file(str(cfg.run.weights)))
    with torch.device("meta"):
        target = build_network(cfg.model, single_object=cfg.stage(stages[0]).num_objects == 1).state_dict()
    misfit = weights_misfit(target, widen_single_to_multi(weights, target, init="zeros"))
    if misfit:
        fits = _models_that_fit(cfg, weights, cfg.stage(stages[0]).num_objects == 1)
        fix = f" They fit model={fits[0]}: pass model={fits[0]}." if fits else ""
        raise WeightsError(
            f"weights={cfg.run.weights} do not fit model={cfg.model.name}: is the model=small|base choice the one "
            f"they were trained with?{fix}\n" + "\n".join(misfit)
        )
    return weights


def _initial_weights(net, stage: str, cfg: TrainConfig, previous: dict | None, resume: dict | None, start, log) -> None:
    """Same-stage resume > weights handed over from the previous stage > weights= > ImageNet > scratch."""
    if resume is not None and resume["stage"] == stage:
        load_weights(net, resume["weights"])
    elif previous is not None:
        load_weights(net, previous)  # widens single -> multi-object where needed
        log.info(f"[{stage}] starting from the previous stage's weights")
    elif start is not None:
        load_weights(net, start)
        log.info(f"[{stage}] starting from weights={cfg.run.weights}")
    else:
        init_from_imagenet(net, cfg.model.imagenet_dir)


def _check_run_dir(run_dir: Path, state) -> None:
    """Before anything is written (train.log first): no symlink inside the run folder, where the run writes
    (logs, tb/, images/, val/, config.yaml, weights) and prunes (checkpoints/). The folder itself may be a link.
    The first process of each node looks (every rank writes its share of validation masks, and a node-local
    output_root is another folder on each node); every rank gets the verdict, so none waits for one that stopped."""
    error = None
    if state.local_rank == 0:
        try:
            check_output_folder(run_dir, run_dir)
        except PathEscapeError as e:
            error = e
    if dist.agree(error)[0]:
        raise PathEscapeError(f"the run folder {run_dir} was refused by another process (see its message)")


def _clean_leftovers(run_dir: Path, state, log) -> None:
    """What a SIGKILLed run leaves: temporaries of the atomic writer, shared-memory files of dead processes."""
    if state.is_main:  # before anything of this run writes into the folder
        removed = remove_stale_temps(run_dir, recursive=True)
        if removed:
            log.info(f"removed {len(removed)} unfinished temporary file(s) of an earlier run: {removed[0].name} ...")
    if state.local_rank == 0:
        segments = remove_dead_segments()
        if segments:
            log.info(f"removed {len(segments)} shared-memory file(s) of dead processes: {segments[0]} ...")


def _build_stage(
    cfg: TrainConfig,
    plan: StagePlan,
    state: dist.DistState,
    device: torch.device,
    run_dir: Path,
    log,
    writer,
    weights: tuple[dict | None, dict | None, dict | None],
    later_iterations: int,
) -> StageContext:
    """Network, optimiser, schedule, scaler and loader of one stage. `weights`: (same-stage checkpoint, previous
    stage's weights, weights=) in that order of precedence."""
    stage = plan.stage
    stage_cfg = cfg.stage(stage)
    resume, previous, start = weights
    # The same seed at the start of each stage (offset by rank so ranks differ where they should).
    ckpt_io.seed_everything(cfg.run.seed + state.rank)
    net = build_network(cfg.model, single_object=plan.single_object).to(device)
    _initial_weights(net, stage, cfg, previous, resume, start, log)
    # Before DDP and the optimiser: both take the parameters' layout (gradient buckets, Adam's moments).
    to_memory_format(net, cfg.runtime.memory_format)
    if cfg.runtime.compile:
        compile_network(net)
        # Compiled on their first calls: the first iterations' log lines show the compile time.
        log.info(f"[{stage}] torch.compile: the network's per-frame steps compile in the first iterations")
    if cfg.runtime.memory_format != "contiguous":
        log.info(f"[{stage}] memory format: {cfg.runtime.memory_format} (weights and frames)")
    model: torch.nn.Module = ClipModel(
        net, stage_cfg.num_ref_frames, stage_cfg.deep_update_prob, cfg.runtime.memory_format
    )
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
        data_root=cfg.run.data_root,
        cache_root=cfg.run.cache_root,
        seed=cfg.run.seed,
        rank=state.rank,
        world_size=state.world_size,
        batch_size=plan.per_rank_batch,
        num_workers=cfg.runtime.num_workers,
        device=device,
        backend=_loader_backend(cfg, device),
        total_iterations=plan.num_iterations,
        max_bad_fraction=cfg.runtime.max_bad_sample_fraction,
    )
    return StageContext(
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
        data_fingerprint=index_fingerprint(loader.source.sampler.index) if state.is_main else None,
    )


def build_hooks(cfg: TrainConfig, signals: StopSignals) -> list[Hook]:
    """The hooks of a stage, in the order they run (the order matters):
    - `_StopAt` first: a simulated preemption is requested before the step, exactly like a signal;
    - `CurriculumHook` moves max_skip before the step draws its batch;
    - `NonFiniteHook` sees the step's losses before anything logs or saves them;
    - `ProgressHook`, `ImageHook`, `ValidationHook` report;
    - `CheckpointHook` last: it saves the state of every hook above after they have all seen the step, so a
      resume restores them exactly.
    The stage also saves through the checkpoint hook on a stop between two steps (unreadable data, out of
    memory)."""
    hooks: list[Hook] = [
        _StopAt(cfg.run.stop_at_iteration, signals),
        CurriculumHook(),
        NonFiniteHook(cfg.runtime.max_nonfinite_steps),
        ProgressHook(cfg.logging.log_text_interval),
        ImageHook(cfg.logging.log_image_interval),
        ValidationHook(),
    ]
    saver = CheckpointHook(lambda hs=tuple(hooks): {type(h).__name__: h.state_dict() for h in hs})
    return [*hooks, saver]


def run_training(cfg: TrainConfig) -> None:
    # Stop signals are caught from the start: one during the start-up ends it at once (nothing to save yet).
    with StopSignals(armed=False) as signals:
        try:
            state, device = dist.init(cfg.runtime.device)
            try:
                _run(cfg, state, device, signals)
            finally:
                dist.shutdown()
        except (StopTraining, StoppedBeforeTraining) as e:
            _report_stop(e)
            raise SystemExit(e.exit_code) from None


def _report_stop(e: StopTraining | StoppedBeforeTraining) -> None:
    log = logging.getLogger("cutie")
    if log.handlers:  # set up: the console and train.log
        log.warning(f"training stopped: {e}")
    else:  # stopped before the run folder's log was opened
        print(f"training stopped: {e}", file=sys.stderr, flush=True)


def _check_inputs(cfg: TrainConfig, stages: list[str], plans: dict, state, device: torch.device) -> None:
    """Step 2: everything the stages read, checked now (every frame of every stage's data, so a main-training
    problem surfaces before pre-training starts)."""
    if cfg.run.weights and not Path(cfg.run.weights).is_file():
        raise ConfigError(f"weights={cfg.run.weights}: no such file")
    _check_data(cfg, stages, state)
    _check_shared_memory(cfg, stages, plans, state, device)


def _check_data(cfg: TrainConfig, stages: list[str], state) -> None:
    """Every frame of every stage's data, and of the validation set with main training (validate_data checks it
    with the main-training data). With several processes on a node, local rank 0 checks first and fills the
    file-check cache; the others wait for it, then check against the cache (seconds), so that a node reads each
    file once instead of once per GPU. Every rank ends with the same verdict."""

    def check() -> int:
        read = 0  # files opened (not answered by the cache)
        for s in stages:
            seq_length = cfg.stage(s).seq_length
            reports = validate_data(
                cfg.data, cfg.run.data_root, seq_length=seq_length, stages=[s], cache_root=cfg.run.cache_root
            )
            read += sum(r.checked.read for r in reports if r.checked is not None)
        return read

    first = state.local_rank == 0
    error: BaseException | None = None
    if first:
        try:
            check()
        except BaseException as e:  # raised after the others were released, so that none waits for a dead rank
            error = e  # (a stop signal during the check too: StoppedBeforeTraining)
    dist.agree(error)  # the other ranks wait here; a rank whose check failed raises its error (identity alone)
    if not first and (read := check()) and cfg.run.cache_root:
        logging.getLogger("cutie").warning(
            f"the data check read {read} files that local rank 0 had not cached in {cfg.run.cache_root}; "
            "if the ranks of a node do not share cache_root, every rank reads every file"
        )


def _plan_resume(cfg: TrainConfig, run_dir: Path, stages: list[str], plans: dict, state, log) -> ResumePlan:
    """Step 3: the checkpoint to resume from (verified, same run) and the weights= to start from, if used."""
    found = _find_resume(cfg, run_dir, log)
    path, resume = found if found is not None else (None, None)
    if resume is not None:
        _check_resume(cfg, path, resume, plans, log)
        log.info(
            f"resuming from {path} (sha256 verified): {resume['stage']} iteration {resume['iteration']}"
            f"{' (stage complete)' if resume.get('stage_complete') else ''}"
        )
        if resume.get("world_size", state.world_size) != state.world_size:
            log.warning(
                f"checkpoint was written with {resume['world_size']} processes, now {state.world_size}: "
                "training continues, but random states are re-seeded, so it is not bit-identical"
            )
    start = None
    if cfg.run.weights and (resume is None or resume["stage"] not in stages):
        start = _read_start_weights(cfg, stages)
    elif cfg.run.weights:
        log.info(f"weights={cfg.run.weights} not used: the run resumes from its checkpoint")
    return ResumePlan(path, resume, start)


def _keep_earlier_config(run_dir: Path, resolved: str, log) -> None:
    """A relaunch with other options (more iterations, other intervals) keeps the earlier config.yaml as
    config.<k>.yaml, so the run directory still says what trained its first steps."""
    current = run_dir / "config.yaml"
    if current.is_symlink() or not current.is_file():
        return  # a link is refused by the writer that follows, with its own message
    try:
        earlier = current.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return  # unreadable: nothing worth keeping, and it is replaced after this
    if earlier == resolved:
        return
    k = 1
    while (run_dir / f"config.{k}.yaml").exists() or (run_dir / f"config.{k}.yaml").is_symlink():
        k += 1
    atomic_write_text(run_dir / f"config.{k}.yaml", earlier)
    log.info(f"config.yaml differs from the earlier launch's: that one is kept as config.{k}.yaml")


def _open_run_dir(cfg: TrainConfig, run_dir: Path, state, device: torch.device, log):
    """Step 4 (main process): config.yaml, env.json and the TensorBoard writer, after every check passed."""
    if not state.is_main:
        return None
    _keep_earlier_config(run_dir, cfg.resolved_yaml, log)
    atomic_write_text(run_dir / "config.yaml", cfg.resolved_yaml)
    atomic_write_text(run_dir / "env.json", json.dumps(env_info.collect(state.world_size), indent=2))
    writer = EventWriter(run_dir, log)
    log.info(f"run directory: {run_dir.resolve()} (config.yaml, env.json, train.log, tb/, images/)")
    log.info(f"device {device}, {state.world_size} process(es), loader {_loader_backend(cfg, device)}")
    for note in cfg.notes:
        log.warning(note)
    return writer


def _run(cfg: TrainConfig, state: dist.DistState, device: torch.device, signals: StopSignals) -> None:
    run_dir = Path(cfg.run.output_root) / cfg.run.exp_id
    _check_run_dir(run_dir, state)
    log = setup_logging(run_dir, state)
    _clean_leftovers(run_dir, state, log)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.runtime.cudnn_benchmark
    stages = enabled_stages(cfg)
    plans = {s: plan_stage(cfg, s, state.world_size, device) for s in stages}
    _check_inputs(cfg, stages, plans, state, device)
    resume_plan = _plan_resume(cfg, run_dir, stages, plans, state, log)
    writer = _open_run_dir(cfg, run_dir, state, device, log)
    signals.arm()  # from here a stop is honoured at the next step boundary, after saving
    try:
        _train_stages(cfg, stages, plans, resume_plan, state, device, run_dir, log, writer, signals)
    finally:
        if writer is not None:
            try:
                writer.close()
            except OSError as e:  # e.g. a full disk: the error that matters has already been raised
                log.warning(f"TensorBoard events not flushed: {e}")


def _train_stages(cfg, stages, plans, resume_plan: ResumePlan, state, device, run_dir, log, writer, signals) -> None:
    """Step 5: the stages in order; a stage finished in the resumed run hands its weights on."""
    resume, start = resume_plan.checkpoint, resume_plan.start_weights
    previous: dict | None = None
    for i, stage in enumerate(stages):
        plan = plans[stage]
        if resume is not None and STAGES.index(resume["stage"]) > STAGES.index(stage):
            log.info(f"[{stage}] already finished in the resumed run: skipped")
            continue
        if (
            resume is not None
            and resume["stage"] == stage
            and resume.get("stage_complete")
            and int(resume["iteration"]) >= plan.num_iterations
        ):
            if i + 1 < len(stages):
                log.info(f"[{stage}] already complete in {resume['stage']} checkpoint: handing its weights on")
            else:  # a relaunch of a finished run trains nothing: say so, and how to train more
                log.info(
                    f"[{stage}] already complete ({resume['iteration']}/{plan.num_iterations} iterations in "
                    f"{resume_plan.path}): nothing to train; its weights are "
                    f"{run_dir / f'{cfg.run.exp_id}_{stage}_last.pth'}. For a new run (e.g. on changed data) "
                    f"pass exp_id=<new id>; to train this one further, a larger {stage}.num_iterations"
                )
            previous, resume = resume["weights"], None
            continue
        later = sum(plans[s].num_iterations for s in stages[i + 1 :])
        same_stage = resume if resume is not None and resume["stage"] == stage else None
        ctx = _build_stage(cfg, plan, state, device, run_dir, log, writer, (same_stage, previous, start), later)
        hooks = build_hooks(cfg, signals)
        if same_stage is not None:
            _restore(ctx, hooks, same_stage, state)
            resume = None
        ctx.run_start_iteration = ctx.iteration
        loss = LossComputer(LossSettings.of(cfg.stage(stage), cfg.model))
        t0 = time.perf_counter()
        try:
            run_stage(ctx, hooks, loss.compute, signals)
        finally:
            ctx.loader.close()
        previous = contiguous_copy(ctx.net.state_dict())
        log.info(
            f"[{stage}] done in {time.perf_counter() - t0:.0f}s: weights "
            f"{run_dir / f'{cfg.run.exp_id}_{stage}_last.pth'}"
        )


def _say_data_changes(ctx: StageContext, ckpt: dict) -> None:
    """The resume check compares settings and paths; this names data that changed under the same paths (a
    checkpoint from before fingerprints were kept has none: nothing to compare)."""
    before = ckpt.get("data")
    if ctx.data_fingerprint is None or not isinstance(before, list):
        return
    changed = data_changes(before, ctx.data_fingerprint)
    if changed:
        ctx.log.warning(
            f"[{ctx.stage}] the data changed since the checkpoint (iteration {ctx.iteration}):\n  "
            + "\n  ".join(changed)
            + "\ntraining continues on the data as it is now, so it is not bit-for-bit the uninterrupted run; "
            "for a run of its own on this data: exp_id=<new id> weights=<the checkpoint>"
        )


def _restore(ctx: StageContext, hooks: list[Hook], ckpt: dict, state) -> None:
    load_optimizer_state(ctx.optimizer, ckpt["optimizer"])  # Adam's moments take their parameters' layout
    ctx.scheduler.load_state_dict(ckpt["scheduler"])
    ctx.scaler.load_state_dict(ckpt["scaler"])
    ctx.iteration = int(ckpt["iteration"])
    states = ckpt.get("hooks", {})
    for h in hooks:
        h.load_state_dict(states.get(type(h).__name__, {}))
    _say_data_changes(ctx, ckpt)
    rng = ckpt["rng"]
    if len(rng) == state.world_size:
        ckpt_io.set_rng_state(rng[state.rank])
