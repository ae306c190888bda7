"""DaliClipLoader: the DALI backend of the training loader (loader=dali), with TrainLoader's interface.

Samples come from the same picklable `recipe_source(global_index) -> ClipRecipe` as the torch backend, so a sample
is the same whatever the backend, worker count, thread count or resume point. The parallel external source maps
DALI's sample_info to the global index of the TrainLoader contract: iteration it, rank r, slot j ->
g = it * batch * world + r * batch + j, with it = start_iteration + sample_info.iteration (the source never ends
an epoch, so DALI's iteration counter runs on). The max-skip curriculum needs nothing here: the recipe source
derives it from each sample's own iteration, and its override lives in shared memory that the forked or spawned
source workers read on every call.

Corrupt files: a JPEG that fails inside DALI's decoder would kill the whole batch, so DALI never sees one. The
recipe source checks every file it reads (start-of-image marker and header parse; masks fully decoded) and
redraws the sample deterministically, listing the failures in recipe.info['bad_paths']; the source passes their
count through the graph and this loader adds them to `bad_samples`, as TrainLoader does.

Python workers start with fork on the CPU (fast) and with spawn once CUDA is initialised (DALI cannot fork a
process that uses CUDA, NVIDIA/DALI#3182), which needs the picklable, module-level source below.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import torch

from cutie.data.dali_pipeline import OUTPUT_NAMES, SourceLayout, build_pipeline, pack_recipe
from cutie.data.recipe import ClipRecipe


class DaliSampleSource:
    """`source(sample_info) -> packed recipe` for `fn.external_source(batch=False, parallel=True)`: stateless per
    call and picklable (it carries the recipe source, which is sent to every worker once)."""

    def __init__(
        self,
        recipe_source: Callable[[int], ClipRecipe],
        layout: SourceLayout,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        start_iteration: int = 0,
    ) -> None:
        self.recipe_source = recipe_source
        self.layout = layout
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.start_iteration = int(start_iteration)

    def global_index(self, iteration: int, slot: int) -> int:
        """The global sample index of slot `slot` of this rank's batch at DALI iteration `iteration`."""
        it = self.start_iteration + iteration
        return (it * self.world_size + self.rank) * self.batch_size + slot

    def __call__(self, sample_info: Any) -> tuple:
        g = self.global_index(sample_info.iteration, sample_info.idx_in_batch)
        recipe = self.recipe_source(g)
        bad = len((recipe.info or {}).get("bad_paths", ()))
        return pack_recipe(recipe, self.layout, index=g, bad_samples=bad)


def make_batch(
    rgb: torch.Tensor, cls_gt: torch.Tensor, num_objects: torch.Tensor, max_objects: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """The batch dict of docs/architecture.md from the pipeline's outputs (any device) on `device`."""
    rgb = rgb.to(device, non_blocking=True).float()  # B*T*3*H*W in [0, 1]
    cls_gt = cls_gt.to(device, non_blocking=True).long().unsqueeze(2)  # B*T*1*H*W
    num_objects = num_objects.to(device).long().reshape(-1)  # B
    ids = torch.arange(1, max_objects + 1, device=device).view(1, max_objects, 1, 1)
    first_frame_gt = (cls_gt[:, 0] == ids).long().unsqueeze(1)  # B*1*O*H*W
    selector = (torch.arange(max_objects, device=device).view(1, -1) < num_objects.view(-1, 1)).float()  # B*O
    return {
        "rgb": rgb,
        "first_frame_gt": first_frame_gt,
        "cls_gt": cls_gt,
        "selector": selector,
        "num_objects": num_objects,
    }


class DaliClipLoader:
    """Training batches rendered by DALI: `iterate(start_iteration)` yields batch dicts on `device` forever."""

    def __init__(
        self,
        recipe_source: Callable[[int], ClipRecipe],
        *,
        batch_size: int,
        seq_length: int,
        crop_size: tuple[int, int],
        num_objects: int,
        max_layers: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        num_threads: int = 2,
        num_workers: int = 2,
        prefetch_queue_depth: int = 2,
        max_bad_fraction: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.recipe_source = recipe_source
        self.layout = SourceLayout(int(seq_length), (int(crop_size[0]), int(crop_size[1])), int(max_layers))
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.max_objects = int(num_objects)
        self.device = torch.device(device)
        self.num_threads, self.num_workers = max(1, int(num_threads)), max(1, int(num_workers))
        self.prefetch_queue_depth = int(prefetch_queue_depth)
        self.max_bad_fraction = float(max_bad_fraction)
        self.seed = int(seed)
        self.bad_samples = 0  # replaced samples seen so far (read by the progress hook)
        self.samples_seen = 0
        self._pipe = None
        self._iter = None

    # ---- TrainLoader interface
    def max_skip_for(self, iteration: int) -> int | None:
        fn = getattr(self.recipe_source, "max_skip_for", None)
        return fn(iteration) if fn is not None else None

    def set_max_skip(self, value: int | None) -> None:
        self.recipe_source.set_max_skip(value)

    def iterate(self, start_iteration: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of iterations start_iteration, start_iteration + 1, ... (a new pipeline per call)."""
        self._shutdown()
        source = DaliSampleSource(
            self.recipe_source, self.layout, self.batch_size, self.rank, self.world_size, start_iteration
        )
        gpu = self.device.type == "cuda"
        self._pipe = build_pipeline(
            source,
            self.layout,
            batch_size=self.batch_size,
            device_id=(self.device.index or 0) if gpu else None,
            num_threads=self.num_threads,
            py_num_workers=self.num_workers,
            seed=self.seed + self.rank,  # unused by the graph (no DALI random ops); per rank all the same
            prefetch_queue_depth=self.prefetch_queue_depth,
            py_start_method="spawn" if gpu and torch.cuda.is_initialized() else "fork",
        )
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self._iter = DALIGenericIterator(self._pipe, OUTPUT_NAMES)
        return self._batches(self._iter)

    def _batches(self, it) -> Iterator[dict[str, torch.Tensor]]:
        for outputs in it:
            out = outputs[0]  # one pipeline
            self._count_bad(out["bad_samples"])
            yield make_batch(out["rgb"], out["cls_gt"], out["num_objects"], self.max_objects, self.device)

    def _count_bad(self, bad: torch.Tensor) -> None:
        self.bad_samples += int(bad.sum())
        self.samples_seen += int(bad.numel())
        if self.bad_samples > self.max_bad_fraction * max(self.samples_seen, 1) and self.bad_samples > 1:
            raise RuntimeError(
                f"{self.bad_samples} of {self.samples_seen} samples hit unreadable files (more than "
                f"max_bad_sample_fraction={self.max_bad_fraction}); the log lists them (fix: check the data)"
            )

    def _shutdown(self) -> None:
        # Dropping the last references shuts the pipeline and its Python workers down (DALI's finalizers).
        self._iter = None
        self._pipe = None
        gc.collect()

    def close(self) -> None:
        self._shutdown()
        close = getattr(self.recipe_source, "close", None)
        if close is not None:
            close()
