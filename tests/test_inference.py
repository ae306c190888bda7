"""The inference procedure: official fixtures, padding, memory bookkeeping, objects given on later frames."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cutie.inference.long_term import LongTermSettings
from cutie.inference.memory_bank import MemoryBank
from cutie.inference.processor import VideoProcessor
from cutie.inference.settings import InferenceSettings
from cutie.inference.tensor_ops import pad_to_multiple, stagger_steps, unpad
from cutie.model import build_network, load_model_config
from cutie.testing.reference_files import load_reference
from cutie.testing.reference_inference import check_inference_fixture
from cutie.testing.weights_rule import load_weights_rule

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
FIXTURES = sorted(REFERENCE.glob("inference_*.pt"))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_matches_official_inference_fixture(path: Path) -> None:
    fixture = load_reference(path)
    assert check_inference_fixture(fixture, REFERENCE) < 1e-4


def test_fixtures_present() -> None:
    assert len(FIXTURES) >= 2, f"inference fixtures missing under {REFERENCE}"


def test_padding_puts_the_odd_pixel_bottom_right() -> None:
    x = torch.arange(17 * 33, dtype=torch.float32).view(1, 17, 33)
    padded, pads = pad_to_multiple(x, 16)
    assert padded.shape == (1, 32, 48)
    assert pads == (7, 8, 7, 8)  # left, right, top, bottom
    assert torch.equal(padded[:, 7:24, 7:40], x)
    assert torch.equal(unpad(padded, pads), x)
    same, no_pads = pad_to_multiple(torch.zeros(2, 32, 16))
    assert no_pads == (0, 0, 0, 0) and torch.equal(unpad(same, no_pads), same)


def test_stagger_schedule() -> None:
    assert stagger_steps(5, 5) == {1, 2, 3, 4, 5}
    assert stagger_steps(3, 5) == {1, 2, 3}
    assert stagger_steps(10, 3) == {1, 6, 10}  # round(linspace(1, 10, 3)) = 1, 5.5 -> 6, 10


def test_settings_from_config() -> None:
    s = InferenceSettings.from_mapping(
        {"mem_every": 3, "top_k": None, "unrelated": 1, "long_term": {"num_prototypes": 7}}
    )
    assert s.mem_every == 3 and s.top_k == 30  # None means the default
    assert s.long_term.num_prototypes == 7 and s.long_term.max_mem_frames == 10
    with pytest.raises(ValueError, match="min_mem_frames"):
        LongTermSettings(max_mem_frames=4, min_mem_frames=4)


def _add_frame(bank: MemoryBank, tag: float, ids: list[int], hw: int = 2) -> None:
    key = torch.full((1, 4, hw, 1), tag)
    value = torch.full((1, len(ids), 3, hw, 1), tag)
    summaries = torch.ones(1, len(ids), 2, 5)
    bank.add(key, torch.ones(1, 1, hw, 1), value, summaries, ids)


def test_memory_keeps_the_first_frame_and_a_fifo() -> None:
    bank = MemoryBank(sensory_dim=8, max_mem_frames=3, top_k=30)
    for t in range(5):
        _add_frame(bank, float(t), [1, 2])
    (group,) = bank.groups
    # the permanent first frame + the 2 most recent frames (max_mem_frames counts the permanent one)
    assert group.key[0, 0].tolist() == [0, 0, 3, 3, 4, 4]
    assert group.values[2][0, 0].tolist() == [0, 0, 3, 3, 4, 4]
    assert torch.equal(bank.object_memory[1], torch.full((1, 2, 5), 5.0))  # summed over 5 frames
    # an object first given later gets its own group, with its first frame permanent
    _add_frame(bank, 5.0, [1, 2, 3])
    assert [g.object_ids for g in bank.groups] == [[1, 2], [3]]
    assert bank.groups[1].key[0, 0].tolist() == [5, 5] and bank.groups[1].permanent_tokens == 2
    assert bank.groups[0].key[0, 0].tolist() == [0, 0, 4, 4, 5, 5]


class _IdentityNet:
    """Stands in for the network in memory reads: the readout is the attended memory value itself."""

    def pixel_fusion(self, pix_feat, visual, sensory, last_mask):
        return visual

    def readout_query(self, pixel, obj_memory):
        return pixel, {}


def test_long_term_memory_consolidates_the_most_used_tokens() -> None:
    lt = LongTermSettings(max_mem_frames=4, min_mem_frames=2, num_prototypes=3, max_num_tokens=8, buffer_tokens=1)
    bank = MemoryBank(sensory_dim=2, max_mem_frames=5, top_k=None, long_term=lt)
    hw = 4

    def add(tag: float) -> None:
        key = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(int(tag)))
        value = torch.full((1, 1, 3, 2, 2), tag)
        bank.add(key, torch.ones(1, 1, 2, 2), value, torch.ones(1, 1, 2, 5), [1], selection=torch.ones(1, 4, 2, 2))

    add(0.0)
    add(1.0)
    add(1.0)
    (group,) = bank.groups
    assert group.temporary_tokens == 2 * hw and group.long_term is None
    # a read records usage: every query pixel's affinity sums to 1 over permanent + temporary tokens
    bank.init_sensory(torch.zeros(1, 4, 2, 2), [1])
    out = bank.read(_IdentityNet(), torch.zeros(1, 3, 2, 2), torch.randn(1, 4, 2, 2), torch.ones(1, 4, 2, 2),
                    torch.zeros(1, 1, 32, 32), [1])  # fmt: skip
    assert out.shape == (1, 1, 3, 2, 2)
    assert 0 < float(group.usage.use.sum()) <= hw + 1e-5
    assert torch.allclose(group.usage.life, torch.full((1, 2 * hw), 1 + 1e-7))
    group.usage.use = torch.arange(2 * hw, dtype=torch.float32)[None]  # known usage: the last tokens most used
    candidates = group.key[..., hw:].clone()  # both temporary frames: 8 tokens
    add(1.0)  # 3 temporary frames = max_mem_frames - 1: consolidate all but the newest min_mem_frames - 1 = 1
    assert group.temporary_tokens == hw and group.permanent_tokens == hw
    assert group.long_term.size == 3
    # prototypes: the 3 most used of the 8 candidate tokens (usage 7, 6, 5 -> tokens 7, 6, 5)
    assert torch.equal(group.long_term.key, candidates[..., [7, 6, 5]])
    # every candidate value was 1.0: the soft assignment of values keeps it
    assert torch.allclose(group.long_term.values[1], torch.ones(1, 3, 3))
    # the working memory keeps the permanent frame (value 0) and the newest frame (value 1)
    assert group.values[1][0, 0].tolist() == [0.0] * hw + [1.0] * hw
    for _ in range(6):  # more consolidations: long-term memory stays bounded by max_num_tokens
        add(1.0)
    assert group.long_term.size <= lt.max_num_tokens


@pytest.fixture(scope="module")
def small_net() -> torch.nn.Module:
    net = build_network(load_model_config("small"))
    rule = load_weights_rule(REFERENCE)
    net.load_state_dict(rule.fill_state_dict(net.state_dict(), seed=3))
    return net.eval()


def _video(t: int = 5, h: int = 48, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(t, 3, h, w, generator=gen)
    mask = torch.zeros(h, w, dtype=torch.long)
    mask[8:24, 8:30] = 1
    return frames, mask


def test_objects_given_on_later_frames(small_net: torch.nn.Module) -> None:
    frames, mask = _video(h=40, w=56)  # not multiples of 16: padded and cropped back
    later = torch.zeros_like(mask)
    later[25:38, 35:50] = 7
    proc = VideoProcessor(small_net, InferenceSettings(mem_every=2))
    first = proc.step(frames[0], mask)
    assert first.shape == (2, 40, 56) and torch.equal(proc.index_mask(first), mask)
    proc.step(frames[1])
    third = proc.step(frames[2], later)  # object 7 appears: merged with the prediction of object 1
    assert proc.object_ids == [1, 7] and third.shape == (3, 40, 56)
    assert torch.all(proc.index_mask(third)[later == 7] == 7)
    assert torch.allclose(third.sum(0), torch.ones(40, 56), atol=1e-5)
    assert [g.object_ids for g in proc.memory.groups] == [[1], [7]]
    out = proc.step(frames[3])
    last = proc.step(frames[4], end=True)
    assert out.shape == last.shape == (3, 40, 56)
    assert proc.last_mem_index == 2  # frame 4 is the end: never memorised


def test_flip_augmentation_is_mirror_symmetric(small_net: torch.nn.Module) -> None:
    frames, mask = _video(t=3)
    frames = (frames + torch.flip(frames, dims=[-1])) / 2  # mirror-symmetric video
    mask = mask | torch.flip(mask, dims=[-1])
    proc = VideoProcessor(small_net, InferenceSettings(flip_aug=True))
    proc.step(frames[0], mask)
    for t in (1, 2):
        prob = proc.step(frames[t], end=t == 2)
        assert torch.equal(prob, torch.flip(prob, dims=[-1]))


def test_long_term_procedure_runs_bounded(small_net: torch.nn.Module) -> None:
    frames, mask = _video(t=8, h=32, w=32)
    lt = LongTermSettings(max_mem_frames=3, min_mem_frames=2, num_prototypes=2, max_num_tokens=6, buffer_tokens=1)
    proc = VideoProcessor(small_net, InferenceSettings(mem_every=1, use_long_term=True, long_term=lt))
    proc.step(frames[0], mask)
    for t in range(1, 8):
        prob = proc.step(frames[t], end=t == 7)
        assert torch.allclose(prob.sum(0), torch.ones(32, 32), atol=1e-5)
    (group,) = proc.memory.groups
    assert group.long_term is not None and group.long_term.size <= lt.max_num_tokens
    assert group.temporary_tokens < (lt.max_mem_frames - 1) * 4  # 2x2 tokens per 32x32 frame


def test_max_internal_size_restores_the_input_size(small_net: torch.nn.Module) -> None:
    frames, mask = _video(t=3, h=48, w=64)
    proc = VideoProcessor(small_net, InferenceSettings(max_internal_size=32))
    first = proc.step(frames[0], mask)
    assert proc.last_mask.shape[-2:] == (32, 48)  # 48x64 -> 32x42, padded to 32x48 inside
    assert first.shape == (2, 48, 64)
    assert proc.step(frames[1]).shape == proc.step(frames[2], end=True).shape == (2, 48, 64)


def test_internal_resize_of_the_mask_uses_pixel_centres(small_net: torch.nn.Module) -> None:
    """With max_internal_size active the given mask is resized with nearest-exact, as the official procedure."""
    frames, _ = _video(t=1, h=48, w=64)
    mask = torch.zeros(48, 64, dtype=torch.long)
    mask[:, 1::3] = 1  # thin stripes: nearest and nearest-exact pick different source columns
    proc = VideoProcessor(small_net, InferenceSettings(max_internal_size=32))
    proc.step(frames[0], mask)
    size = (32, 42)
    exact = torch.nn.functional.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0]
    plain = torch.nn.functional.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0]
    assert not torch.equal(exact, plain)  # the two rules really differ on this mask
    expected, _ = pad_to_multiple(exact, 16)
    assert torch.equal((proc.last_mask[0, 0] > 0.5).float(), expected)


def test_no_memory_and_no_mask_gives_zeros(small_net: torch.nn.Module) -> None:
    """Segmenting before any memory exists returns one all-zero channel (the official result) and memorises
    nothing; the first mask after that starts the video as usual."""
    frames, mask = _video(t=2, h=40, w=56)
    proc = VideoProcessor(small_net, InferenceSettings(mem_every=1))
    empty = proc.step(frames[0])
    assert empty.shape == (1, 40, 56) and torch.count_nonzero(empty) == 0
    assert not proc.memory.engaged and proc.object_ids == []
    first = proc.step(frames[1], mask)
    assert torch.equal(proc.index_mask(first), mask)


@pytest.mark.parametrize("flag", ["--threads", "--height", "--objects"])
def test_benchmark_inference_refuses_sizes_below_one_in_one_line(repo_root, flag):
    proc = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "benchmark_inference.py"), flag, "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{flag} must be >= 1, got 0" in proc.stderr and "Traceback" not in proc.stderr
