"""Validation over several processes (cutie/inference/shards.py, validate(dist_state=...)): the split of the
videos, the exact merge of the per-object records, and 2-process runs (torchrun + gloo on the CPU) that give the
table of one process bit for bit, cope with a rank without a video and end every rank on one rank's error."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _damage import wrong_size_mask
from _helpers import file_tree
from test_train_e2e import _common, _run

from cutie.inference.runner import InferenceOutOfMemory
from cutie.inference.shards import DistributedValidationError, RankShare, VideoScores, balanced_shards, merge
from cutie.metrics.davis import GLOBAL_COLUMNS, DavisReport, ObjectResult, Unscored
from cutie.utils.atomic import DiskFullError
from cutie.utils.dist import DistState

REPO = Path(__file__).resolve().parents[1]
WORKER = str(REPO / "tests" / "_dist_validate.py")
DAVIS_VAL = Path("DAVIS/2017/trainval")


@pytest.mark.parametrize("world_size", [1, 2, 3, 8, 40])
def test_shards_cover_every_video_once_and_balance_the_frames(world_size: int) -> None:
    counts = [int(c) for c in np.random.default_rng(0).integers(25, 105, size=30)]  # DAVIS 2017 val's range
    shards = balanced_shards(counts, world_size)
    assert len(shards) == world_size
    assert sorted(i for s in shards for i in s) == list(range(30))
    assert all(s == sorted(s) for s in shards)  # each share in video order
    assert shards == balanced_shards(counts, world_size)  # the same on every rank
    loads = [sum(counts[i] for i in s) for s in shards]
    # the greedy bound: the slowest rank is within 4/3 of the best possible split's lower bound
    assert max(loads) <= 4 / 3 * max(sum(counts) / world_size, max(counts))
    if world_size > 30:
        assert sum(1 for s in shards if not s) == world_size - 30
    assert balanced_shards([10, 8], 2) == [[0], [1]] and balanced_shards([], 3) == [[], [], []]
    assert balanced_shards([5, 5, 5, 5], 2) == [[0, 2], [1, 3]]  # ties: the lower rank, longest first


def _objects(rng: np.random.Generator, video: str, n: int) -> list[ObjectResult]:
    return [ObjectResult(video, k + 1, rng.random(7), rng.random(7)) for k in range(n)]


def test_merge_is_the_one_process_report_bit_for_bit() -> None:
    """Whichever rank scored which video, the merged report is the sequential one, in video order."""
    rng = np.random.default_rng(1)
    names = tuple(f"v{i}" for i in range(7))
    per_video = [(_objects(rng, v, int(rng.integers(1, 4))), [Unscored(v, 9, "late")] if i % 3 else [])
                 for i, v in enumerate(names)]  # fmt: skip
    sequential = DavisReport([])
    for objects, unscored in per_video:
        sequential.objects += objects
        sequential.unscored += unscored
    for world_size in (2, 3, 9):
        shards = balanced_shards([int(c) for c in rng.integers(1, 50, size=len(names))], world_size)
        shares = [RankShare(r, names, [VideoScores(i, *per_video[i]) for i in s], frames=len(s), seconds=r + 0.5)
                  for r, s in enumerate(shards)]  # fmt: skip
        report, frames, seconds = merge(shares)
        assert [o.name for o in report.objects] == [o.name for o in sequential.objects]
        assert report.unscored == sequential.unscored
        assert report.summary() == sequential.summary()  # equal, not approximately
        assert frames == len(names) and seconds == world_size - 0.5  # the slowest rank's time


def test_merge_raises_one_error_for_every_rank() -> None:
    names = ("a", "b")
    ok = RankShare(0, names, [VideoScores(0, [], [Unscored("a", None, "x")])])
    bad = RankShare(1, names, error="b: ValueError: b/00003.png: wrong size")
    with pytest.raises(DistributedValidationError, match=r"^validation failed on rank 1: b: ValueError: b/00003"):
        merge([ok, bad])
    full = RankShare(2, names, error="b: DiskFullError: no space", disk_full=True)
    with pytest.raises(DiskFullError, match=r"on rank 1 \(and on rank\(s\) 2\)"):
        merge([ok, bad, full])
    with pytest.raises(DistributedValidationError, match=r"rank\(s\) \[1\] read another list"):
        merge([ok, RankShare(1, ("a",), [])])
    with pytest.raises(DistributedValidationError, match=r"no rank segmented \['b'\]"):
        merge([ok, RankShare(1, names, [])])
    with pytest.raises(DistributedValidationError, match="scored twice"):
        merge([ok, RankShare(1, names, [VideoScores(0, [], []), VideoScores(1, [], [])])])
    # out of device memory on every failed rank: that error, so that training skips this validation on every rank
    oom = RankShare(1, names, error="b: InferenceOutOfMemory: video b, frame 00003", out_of_memory=2)
    said = r"^validation failed on rank 1 \(and on rank\(s\) 2\): b: InferenceOutOfMemory"
    with pytest.raises(InferenceOutOfMemory, match=said) as info:
        merge([ok, oom, RankShare(2, names, error="a: InferenceOutOfMemory: video a", out_of_memory=3)])
    assert info.value.objects == 3
    with pytest.raises(DistributedValidationError, match=r"on rank 1 \(and on rank\(s\) 2\)"):  # not only memory
        merge([ok, oom, RankShare(2, names, error="a: ValueError: x")])


def test_a_rank_that_cannot_list_the_videos_still_meets_the_others(tmp_path: Path, monkeypatch) -> None:
    """A missing subset file on this rank: it sends its error with the (empty) scores instead of raising before
    the collective (the others would wait there); the collective here stands in for 2 ranks."""
    validate_module = importlib.import_module("cutie.inference.validate")  # the package exports the function

    sent: list[RankShare] = []

    def gather(share: RankShare, *, host: bool = False) -> list[RankShare]:
        sent.append(share)
        assert host  # over the host group, off the GPU
        return [share, RankShare(1, share.videos)]

    monkeypatch.setattr(validate_module.dist, "all_gather_object", gather)
    net = torch.nn.Linear(1, 1).train()
    with pytest.raises(DistributedValidationError, match=r"on rank 0: \(listing the videos\): FileNotFoundError"):
        validate_module.validate(net, image_dir=str(tmp_path), mask_dir=str(tmp_path), subset=str(tmp_path / "no.txt"),
                                 device="cpu", dist_state=DistState(rank=0, world_size=2))  # fmt: skip
    assert len(sent) == 1 and sent[0].scores == [] and net.training


def test_a_video_that_cannot_be_counted_is_named_in_the_error(tmp_path: Path, monkeypatch) -> None:
    """A video folder whose frames cannot be listed (EACCES, which root here cannot produce: simulated) is named
    in the error every rank raises, not '(listing the videos)'."""
    validate_module = importlib.import_module("cutie.inference.validate")
    for video in ("a", "b"):
        (tmp_path / "img" / video).mkdir(parents=True)
        (tmp_path / "mask" / video).mkdir(parents=True)

    def count(image_dir, name: str) -> int:
        if name == "b":
            raise PermissionError(13, "Permission denied", str(Path(image_dir) / name))
        return 1

    monkeypatch.setattr(validate_module, "count_frames", count)
    monkeypatch.setattr(
        validate_module.dist, "all_gather_object", lambda share, host=False: [share, RankShare(1, share.videos)]
    )
    with pytest.raises(DistributedValidationError, match=r"on rank 0: b: PermissionError"):
        validate_module.validate(torch.nn.Linear(1, 1), image_dir=str(tmp_path / "img"),
                                 mask_dir=str(tmp_path / "mask"), subset=None, device="cpu",
                                 dist_state=DistState(rank=0, world_size=2))  # fmt: skip


def test_a_rank_out_of_memory_sends_it_as_such(tmp_path: Path, monkeypatch) -> None:
    """The failing rank marks its share, so that every rank raises InferenceOutOfMemory (not a generic
    DistributedValidationError) with the objects of the frame that did not fit."""
    validate_module = importlib.import_module("cutie.inference.validate")
    for video in ("a", "b"):
        (tmp_path / "img" / video).mkdir(parents=True)
        (tmp_path / "mask" / video).mkdir(parents=True)

    def segment(network, name, **kw) -> None:
        raise InferenceOutOfMemory(f"video {name}, frame 00002 (480x854, 2 object(s)): the network needs more", 2)

    sent: list[RankShare] = []

    def gather(share: RankShare, *, host: bool = False) -> list[RankShare]:
        sent.append(share)
        return [share, RankShare(1, share.videos)]

    monkeypatch.setattr(validate_module, "count_frames", lambda image_dir, name: 1)
    monkeypatch.setattr(validate_module, "segment_and_score", segment)
    monkeypatch.setattr(validate_module.dist, "all_gather_object", gather)
    with pytest.raises(InferenceOutOfMemory, match=r"on rank 0: a: InferenceOutOfMemory: video a, frame 00002") as e:
        validate_module.validate(torch.nn.Linear(1, 1), image_dir=str(tmp_path / "img"),
                                 mask_dir=str(tmp_path / "mask"), subset=None, device="cpu",
                                 dist_state=DistState(rank=0, world_size=2))  # fmt: skip
    assert e.value.objects == 2 and sent[0].out_of_memory == 2


def _launch(data: Path, out: Path, jobs: list[str], processes: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes else []
    cmd = [sys.executable, *launcher, WORKER, "--data", str(data), "--reference", str(REPO.parent / "shared/reference"),
           "--out", str(out), *(a for j in jobs for a in ("--job", j))]  # fmt: skip
    # the timeout is the no-hang check: a rank left in a collective would keep the launch from ending
    return subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)


def _result(out: Path, job: str, rank: int) -> dict:
    return json.loads((out / job / f"rank{rank}.json").read_text())


def _table(result: dict) -> dict[str, float]:
    assert "metrics" in result, result
    return {k: result["metrics"][k] for k in GLOBAL_COLUMNS}


@pytest.mark.slow
def test_two_ranks_give_the_one_process_table_and_split_the_videos(tiny_data: Path, tmp_path: Path) -> None:
    """Also with max_videos=1: more ranks than videos, rank 1 segments nothing and still takes part."""
    data = tiny_data / DAVIS_VAL
    videos = sorted((data / "ImageSets/2017/val.txt").read_text().split())
    assert len(videos) == 2
    jobs = ["all", "first:1"]
    one, two = tmp_path / "one", tmp_path / "two"
    for out, processes in ((one, 0), (two, 2)):
        out.mkdir()
        proc = _launch(data, out, jobs, processes)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for job in ("all", "first"):
        reference = _result(one, job, 0)
        assert reference["world_size"] == 1
        for rank in (0, 1):
            result = _result(two, job, rank)
            assert result["world_size"] == 2
            assert _table(result) == _table(reference)  # equal, not approximately, on both ranks
            assert result["metrics"]["fps"] > 0
    shares = [sorted(p.name for p in (two / "all" / f"masks-rank{r}").iterdir()) for r in (0, 1)]
    assert all(shares) and not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == videos
    merged = {**file_tree(two / "all" / "masks-rank0"), **file_tree(two / "all" / "masks-rank1")}
    assert merged == file_tree(one / "all" / "masks-rank0")  # each rank wrote its videos' masks, the same bytes
    assert sorted(p.name for p in (two / "first" / "masks-rank0").iterdir()) == videos[:1]
    assert not (two / "first" / "masks-rank1").exists()  # no video for rank 1


@pytest.mark.slow
def test_an_error_on_one_rank_ends_every_rank_with_it(tiny_data: Path, tmp_path: Path) -> None:
    """A ground-truth mask of another size in the video rank 1 segments: rank 0 finishes its own video, then
    both ranks raise the same error naming rank, video and file, and the launch ends (no rank hangs)."""
    data = tmp_path / "val"
    shutil.copytree(tiny_data / DAVIS_VAL, data)
    counts = {v: len(list((data / "JPEGImages/480p" / v).iterdir())) for v in ("crossing", "juggle")}
    assert balanced_shards([counts["crossing"], counts["juggle"]], 2) == [[0], [1]]  # juggle is rank 1's
    bad = sorted((data / "Annotations/480p/juggle").glob("*.png"))[3]
    wrong_size_mask(bad)
    out = tmp_path / "run"
    out.mkdir()
    proc = _launch(data, out, ["all"], 2)
    assert proc.returncode != 0
    results = [_result(out, "all", r) for r in (0, 1)]
    assert results[0] == results[1], results  # one error, word for word, on both ranks
    assert results[0]["type"] == "DistributedValidationError"
    assert results[0]["error"].startswith("validation failed on rank 1: juggle: ValueError: ")
    assert str(bad) in results[0]["error"]
    assert (out / "all" / "masks-rank0" / "crossing").is_dir()  # rank 0 did its share


@pytest.mark.slow
def test_training_under_torchrun_validates_on_every_rank(tiny_data: Path, tmp_path: Path) -> None:
    """The hook: both ranks validate at the end of main training, rank 0 logs and writes best.pth."""
    args = _common(tiny_data, tmp_path, "dval") + [
        "pre_training.enabled=False",
        "main_training.num_iterations=2",
        "main_training.lr_schedule_steps=[1]",
        "num_workers=0",
    ]
    proc = _run(args, tmp_path, torchrun=2)
    run = tmp_path / "output" / "dval"
    assert (run / "best.pth").is_file(), proc.stdout[-3000:]
    log = (run / "train.log").read_text()
    assert "validation at iteration 2: J&F-Mean" in log and "validation on 2 videos over 2 processes" in proc.stdout
    assert sorted(p.name for p in (run / "val" / "main_training_0000002").iterdir()) == ["crossing", "juggle"]
