"""Point-sampled CE + dice losses and the auxiliary terms (cutie/model/losses.py, point_sampling.py)."""

from __future__ import annotations

import math

import pytest
import torch

from cutie.model.losses import LossComputer, LossSettings, one_hot_labels, point_ce, point_dice
from cutie.model.point_sampling import point_uncertainty, sample_at, uncertain_point_coords
from cutie.testing.reference_files import load_reference

SETTINGS = LossSettings(
    num_points=256, oversample_ratio=3.0, importance_sample_ratio=0.75, sensory_weight=0.01, query_weight=0.01
)


def make_batch(cls_gt: torch.Tensor, num_objects: list[int], max_objects: int) -> dict:
    b, t, _, h, w = cls_gt.shape
    return {
        "rgb": torch.rand(b, t, 3, h, w),
        "cls_gt": cls_gt,
        "first_frame_gt": one_hot_labels(cls_gt[:, 0], max_objects)[:, 1:].unsqueeze(1).long(),
        "selector": torch.ones(b, max_objects),
        "num_objects": torch.tensor(num_objects),
    }


def outputs_from_logits(logits: list[torch.Tensor], levels: int = 4, stride: int = 4) -> dict:
    """Outputs for frames 1..len(logits): aux predictions are downsampled copies of the main logits."""
    out = {}
    for ti, lg in enumerate(logits, start=1):
        small = torch.nn.functional.avg_pool2d(lg, stride)  # B*(O+1)*h*w
        out[f"logits_{ti}"] = lg
        out[f"masks_{ti}"] = lg.softmax(1)[:, 1:]
        out[f"aux_{ti}"] = {
            "sensory_logits": small,
            "q_logits": small.unsqueeze(2).expand(-1, -1, levels, -1, -1),
            "attn_mask": torch.zeros(small.shape[0], small.shape[1] - 1, 16, *small.shape[-2:], dtype=torch.bool),
        }
    return out


def labels_with_two_objects(b: int = 2, t: int = 3, size: int = 32) -> torch.Tensor:
    cls_gt = torch.zeros(b, t, 1, size, size, dtype=torch.long)
    cls_gt[..., 4:16, 4:20] = 1
    cls_gt[..., 18:30, 10:28] = 2
    return cls_gt


def test_one_hot_labels_ignores_labels_beyond_count() -> None:
    cls = torch.tensor([0, 1, 2, 3]).view(1, 1, 1, 4)
    oh = one_hot_labels(cls, 2)  # classes 0, 1, 2
    assert oh.shape == (1, 3, 1, 4)
    assert oh[0, :, 0].tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]  # label 3 matches nothing


def test_point_ce_known_values() -> None:
    gt = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])  # 1*3*2: point 0 is class 0, point 1 class 1
    assert point_ce(torch.zeros(1, 3, 2), gt).item() == pytest.approx(math.log(3))
    logits = torch.tensor([[[math.log(2), 0.0], [0.0, math.log(3)], [0.0, 0.0]]])
    # point 0: p0 = 2/4; point 1: p1 = 3/5
    expected = (-math.log(2 / 4) - math.log(3 / 5)) / 2
    assert point_ce(logits, gt).item() == pytest.approx(expected, rel=1e-6)


def test_point_dice_known_values() -> None:
    gt = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])  # 1*3*3, object 2 absent
    assert point_dice(gt, gt).item() == pytest.approx(0.0, abs=1e-7)  # perfect: both objects 0
    probs = torch.full((1, 3, 3), 0.5)
    # object 1: overlap 2*(0.5+0.5)=2, size 1.5+2=3.5 -> 1-3/4.5; object 2: overlap 0, size 1.5 -> 1-1/2.5
    expected = ((1 - 3 / 4.5) + (1 - 1 / 2.5)) / 2
    assert point_dice(probs, gt).item() == pytest.approx(expected, rel=1e-6)
    assert point_dice(torch.ones(2, 1, 5), torch.ones(2, 1, 5)).tolist() == [0.0, 0.0]  # background only


def test_sample_at_pixel_centres_is_exact() -> None:
    values = torch.arange(12.0).view(1, 1, 3, 4)
    xs = (torch.arange(4) + 0.5) / 4
    ys = (torch.arange(3) + 0.5) / 3
    coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).view(1, -1, 2)  # x first
    assert torch.allclose(sample_at(values, coords).view(3, 4), values[0, 0], atol=1e-5)


def test_point_uncertainty_rules() -> None:
    multi = torch.tensor([[[3.0], [1.0], [2.5]]])  # top two: 3, 2.5
    assert point_uncertainty(multi).item() == pytest.approx(-0.5)
    binary = torch.tensor([[[5.0], [-2.0]]])
    assert point_uncertainty(binary).item() == pytest.approx(-2.0)


def test_uncertain_points_shape_range_and_focus() -> None:
    torch.manual_seed(0)
    # Confident everywhere except pixel columns 4..11 (x in [0.25, 0.75)): the importance points land there.
    logits = torch.zeros(2, 3, 16, 16)
    logits[:, 0] = 10.0
    logits[:, :, :, 4:12] = 0.0
    coords = uncertain_point_coords(logits, 100, 3.0, 0.75)
    assert coords.shape == (2, 100, 2)
    assert coords.min() >= 0 and coords.max() <= 1
    important = coords[:, :75, 0]
    assert ((important > 3.5 / 16) & (important < 12.5 / 16)).all()  # band plus half a pixel each side
    random_part = coords[:, 75:, 0]
    assert ((random_part < 3.5 / 16) | (random_part > 12.5 / 16)).any()


def test_compute_keys_and_consistent_total() -> None:
    torch.manual_seed(0)
    cls_gt = labels_with_two_objects(t=4)
    batch = make_batch(cls_gt, [2, 2], 2)
    out = outputs_from_logits([torch.randn(2, 3, 32, 32) for _ in range(3)])
    losses = LossComputer(SETTINGS).compute(batch, out)
    expected_aux = {"aux_sensory_ce", "aux_sensory_dice"} | {
        f"aux_query_{k}_l{lv}" for k in ("ce", "dice") for lv in range(4)
    }
    per_frame = {f"{k}/t{t}" for k in ("ce", "dice") for t in (1, 2, 3)}
    assert set(losses) == {"total_loss", "loss_ce", "loss_dice"} | per_frame | expected_aux
    assert all(v.dim() == 0 and v.dtype == torch.float32 for v in losses.values())
    assert losses["loss_ce"].item() == pytest.approx(sum(losses[f"ce/t{t}"].item() for t in (1, 2, 3)), rel=1e-5)
    total = losses["loss_ce"] + losses["loss_dice"] + sum(losses[k] for k in expected_aux)
    assert losses["total_loss"].item() == pytest.approx(total.item(), rel=1e-5)
    # aux terms carry the 0.01 weight: random logits give CE ~1, so weighted terms are ~0.01 per frame
    assert 0 < losses["aux_sensory_ce"].item() < 0.1


def test_perfect_prediction_scores_near_zero_and_wrong_one_high() -> None:
    cls_gt = labels_with_two_objects(t=3)
    batch = make_batch(cls_gt, [2, 2], 2)
    onehot = one_hot_labels(cls_gt[:, 1:].flatten(0, 1), 2).view(2, 2, 3, 32, 32)  # B*F*(O+1)*H*W
    perfect = [40.0 * onehot[:, f] for f in range(2)]
    wrong = [40.0 * onehot[:, f].roll(1, dims=1) for f in range(2)]  # every pixel gets another class
    computer = LossComputer(SETTINGS)
    torch.manual_seed(1)
    good = computer.compute(batch, outputs_from_logits(perfect))
    torch.manual_seed(1)
    bad = computer.compute(batch, outputs_from_logits(wrong))
    # Not exactly 0: the uncertainty sampling favours points between pixels of different classes (and at the
    # image border, where bilinear sampling mixes in zero padding, as in the official code); their ground
    # truth is soft while the softmax of interpolated large logits is nearly hard.
    assert good["loss_dice"].item() < 0.3  # two frames
    assert bad["loss_dice"].item() > 1.6  # ~1 per frame
    assert good["loss_ce"].item() < 0.1 * bad["loss_ce"].item()


def test_objects_beyond_num_objects_do_not_contribute() -> None:
    cls_gt = labels_with_two_objects(t=3)
    cls_gt[1][cls_gt[1] == 2] = 0  # sample 1 has one object; its channel 2 is padding
    batch = make_batch(cls_gt, [2, 1], 2)
    torch.manual_seed(3)
    base = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    changed = [lg.clone() for lg in base]
    for lg in changed:
        lg[1, 2] = 100.0 * torch.randn(32, 32)  # garbage in the padded channel
    computer = LossComputer(SETTINGS)
    results = []
    for logits in (base, changed):
        logits = [lg.requires_grad_() for lg in logits]
        torch.manual_seed(5)
        losses = computer.compute(batch, outputs_from_logits(logits))
        losses["total_loss"].backward()
        results.append((losses, logits))
    (a, la), (b, lb) = results
    for key in a:
        assert a[key].item() == pytest.approx(b[key].item(), rel=1e-6), key
    assert torch.count_nonzero(lb[0].grad[1, 2]) == 0  # no gradient into the padded channel
    assert torch.count_nonzero(lb[0].grad[0, 2]) > 0


def test_gradient_flows_to_main_and_aux_outputs() -> None:
    torch.manual_seed(0)
    cls_gt = labels_with_two_objects(t=3)
    batch = make_batch(cls_gt, [2, 2], 2)
    logits = [torch.randn(2, 3, 32, 32, requires_grad=True) for _ in range(2)]
    sens = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = outputs_from_logits(logits)
    out["aux_1"]["sensory_logits"] = sens
    LossComputer(SETTINGS).compute(batch, out)["total_loss"].backward()
    assert all(lg.grad is not None and lg.grad.abs().sum() > 0 for lg in logits)
    assert sens.grad is not None and sens.grad.abs().sum() > 0


def test_without_aux_outputs_and_with_list_counts() -> None:
    torch.manual_seed(0)
    cls_gt = labels_with_two_objects(t=2)
    batch = make_batch(cls_gt, [2, 2], 2)
    batch["num_objects"] = [2, 2]
    out = {"logits_1": torch.randn(2, 3, 32, 32), "masks_1": torch.rand(2, 2, 32, 32), "aux_1": {}}
    losses = LossComputer(SETTINGS).compute(batch, out)
    assert set(losses) == {"total_loss", "loss_ce", "loss_dice", "ce/t1", "dice/t1"}
    assert losses["total_loss"].item() == pytest.approx((losses["loss_ce"] + losses["loss_dice"]).item())


def test_same_seed_same_loss_and_float32_under_autocast() -> None:
    cls_gt = labels_with_two_objects(t=3)
    batch = make_batch(cls_gt, [2, 2], 2)
    logits = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    computer = LossComputer(SETTINGS)
    torch.manual_seed(9)
    first = computer.compute(batch, outputs_from_logits(logits))["total_loss"]
    torch.manual_seed(9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = computer.compute(batch, outputs_from_logits([lg.bfloat16() for lg in logits]))["total_loss"]
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(first.item(), rel=2e-2)  # only the bf16 rounding of the inputs
    torch.manual_seed(9)
    assert computer.compute(batch, outputs_from_logits(logits))["total_loss"].item() == first.item()


def test_settings_come_from_the_typed_stage_and_model(repo_root) -> None:
    from hydra import compose, initialize_config_dir

    from cutie.config.train import ConfigError, parse_train_config

    with initialize_config_dir(config_dir=str(repo_root / "cutie" / "config"), version_base="1.3"):
        cfg = parse_train_config(compose("train_config", overrides=["model.aux_loss.query.weight=0.5"]))
        off = parse_train_config(compose("train_config", overrides=["main_training.point_supervision=false"]))
    settings = LossSettings.of(cfg.main_training, cfg.model)
    assert (settings.num_points, settings.sensory_weight, settings.query_weight) == (12544, 0.01, 0.5)
    assert LossSettings.of(cfg.pre_training, cfg.model).num_points == 8192
    with pytest.raises(ConfigError, match="main_training.point_supervision"):
        LossSettings.of(off.main_training, off.model)


@pytest.mark.parametrize(
    "name", ["fixture_small_96x128_t4_o3.pt", "fixture_base_128x96_t4_o2.pt", "fixture_base_96x96_t3_o2.pt"]
)
def test_on_reference_fixture_outputs(reference_dir, name: str) -> None:
    """The official network's recorded outputs have the layout the loss expects (batch/output contract)."""
    fixture = load_reference(reference_dir / name)
    torch.manual_seed(0)
    losses = LossComputer(SETTINGS).compute(fixture["inputs"], fixture["outputs"])
    levels = fixture["outputs"]["aux_1"]["q_logits"].shape[2]
    frames = fixture["inputs"]["rgb"].shape[1]
    assert {f"aux_query_dice_l{lv}" for lv in range(levels)} <= set(losses)
    assert "aux_sensory_ce" in losses and {f"ce/t{t}" for t in range(1, frames)} <= set(losses)
    assert all(torch.isfinite(v) and v >= 0 for v in losses.values())
