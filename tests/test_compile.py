"""`compile: true` (cutie/training/compiling.py): the compiled steps train exactly like the eager network, stop
compiling after a warm-up over the object counts and deep-update flags, keep the weights' names, and stay out of
validation. Dynamo's `eager` backend captures the same graphs as inductor without generating code (inductor
takes ~9 min on the 2-core CI machine); the GPU acceptance run times inductor (scripts/gpu_acceptance.py)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.utils
from test_model_network import make_batch

from cutie.config.model import ModelSpec
from cutie.model import build_network, load_model_config
from cutie.model.losses import LossComputer, LossSettings
from cutie.model.param_groups import param_groups
from cutie.training.clip_model import ClipModel
from cutie.training.compiling import COMPILED_STEPS, compile_network, eager_only
from cutie.training.plan import StagePlan
from cutie.training.step import train_step


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


# One transformer block instead of three: the same variants, a third of the graph to capture.
SMALL = {"object_transformer": {"num_blocks": 1}}


def _setup(compiled: bool):
    torch.manual_seed(0)
    net = build_network(load_model_config("small", SMALL)).train()
    if compiled:
        compile_network(net, backend="eager")
    spec = ModelSpec.from_config(load_model_config("small", SMALL))
    loss = LossComputer(LossSettings(128, 3.0, 0.75, spec.sensory_aux_weight, spec.query_aux_weight))
    groups = param_groups(net, lr=1e-3, weight_decay=0.001, embed_weight_decay=0.0, backbone_lr_ratio=0.1)
    opt = torch.optim.AdamW(groups, lr=1e-3, eps=1e-6)
    plan = StagePlan("main_training", 10, 1, 1, 1, 1, None, False, 1e-6, False)
    return net, ClipModel(net, 2, 0.5), loss, opt, plan


def _step(setup, objects: int, deep_update_prob: float, iteration: int) -> torch.Tensor:
    net, model, loss, opt, plan = setup
    model.deep_update_prob = deep_update_prob
    batch = make_batch(b=1, t=4, o=3, size=32, num_objects=(objects,))
    torch.manual_seed(100 + iteration)  # the same clip choices and loss points in both runs
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return train_step(model, batch, loss.compute, opt, scaler, plan, 3.0).losses["total_loss"]


# Every variant a training clip can show the steps: 1, 2 and 3 objects, each with and without deep updates.
WARM_UP = [(1, 1.0), (2, 1.0), (3, 1.0), (1, 0.0), (2, 0.0), (3, 0.0)]
AFTER = [(2, 0.5), (3, 0.5), (1, 0.5), (3, 1.0)]


def test_compiled_steps_train_like_eager_bit_for_bit_and_stop_recompiling():
    eager, compiled = _setup(False), _setup(True)
    for i, (objects, prob) in enumerate(WARM_UP):
        assert torch.equal(_step(eager, objects, prob, i), _step(compiled, objects, prob, i)), i
    assert _graphs() >= len(COMPILED_STEPS)  # the steps were really captured
    # After the warm-up nothing compiles again (the whole-forward compile recompiled per deep-update pattern
    # and fell back to eager mode once dynamo's recompile limit was reached).
    with torch.compiler.set_stance("fail_on_recompile"):
        for i, (objects, prob) in enumerate(AFTER, start=len(WARM_UP)):
            assert torch.equal(_step(eager, objects, prob, i), _step(compiled, objects, prob, i)), i
    for (name, a), b in zip(eager[0].state_dict().items(), compiled[0].state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_compiling_keeps_the_official_weight_names():
    torch.manual_seed(0)
    net = build_network(load_model_config("small"))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    compile_network(net, backend="eager")
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(isinstance(m, torch._dynamo.eval_frame.OptimizedModule) for m in net.modules())


def test_validation_runs_the_compiled_steps_eagerly():
    torch.manual_seed(0)
    net = build_network(load_model_config("small")).eval()
    compile_network(net, backend="eager")
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        reference = net.encode_image(image)[1]  # compiles
        graphs = _graphs()
        with eager_only():
            out = net.encode_image(torch.rand(1, 3, 48, 64))[1]  # a new size: would compile, but does not
        assert _graphs() == graphs
        assert out.shape[-2:] == (3, 4) and reference.shape[-2:] == (2, 2)
