"""Everything around the pure step: each hook has one job."""

from cutie.training.hooks.base import Hook
from cutie.training.hooks.checkpointing import CheckpointHook
from cutie.training.hooks.curriculum import CurriculumHook
from cutie.training.hooks.images import ImageHook
from cutie.training.hooks.nonfinite import NonFiniteHook
from cutie.training.hooks.progress import ProgressHook
from cutie.training.hooks.validation import ValidationHook

__all__ = [
    "CheckpointHook",
    "CurriculumHook",
    "Hook",
    "ImageHook",
    "NonFiniteHook",
    "ProgressHook",
    "ValidationHook",
]
