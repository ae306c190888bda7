"""Training-layer units: stage plans and config errors, lr schedule, the pure step, atomic checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from hydra import compose, initialize_config_dir

from cutie.config.train import parse_train_config
from cutie.training import checkpoint as ckpt_io
from cutie.training.optim import lr_factor
from cutie.training.plan import ConfigError, plan_stage
from cutie.training.step import split_batch, train_step

CPU = torch.device("cpu")


def _cfg(repo_root, *overrides):
    with initialize_config_dir(config_dir=str(repo_root / "cutie" / "config"), version_base="1.3"):
        return parse_train_config(compose("train_config", overrides=list(overrides)))


def test_official_defaults(repo_root):
    cfg = _cfg(repo_root, "data=mega", "model=small")
    pre, main = cfg.pre_training, cfg.main_training
    assert (pre.num_iterations, pre.batch_size, pre.seq_length, list(pre.crop_size)) == (80000, 16, 3, [384, 384])
    assert (pre.learning_rate, pre.lr_schedule, pre.train_num_points, pre.amp) == (1e-4, "constant", 8192, False)
    assert (pre.num_objects, pre.num_ref_frames) == (1, 2)
    assert (main.batch_size, main.seq_length, list(main.crop_size), main.num_objects) == (16, 8, [480, 480], 3)
    assert (main.num_ref_frames, main.amp, main.train_num_points, main.merge_probability) == (3, True, 12544, 0.5)
    assert (main.num_iterations, list(main.lr_schedule_steps)) == (175000, [140000, 160000])
    assert list(main.max_skip_schedule) == [5, 10, 15, 5]
    assert list(main.max_skip_schedule_fraction) == [0.0, 0.1, 0.3, 0.8]
    for s in (pre, main):
        assert (s.weight_decay, s.embed_weight_decay, s.backbone_lr_ratio, s.clip_grad_norm) == (0.001, 0.0, 0.1, 3.0)
        assert (s.deep_update_prob, s.oversample_ratio, s.importance_sample_ratio) == (0.2, 3.0, 0.75)
    base = _cfg(repo_root, "data=base")
    assert (base.main_training.num_iterations, list(base.main_training.lr_schedule_steps)) == (125000, [100000, 115000])
    assert list(base.data.main_training.datasets) == ["DAVIS", "YouTubeVOS"]
    assert base.data.vos_datasets["DAVIS"].multiplier == 2 and base.data.vos_datasets["DAVIS"].frame_interval == 2
    assert base.data.image_datasets["BIG"].multiplier == 5 and base.data.image_datasets["HRSOD"].multiplier == 5


def test_plan_derives_per_rank_batch_and_accumulation(repo_root):
    cfg = _cfg(repo_root, "main_training.batch_size=16", "max_batch_per_gpu=4")
    plan = plan_stage(cfg, "main_training", world_size=2, device=CPU)
    assert (plan.per_rank_batch, plan.micro_batch, plan.accumulation_steps) == (8, 4, 2)
    assert plan.amp_dtype is None and plan.adam_eps == 1e-8  # AMP is off on the CPU
    assert plan.amp_requested and "main_training.amp=true has no effect on the CPU" in plan.describe()
    quiet = plan_stage(_cfg(repo_root, "main_training.amp=false"), "main_training", world_size=1, device=CPU)
    assert "AMP off," in quiet.describe()  # nothing to explain when AMP was not asked for
    assert cfg.main_training.batch_size == 16  # the config itself is never mutated
    assert plan_stage(cfg, "pre_training", world_size=1, device=CPU).single_object


@pytest.mark.parametrize(
    ("overrides", "world", "needle"),
    [
        (["main_training.batch_size=15"], 2, "main_training.batch_size=15"),
        (["max_batch_per_gpu=3"], 1, "max_batch_per_gpu=3"),
        (["main_training.lr_schedule=cosine"], 1, "main_training.lr_schedule"),
        (["main_training.crop_size=[100,100]"], 1, "main_training.crop_size"),
    ],
)
def test_plan_errors_name_the_option(repo_root, overrides, world, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):  # at the parse or at the plan
        plan_stage(_cfg(repo_root, *overrides), "main_training", world_size=world, device=CPU)


def test_step_lr_schedule():
    steps = [100, 115]
    assert lr_factor(0, "step", steps, 0.1) == 1.0
    assert lr_factor(99, "step", steps, 0.1) == 1.0
    assert lr_factor(100, "step", steps, 0.1) == pytest.approx(0.1)
    assert lr_factor(115, "step", steps, 0.1) == pytest.approx(0.01)
    assert lr_factor(10**6, "constant", steps, 0.1) == 1.0


def test_split_batch_keeps_samples_together():
    batch = {
        "rgb": torch.arange(4).view(4, 1).float(),
        "num_objects": torch.tensor([1, 2, 3, 1]),
        "object_counts": (1, 2, 3, 1),
    }
    parts = split_batch(batch, 2)
    assert [p["rgb"].flatten().tolist() for p in parts] == [[0.0, 1.0], [2.0, 3.0]]
    assert [p["num_objects"].tolist() for p in parts] == [[1, 2], [3, 1]]
    assert [p["object_counts"] for p in parts] == [(1, 2), (3, 1)]


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def forward(self, batch):
        return {"y": self.lin(batch["rgb"])}


def _plan(accum=1):
    from cutie.training.plan import StagePlan

    return StagePlan("main_training", 10, 4, 4, 4 // accum, accum, None, False, 1e-8, False)


def test_step_skips_non_finite_loss_and_keeps_weights():
    model = _Linear()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = {"rgb": torch.randn(4, 3)}
    nan_loss = lambda b, o: {"total_loss": o["y"].sum() * float("nan")}  # noqa: E731
    res = train_step(model, batch, nan_loss, opt, scaler, _plan(), 3.0)
    assert not res.finite
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    ok_loss = lambda b, o: {"total_loss": (o["y"] ** 2).mean()}  # noqa: E731
    res = train_step(model, batch, ok_loss, opt, scaler, _plan(), 3.0)
    assert res.finite and not torch.equal(model.lin.weight, before["lin.weight"])


def test_accumulation_equals_full_batch():
    torch.manual_seed(0)
    a, b = _Linear(), _Linear()
    b.load_state_dict(a.state_dict())
    batch = {"rgb": torch.randn(4, 3)}
    loss = lambda bt, o: {"total_loss": (o["y"] ** 2).mean()}  # noqa: E731
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    oa, ob = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    train_step(a, batch, loss, oa, scaler, _plan(1), 100.0)
    train_step(b, batch, loss, ob, scaler, _plan(2), 100.0)
    assert torch.allclose(a.lin.weight, b.lin.weight, atol=1e-6)


def test_atomic_save_failure_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "ck.pth"
    ckpt_io.atomic_torch_save({"v": torch.ones(3)}, path)

    def broken_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        ckpt_io.atomic_torch_save({"v": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]  # no temporary left behind


def test_checkpoint_killed_mid_write_leaves_previous_usable(tmp_path):
    """A process SIGKILLed while writing a big checkpoint: the file is always a complete old or new one."""
    path = tmp_path / "ck.pth"
    ckpt_io.atomic_torch_save({"gen": 0, "t": torch.zeros(10)}, path)
    code = textwrap.dedent(f"""
        import sys, torch
        from cutie.training.checkpoint import atomic_torch_save
        print("ready", flush=True)
        for gen in range(1, 1000):
            atomic_torch_save({{"gen": gen, "t": torch.full((25_000_000,), float(gen))}}, {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    import time

    time.sleep(1.5)  # long enough to be inside a 100 MB write most of the time
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ck = torch.load(path)
    assert ck["t"].numel() in (10, 25_000_000)
    assert bool((ck["t"] == float(ck["gen"])).all())
    assert ckpt_io.list_checkpoints(tmp_path) == []  # names outside checkpoints/ are not picked up


def test_rng_state_round_trip():
    ckpt_io.seed_everything(3)
    state = ckpt_io.rng_state()
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    ckpt_io.set_rng_state(state)
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_latest_checkpoint_orders_by_stage_then_iteration(tmp_path):
    for stage, it in [("pre_training", 20), ("main_training", 3), ("main_training", 12), ("pre_training", 5)]:
        ckpt_io.checkpoint_path(tmp_path, stage, it).parent.mkdir(exist_ok=True)
        ckpt_io.checkpoint_path(tmp_path, stage, it).write_bytes(b"x")
    assert ckpt_io.latest_checkpoint(tmp_path).name == "main_training_0000012.pth"
    ckpt_io.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path)] == [
        "main_training_0000003.pth",
        "main_training_0000012.pth",
    ]


def test_an_unexpected_error_is_one_line_naming_the_switch(capsys, monkeypatch):
    """A bug (not an input problem) still reaches the user as one line, exit 1, with how to get the trace."""
    from cutie.utils.cli import run_reporting_errors

    monkeypatch.delenv("CUTIE_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def broken():
        return 1 / 0

    with pytest.raises(SystemExit) as stop:
        run_reporting_errors(broken, {ConfigError: "configuration error"})
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("internal error: ZeroDivisionError: division by zero") and "CUTIE_DEBUG=1" in err
    with pytest.raises(SystemExit) as stop:
        run_reporting_errors(
            lambda: (_ for _ in ()).throw(ConfigError("`x`: bad")), {ConfigError: "configuration error"}
        )
    assert stop.value.code == 2 and capsys.readouterr().err == "configuration error: `x`: bad\n"
    monkeypatch.setenv("CUTIE_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        run_reporting_errors(broken, {})


def test_picture_grids_are_written_atomically_and_never_through_a_symlink(tmp_path):
    """The image hook writes through the atomic writer: a PNG that decodes to the grid, no temporary left, and a
    link planted at the next grid's name (after the start-up check) is refused instead of written through."""
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from cutie.training.hooks import ImageHook
    from cutie.utils.atomic import UnsafePathError

    t, h, w = 2, 8, 6
    batch = {"rgb": torch.rand(1, t, 3, h, w), "cls_gt": torch.zeros(1, t, 1, h, w, dtype=torch.int64)}
    ctx = SimpleNamespace(
        iteration=1,
        plan=SimpleNamespace(num_iterations=5, stage="main_training"),
        stage="main_training",
        dist=SimpleNamespace(is_main=True),
        batch=batch,
        writer=None,
        run_dir=tmp_path / "run",
    )
    result = SimpleNamespace(output={"logits_1": torch.zeros(1, 2, h, w)})
    ImageHook(interval=1).after_step(ctx, result)
    written = tmp_path / "run" / "images" / "main_training_0000001.png"
    assert np.asarray(Image.open(written)).shape == (3 * h, t * w, 3)
    assert [p.name for p in written.parent.iterdir()] == [written.name]
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep")
    (written.parent / "main_training_0000002.png").symlink_to(victim)
    ctx.iteration = 2
    with pytest.raises(UnsafePathError, match="symlink"):
        ImageHook(interval=1).after_step(ctx, result)
    assert victim.read_bytes() == b"keep"


def test_last_step_is_checkpointed_before_the_final_validation(repo_root, tmp_path):
    """A final validation that fails or is killed (minutes on a real set) used to lose every step since the last
    interval checkpoint: the last step's checkpoint was only written after it, by after_stage."""
    from _helpers import cpu_stage_context

    from cutie.training.context import StageContext
    from cutie.training.hooks import CheckpointHook, Hook

    cfg = _cfg(repo_root, "model=small", "save_checkpoint_interval=4", "save_weights_interval=100")
    plan = plan_stage(cfg, "main_training", 1, CPU)
    plan = type(plan)(**{**plan.__dict__, "num_iterations": 6})
    net = torch.nn.Linear(2, 2)
    ctx = cpu_stage_context(cfg, plan, net, torch.optim.AdamW(net.parameters()), tmp_path)

    class CrashingValidation(Hook):  # as ValidationHook, it runs before the checkpoint hook
        def after_stage(self, ctx: StageContext) -> None:
            raise RuntimeError("validation killed")

    hooks = [CrashingValidation(), CheckpointHook(lambda: {})]
    for it in (5, 6):  # 5: neither an interval nor the last step; 6: the last
        ctx.iteration = it
        for h in hooks:
            h.after_step(ctx, None)
    with pytest.raises(RuntimeError, match="validation killed"):
        for h in hooks:
            h.after_stage(ctx)
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path)] == ["main_training_0000006.pth"]
    saved = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(tmp_path, "main_training", 6))
    assert saved["iteration"] == 6 and saved["stage_complete"] is False  # the relaunch reruns only after_stage
    hooks[1].after_stage(ctx)
    assert ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(tmp_path, "main_training", 6))["stage_complete"] is True


def test_relaunching_a_finished_run_says_nothing_was_trained(repo_root, tmp_path, caplog):
    """The fine-tune command run again (new videos in the same folder, same exp_id) exited 0 after 'already
    complete ...: handing its weights on', with no later stage to hand them to and no word of what to do."""
    import logging

    from cutie.training.run import ResumePlan, _train_stages
    from cutie.utils.dist import DistState

    cfg = _cfg(repo_root, "model=small", "exp_id=mine", "pre_training.enabled=False")
    plans = {"main_training": plan_stage(cfg, "main_training", 1, CPU)}
    total = plans["main_training"].num_iterations
    ckpt = {"stage": "main_training", "iteration": total, "stage_complete": True, "weights": {}}
    path = tmp_path / "checkpoints" / "main_training.pth"
    with caplog.at_level(logging.INFO, logger="test"):
        _train_stages(cfg, ["main_training"], plans, ResumePlan(path, ckpt), DistState(), CPU, tmp_path,
                      logging.getLogger("test"), None, None)  # fmt: skip
    (record,) = caplog.records
    assert f"already complete ({total}/{total} iterations in {path}): nothing to train" in record.message
    assert str(tmp_path / "mine_main_training_last.pth") in record.message
    assert "exp_id=<new id>" in record.message and "main_training.num_iterations" in record.message


def test_a_validation_out_of_memory_is_skipped_and_training_goes_on(
    repo_root, tiny_data, tmp_path, monkeypatch, caplog
):
    """Validation beside the training state (optimiser moments, cached blocks) on a full GPU used to end the run as
    'internal error ... this is a bug'. Training itself fits, so that validation is skipped with a warning naming
    the frame and what to do; the next one that fits scores and keeps best.pth as usual."""
    import logging

    from _helpers import cpu_stage_context

    from cutie.inference.processor import VideoProcessor
    from cutie.model.network import build_network
    from cutie.training.hooks import ValidationHook

    cfg = _cfg(repo_root, "data=tiny", f"data_root={tiny_data}", "model=small", "eval_interval=1")
    plan = plan_stage(cfg, "main_training", 1, CPU)
    net = build_network(cfg.model)
    ctx = cpu_stage_context(cfg, plan, net, torch.optim.AdamW(net.parameters()), tmp_path, log_name="test_val_oom")
    step = VideoProcessor._step

    def out_of_memory_at_the_third_frame(self, image, mask, objects, *, end):
        if self.frame_index == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return step(self, image, mask, objects, end=end)

    hook = ValidationHook(max_videos=1)
    ctx.iteration = 1
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING, logger="test_val_oom"):
        patch.setattr(VideoProcessor, "_step", out_of_memory_at_the_third_frame)
        hook.after_step(ctx, None)
    (record,) = caplog.records
    assert record.message.startswith("[main_training] validation at iteration 1 skipped, training goes on: video ")
    assert "the network needs more memory than cpu has; validate the saved weights afterwards" in record.message
    assert hook.best is None and not (tmp_path / "best.pth").exists() and net.training
    ctx.iteration = 2
    hook.after_step(ctx, None)
    assert hook.best is not None and (tmp_path / "best.pth").is_file()
