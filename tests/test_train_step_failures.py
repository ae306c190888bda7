"""What a failing hook or step does to a run, on a real loop (run_stage) over a tiny module with the real progress
and checkpoint hooks.

A hook that fails after a step (a picture or a log line that cannot be written, a validation that breaks) used to
end the run there and then, losing every step since the last interval checkpoint: now the stage stops after the
next step with a checkpoint, then raises the hook's own error (the torchrun case, one rank fails and both stop, is
in test_train_e2e.py). A step that does not fit the GPU's memory ends with one line naming the setting that makes
it fit without changing the run, after saving the completed iterations exactly as a stop request would."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from _helpers import TinyLinear, cpu_stage_context
from hydra import compose, initialize_config_dir

from cutie.config.train import parse_train_config
from cutie.data.loaders.base import LoaderFailure
from cutie.training import checkpoint as ckpt_io
from cutie.training.context import StageContext
from cutie.training.hooks import CheckpointHook, Hook, ImageHook, NonFiniteHook, ProgressHook, ValidationHook
from cutie.training.hooks.checkpointing import weights_path
from cutie.training.loop import StopTraining, run_stage
from cutie.training.out_of_memory import OutOfDeviceMemory
from cutie.training.plan import StagePlan, smaller_micro_batch
from cutie.training.signals import StopSignals
from cutie.utils.dist import DistState

ITERATIONS = 8
LOG = "test_step_failures"


class _Loader:
    bad_samples = 0

    def iterate(self, start: int):
        for i in range(start, 10**6):
            yield {"rgb": torch.randn(4, 3, generator=torch.Generator().manual_seed(i))}


def _loss(batch: dict, out: dict) -> dict:
    mse = (out["y"] ** 2).mean()
    return {"total_loss": mse, "mse": mse}


class _FailsAt(Hook):
    """Fails in after_step at the given iterations, as a picture write onto a full or broken folder would."""

    def __init__(self, iterations: set[int], *, deferrable: bool = True) -> None:
        self.iterations = iterations
        self.deferrable_errors = deferrable

    def after_step(self, ctx: StageContext, result) -> None:
        if ctx.iteration in self.iterations:
            raise FileExistsError(17, "File exists", str(ctx.run_dir / "images"))


class _Seen(Hook):
    """After the failing hook: records the iterations it was called at, and whether the stage ended normally."""

    def __init__(self) -> None:
        self.iterations: list[int] = []
        self.stage_ended = False

    def after_step(self, ctx: StageContext, result) -> None:
        self.iterations.append(ctx.iteration)

    def after_stage(self, ctx: StageContext) -> None:
        self.stage_ended = True


def _ctx(repo_root, tmp_path) -> StageContext:
    with initialize_config_dir(config_dir=str(repo_root / "cutie" / "config"), version_base="1.3"):
        cfg = parse_train_config(
            compose(
                "train_config",
                overrides=["log_text_interval=2", "save_weights_interval=0", "save_checkpoint_interval=0"],
            )
        )
    plan = StagePlan("main_training", ITERATIONS, 4, 4, 4, 1, None, False, 1e-8, False)
    torch.manual_seed(0)
    model = TinyLinear()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    return cpu_stage_context(cfg, plan, model, opt, tmp_path, loader=_Loader(), log_name=LOG)


def _run(ctx: StageContext, failing: Hook) -> tuple[_Seen, pytest.ExceptionInfo]:
    seen = _Seen()
    hooks = [failing, seen, ProgressHook(2), CheckpointHook(lambda: {})]
    with pytest.raises(Exception) as info:  # noqa: PT011 (the type is asserted by each test)
        run_stage(ctx, hooks, _loss, StopSignals())
    return seen, info


def test_a_failing_hook_stops_after_the_next_step_with_a_checkpoint(repo_root, tmp_path, caplog):
    ctx = _ctx(repo_root, tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOG):
        seen, info = _run(ctx, _FailsAt({3}))
    assert info.type is FileExistsError  # the hook's own error, so the entry point names it (file error)
    assert seen.iterations == [1, 2, 3, 4]  # the later hooks ran at the failing step and at the stop
    assert not seen.stage_ended
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path)] == ["main_training_0000004.pth"]
    saved = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(tmp_path, "main_training", 4))
    assert saved["iteration"] == 4 and saved["stage_complete"] is False
    assert torch.equal(saved["weights"]["lin.weight"], ctx.net.lin.weight)  # the weights after step 4
    assert weights_path(ctx, "0000004").is_file()  # the weights file of a stop, as for a signal
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]  # every completed step logged
    assert "_FailsAt failed at iteration 3: FileExistsError" in caplog.text
    assert "training stopped at iteration 4 because _FailsAt failed at iteration 3" in caplog.text
    assert "relaunch the same command to resume" in caplog.text


def test_a_hook_failing_at_the_last_step_keeps_that_steps_checkpoint(repo_root, tmp_path, caplog):
    """No next step: the last step's checkpoint (written before the end of the stage) is the one to resume; the
    end of the stage (final validation, last weights) is left to the relaunch."""
    ctx = _ctx(repo_root, tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOG):
        seen, info = _run(ctx, _FailsAt({ITERATIONS}))
    assert info.type is FileExistsError
    assert seen.iterations == list(range(1, ITERATIONS + 1)) and not seen.stage_ended
    saved = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(tmp_path, "main_training", ITERATIONS))
    assert saved["iteration"] == ITERATIONS and saved["stage_complete"] is False
    said = f"training stopped at iteration {ITERATIONS} because _FailsAt failed at iteration {ITERATIONS}"
    assert said in caplog.text


def test_only_the_first_failure_is_raised_and_a_stop_request_still_saves(repo_root, tmp_path, caplog):
    ctx = _ctx(repo_root, tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOG):
        _, info = _run(ctx, _FailsAt({2, 3}))
    assert info.type is FileExistsError
    assert "_FailsAt failed at iteration 2" in caplog.text and "_FailsAt also failed at iteration 3" in caplog.text
    assert ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(tmp_path, "main_training", 3))["iteration"] == 3


def test_only_hooks_whose_errors_keep_the_ranks_in_step_are_deferred(repo_root, tmp_path):
    """A hook that fails on one rank before one of its collectives would leave the ranks out of step if the loop
    went on (the others wait in it, this one meets the next collective): its errors end the stage at once, as do
    the checkpoint hook's (a full disk: writing again a step later helps nothing; the previous one is intact)."""
    assert ImageHook.deferrable_errors and ProgressHook.deferrable_errors and ValidationHook.deferrable_errors
    assert not (CheckpointHook.deferrable_errors or NonFiniteHook.deferrable_errors or Hook.deferrable_errors)
    ctx = _ctx(repo_root, tmp_path)
    seen, info = _run(ctx, _FailsAt({3}, deferrable=False))
    assert info.type is FileExistsError
    assert seen.iterations == [1, 2] and ctx.iteration == 3
    assert ckpt_io.list_checkpoints(tmp_path) == []


def test_a_stop_request_without_a_failure_is_unchanged(repo_root, tmp_path):
    ctx = _ctx(repo_root, tmp_path)

    class _StopAt(Hook):
        def after_step(self, c: StageContext, result) -> None:
            if c.iteration == 2:
                c.stop_requested, c.stop_reason = True, "test stop"

    seen = _Seen()
    with pytest.raises(StopTraining, match="test stop"):
        run_stage(ctx, [_StopAt(), seen, CheckpointHook(lambda: {})], _loss, StopSignals())
    assert seen.iterations == [1, 2]
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path)] == ["main_training_0000002.pth"]


def test_a_metrics_write_failing_on_the_main_process_still_takes_the_averages_over_ranks(
    repo_root, tmp_path, monkeypatch, caplog
):
    """metrics.jsonl is written by the main process only: its write comes after the step's average over ranks
    (a collective), so the other ranks are not left waiting in it while this one goes on to the next step."""
    import errno

    from cutie.utils import dist

    ctx = _ctx(repo_root, tmp_path)
    progress = ProgressHook(2)
    averaged: list[int] = []
    mean = dist.all_reduce_mean

    def counting_mean(t):
        averaged.append(ctx.iteration)
        return mean(t)

    monkeypatch.setattr(dist, "all_reduce_mean", counting_mean)

    class _FullFile:
        def write(self, text: str) -> int:
            raise OSError(errno.EFBIG, "File too large")

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    class _BreakFileAt4(Hook):
        def after_step(self, c: StageContext, result) -> None:
            if c.iteration == 4:
                progress.metrics_file.close()
                progress.metrics_file = _FullFile()

    with caplog.at_level(logging.INFO, logger=LOG), pytest.raises(OSError, match="File too large"):
        run_stage(ctx, [_BreakFileAt4(), progress, CheckpointHook(lambda: {})], _loss, StopSignals())
    assert 4 in averaged and "it 4/8 | loss" in caplog.text  # the failing step's averages and line came first
    assert "ProgressHook failed at iteration 4: OSError" in caplog.text
    assert ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(tmp_path, "main_training", 5))["iteration"] == 5
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2]  # the records written before the file broke


@pytest.mark.parametrize(
    ("per_rank", "accumulation", "expected"),
    [(4, 1, 2), (6, 1, 3), (6, 2, 2), (5, 1, 1), (8, 4, 1), (1, 1, None), (3, 3, None)],
)
def test_the_smaller_micro_batch_splits_the_per_rank_batch(per_rank, accumulation, expected):
    plan = StagePlan("main_training", 10, per_rank, per_rank, per_rank // accumulation, accumulation, None, False,
                     1e-8, False)  # fmt: skip
    assert smaller_micro_batch(plan) == expected


def test_the_suggested_max_batch_per_gpu_is_accepted_and_keeps_the_global_batch(repo_root):
    """Whatever the batch and world size, the suggestion is a valid setting, gives a smaller micro-batch and the
    same global batch (so a relaunch with it resumes, cutie/training/resume.py allows the key)."""
    from cutie.training.plan import plan_stage
    from cutie.training.resume import ALLOWED

    assert "max_batch_per_gpu" in ALLOWED
    cpu = torch.device("cpu")
    with initialize_config_dir(config_dir=str(repo_root / "cutie" / "config"), version_base="1.3"):
        for batch, world, limit in [(16, 1, None), (16, 2, 4), (12, 1, 6), (12, 4, None), (10, 1, 5), (7, 1, None)]:
            overrides = [f"main_training.batch_size={batch}", f"max_batch_per_gpu={limit or 'null'}"]
            plan = plan_stage(parse_train_config(compose("train_config", overrides=overrides)), "main_training",
                              world, cpu)  # fmt: skip
            while (k := smaller_micro_batch(plan)) is not None:
                overrides[1] = f"max_batch_per_gpu={k}"
                smaller = plan_stage(parse_train_config(compose("train_config", overrides=overrides)),
                                     "main_training", world, cpu)  # fmt: skip
                assert smaller.micro_batch == k < plan.micro_batch and smaller.global_batch == batch
                plan = smaller
            assert plan.micro_batch == 1


class _ForwardFailsAt(torch.nn.Module):
    """TinyLinear whose forward first draws from torch's global RNG (as the clip forward picks its reference
    frames) and then, at the given forward call, raises `error` (by default as a CUDA allocation fails)."""

    def __init__(self, net: torch.nn.Module, at: int | None, error: Exception | None = None) -> None:
        super().__init__()
        self.net, self.at, self.calls = net, at, 0
        self.error = error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def forward(self, batch: dict) -> dict:
        self.calls += 1
        noise = torch.randperm(5)[0].float()
        if self.calls == self.at:
            raise self.error
        out = self.net(batch)
        return {"y": out["y"] + 0.01 * noise}


class _RequestStopAt(Hook):
    def __init__(self, iteration: int, signals: StopSignals) -> None:
        self.iteration, self.signals = iteration, signals

    def before_step(self, ctx: StageContext) -> None:
        if ctx.iteration + 1 == self.iteration:
            self.signals.request("test stop")


def _assert_same(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_a_step_out_of_memory_saves_the_completed_iterations_and_names_the_fix(repo_root, tmp_path):
    """The state of the completed iterations, random streams rewound to the failed step's start, is exactly
    what a stop requested at that iteration saves (whose resume equals an uninterrupted run: test_train_e2e)."""
    ctx = _ctx(repo_root, tmp_path / "oom")
    ctx.model = _ForwardFailsAt(ctx.net, at=3)
    seen = _Seen()
    with pytest.raises(OutOfDeviceMemory) as info:
        run_stage(ctx, [seen, CheckpointHook(lambda: {})], _loss, StopSignals())
    message = str(info.value)
    path = ckpt_io.checkpoint_path(tmp_path / "oom", "main_training", 2)
    assert message.startswith("[main_training] iteration 3: the step needs more memory than cpu has")
    assert "micro-batch 4 clip(s) of " in message and "model=" in message
    assert f"; a checkpoint of the 2 completed iterations was saved ({path}); " in message
    assert "fix: max_batch_per_gpu=2 (gradient accumulation keeps the global batch of 4; the same command " in message
    assert message.endswith("with it resumes from it)") and "\n" not in message
    assert seen.iterations == [1, 2] and ctx.iteration == 2  # no hook saw the step that did not happen
    assert ckpt_io.list_checkpoints(tmp_path / "oom") == [path]
    _assert_as_a_stop_at(repo_root, tmp_path / "stop", path)


def _assert_as_a_stop_at(repo_root, run_dir, path) -> None:
    """The checkpoint at `path` holds what a stop requested at its iteration saves (weights, optimiser, schedule,
    scaler, random states, loader position)."""
    saved = ckpt_io.load_checkpoint(path)
    ref = _ctx(repo_root, run_dir)
    ref.model = _ForwardFailsAt(ref.net, at=None)
    signals = StopSignals()
    with pytest.raises(StopTraining):
        run_stage(ref, [_RequestStopAt(saved["iteration"], signals), CheckpointHook(lambda: {})], _loss, signals)
    expected = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(run_dir, "main_training", saved["iteration"]))
    for key in ("weights", "optimizer", "scheduler", "scaler", "iteration", "rng", "loader", "stage_complete"):
        _assert_same(saved[key], expected[key], key)


def test_an_error_in_the_forward_keeps_the_completed_iterations_then_comes_out_as_it_was(repo_root, tmp_path, caplog):
    """A sample that breaks the network, or a bug, used to lose every step since the last interval checkpoint;
    now those are saved first (the same state as a stop there), and the error itself ends the run unchanged."""
    error = ValueError("a sample that breaks the network")
    (tmp_path / "run").mkdir()
    ctx = _ctx(repo_root, tmp_path / "run")
    ctx.model = _ForwardFailsAt(ctx.net, at=4, error=error)
    with caplog.at_level(logging.WARNING, logger=LOG), pytest.raises(ValueError) as info:
        run_stage(ctx, [ProgressHook(2), CheckpointHook(lambda: {})], _loss, StopSignals())
    assert info.value is error
    path = ckpt_io.checkpoint_path(tmp_path / "run", "main_training", 3)
    said = f"[main_training] iteration 4 failed; a checkpoint of the 3 completed iterations was saved ({path})"
    assert said in caplog.text
    assert ckpt_io.list_checkpoints(tmp_path / "run") == [path]
    _assert_as_a_stop_at(repo_root, tmp_path / "stop", path)


class _AdamWOutOfMemoryAt(torch.optim.AdamW):
    """AdamW whose update fails as allocating its moments on a full GPU would, at the given step."""

    def __init__(self, params, at: int, **kw) -> None:
        super().__init__(params, **kw)
        self.at, self.calls = at, 0

    def step(self, closure=None):
        self.calls += 1
        if self.calls == self.at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return super().step(closure)


def test_out_of_memory_in_the_update_or_under_ddp_saves_nothing(repo_root, tmp_path):
    """A cut-short update may leave some weights updated, and under DDP the other ranks wait inside the step's
    gradient all-reduce: the last checkpoint stays the one to resume from."""
    ctx = _ctx(repo_root, tmp_path / "update")
    ctx.optimizer = _AdamWOutOfMemoryAt(ctx.net.parameters(), at=3, lr=0.1)
    ctx.scheduler = torch.optim.lr_scheduler.LambdaLR(ctx.optimizer, lambda _: 1.0)
    with pytest.raises(OutOfDeviceMemory) as info:
        run_stage(ctx, [CheckpointHook(lambda: {})], _loss, StopSignals())
    assert "; no checkpoint of this state was saved (the optimiser's update was cut short); " in str(info.value)
    assert "resumes from the last checkpoint, if any)" in str(info.value)
    assert ckpt_io.list_checkpoints(tmp_path / "update") == []

    ctx = _ctx(repo_root, tmp_path / "ddp")
    ctx.dist = DistState(world_size=2, local_world_size=2, launcher="torchrun")  # no process group: any_rank is local
    ctx.model = _ForwardFailsAt(ctx.net, at=3)
    with pytest.raises(OutOfDeviceMemory, match=r"no checkpoint of this state was saved \(the other processes wait"):
        run_stage(ctx, [CheckpointHook(lambda: {})], _loss, StopSignals())
    assert ckpt_io.list_checkpoints(tmp_path / "ddp") == []


def test_out_of_memory_at_a_micro_batch_of_one_names_the_other_fixes(repo_root, tmp_path):
    ctx = _ctx(repo_root, tmp_path)
    ctx.plan = StagePlan("main_training", ITERATIONS, 1, 1, 1, 1, None, False, 1e-8, False)
    ctx.model = _ForwardFailsAt(ctx.net, at=1)
    with pytest.raises(OutOfDeviceMemory, match=r"fix: a GPU with more memory, or for a run of its own"):
        run_stage(ctx, [], _loss, StopSignals())


def test_the_trainer_reports_out_of_memory_as_one_line_exit_2(capsys):
    from cutie.train import _INPUT_ERRORS
    from cutie.utils.cli import EXIT_INPUT, run_reporting_errors

    def fail():
        raise OutOfDeviceMemory("[main_training] iteration 3: ...; fix: max_batch_per_gpu=2")

    with pytest.raises(SystemExit) as e:
        run_reporting_errors(fail, _INPUT_ERRORS)
    assert e.value.code == EXIT_INPUT
    assert capsys.readouterr().err == "out of memory: [main_training] iteration 3: ...; fix: max_batch_per_gpu=2\n"


class _BreakingLoader(_Loader):
    """Raises `error` instead of the batch of the given iteration, as a DataLoader whose worker died does."""

    def __init__(self, at: int, error: Exception) -> None:
        self.at, self.error = at, error

    def iterate(self, start: int):
        for i, batch in enumerate(super().iterate(start), start):
            if i == self.at:
                raise self.error
            yield batch


@pytest.mark.parametrize("error", [LoaderFailure("data loader worker(s) ended: pid 7 killed by SIGKILL"), KeyError(3)])
def test_a_broken_loader_stops_after_the_steps_hooks_with_a_checkpoint(repo_root, tmp_path, caplog, error):
    """A loader worker killed (by the out-of-memory killer, say) or a bug in the loader used to end the run at once,
    losing every step since the last interval checkpoint; now the last step's hooks run, its checkpoint is saved
    (the same state as a stop there), then the loader's error ends the run."""
    (tmp_path / "run").mkdir()
    ctx = _ctx(repo_root, tmp_path / "run")
    ctx.model = _ForwardFailsAt(ctx.net, at=None)
    ctx.loader = _BreakingLoader(3, error)  # the batch of the 4th step
    seen = _Seen()
    with caplog.at_level(logging.WARNING, logger=LOG), pytest.raises(type(error)) as info:
        run_stage(ctx, [seen, ProgressHook(2), CheckpointHook(lambda: {})], _loss, StopSignals())
    assert info.value is error
    assert seen.iterations == [1, 2, 3] and not seen.stage_ended
    path = ckpt_io.checkpoint_path(tmp_path / "run", "main_training", 3)
    said = f"the data loader failed after iteration 3 ({type(error).__name__}: "
    assert said in caplog.text and f"a checkpoint of the 3 completed iterations was saved ({path})" in caplog.text
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3]
    _assert_as_a_stop_at(repo_root, tmp_path / "stop", path)


def test_a_broken_loader_before_the_first_step_is_not_a_bad_data_stop(repo_root, tmp_path):
    ctx = _ctx(repo_root, tmp_path)
    error = LoaderFailure("data loader worker(s) ended")
    ctx.loader = _BreakingLoader(0, error)
    with pytest.raises(LoaderFailure) as info:
        run_stage(ctx, [CheckpointHook(lambda: {})], _loss, StopSignals())
    assert info.value is error  # not BadDataStop's 'too many unreadable samples' (exit 4)
