"""Shared-memory batch slots and recycled CPU batch memory: nothing a consumer still holds is ever overwritten."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cutie.data.loaders.build import build_train_loader
from cutie.data.loaders.recycle import RecycledArrays
from cutie.data.loaders.slots import BatchSlots, SharedMemoryTooSmallError, check_shared_memory, slots_needed
from cutie.testing.synthetic import make_video_dataset


def test_slot_protocol_orders_writers_by_iteration() -> None:
    slots = BatchSlots(3, 1, 2, (4, 4), shared=False)
    slots.reset(5)  # slots 2, 0, 1 are next written by iterations 5, 6, 7
    assert [slots.wait_writable(i) for i in (5, 6, 7)] == [2, 0, 1]
    done = threading.Event()

    def writer() -> None:  # iteration 8 reuses iteration 5's slot
        slots.wait_writable(8)
        done.set()

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    time.sleep(0.05)
    assert not done.is_set()  # the main process has not read batch 5 yet
    slots.release(5)
    th.join(timeout=5)
    assert done.is_set()
    with pytest.raises(RuntimeError, match="older"):
        slots.wait_writable(2)  # an iteration before the start can never write
    assert slots_needed(2, 2) == 6 and slots_needed(0, 2) == 3


def test_shared_memory_shortage_is_reported_before_training(tmp_path: Path) -> None:
    with pytest.raises(SharedMemoryTooSmallError, match="shm-size"):
        check_shared_memory(1 << 60, where=str(tmp_path))
    check_shared_memory(1, where=str(tmp_path))


def test_recycled_arrays_are_reused_only_when_nothing_holds_them() -> None:
    # (values are taken into plain locals: pytest's assert rewriting would keep tensors alive)
    pool = RecycledArrays(max_arrays=2)
    a = pool.empty((2, 3), np.float32)
    ptr_a = a.data_ptr()
    view = a[1:]  # a view keeps the memory in use
    del a
    b = pool.empty((2, 3), np.float32)
    ptr_b, pooled = b.data_ptr(), len(pool)
    assert ptr_b != ptr_a and pooled == 2
    del view
    ptr_again = pool.empty((2, 3), np.float32).data_ptr()
    assert ptr_again == ptr_a  # free again: the same memory comes back
    saved = b * 1  # an unrelated tensor does not pin b
    del b, saved
    c = pool.empty((5,), np.int64)  # another shape, pool full: the unused arrays are dropped
    dtype, shape, pooled = c.dtype, tuple(c.shape), len(pool)
    assert dtype == torch.int64 and shape == (5,) and pooled == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_kept_by_the_consumer_stay_intact(tmp_path: Path, workers: int) -> None:
    """Batches held while the loader runs ahead (slots and CPU memory are reused) equal a fresh run's."""
    make_video_dataset(str(tmp_path / "v"), videos=2, frames=10, size=(40, 60), object_ids=(1, 2))
    data = {
        "vos_datasets": {
            "v": {
                "image_directory": "v/JPEGImages",
                "mask_directory": "v/Annotations",
                "multiplier": 1,
                "frame_interval": 1,
                "subset": None,
                "empty_masks": None,
            }
        },
        "image_datasets": {},
        "main_training": {"datasets": ["v"]},
        "pre_training": {"datasets": []},
    }
    stage = {"seq_length": 3, "num_objects": 2, "crop_size": [32, 32], "merge_probability": 0.5}

    def run(keep: int, total: int) -> list[dict]:
        loader = build_train_loader(
            data,
            stage,
            stage="main_training",
            data_root=str(tmp_path),
            cache_root=str(tmp_path / "cache"),
            seed=1,
            rank=0,
            world_size=1,
            batch_size=2,
            num_workers=workers,
            device=torch.device("cpu"),
            backend="torch",
            total_iterations=100,
        )
        try:
            it = loader.iterate(0)
            kept = [next(it) for _ in range(keep)]
            for _ in range(total - keep):
                next(it)  # more batches than there are slots and pooled arrays
            return kept
        finally:
            loader.close()

    kept = run(keep=3, total=3 + 2 * slots_needed(workers, 2) + 2)
    fresh = run(keep=3, total=3)
    for a, b in zip(kept, fresh, strict=True):
        for key in ("rgb", "cls_gt", "first_frame_gt", "num_objects"):
            assert torch.equal(a[key], b[key]), key


def test_batches_from_the_copy_stream_are_kept_for_the_step(monkeypatch) -> None:
    """On a GPU every device tensor of a batch copied on the side stream is marked as used by the compute stream
    (record_stream), and the host-side values of the batch (object_counts) are left alone."""
    from cutie.data.loaders.base import TrainLoader
    from cutie.data.loaders.torch_loader import keep_for

    loader = TrainLoader(None, num_objects=2, batch_size=2, rank=0, world_size=1, device=torch.device("cpu"))
    batch = loader._to_batch(
        torch.zeros(2, 3, 3, 8, 8, dtype=torch.uint8), torch.ones(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([1, 2])
    )
    marked: list[tuple[int, object]] = []
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: marked.append((id(t), s)), raising=False)
    stream = object()  # stands for the compute stream
    keep_for(batch, stream)
    tensors = [v for v in batch.values() if torch.is_tensor(v)]
    assert len(tensors) == 5 and batch["object_counts"] == (1, 2)
    assert sorted(marked, key=lambda m: m[0]) == sorted(((id(t), stream) for t in tensors), key=lambda m: m[0])
