"""The official semi-supervised inference procedure over a video (memory bank, per-frame steps), dataset
runs and validation."""

from cutie.inference.processor import VideoProcessor
from cutie.inference.settings import InferenceSettings
from cutie.inference.validate import validate

__all__ = ["InferenceSettings", "VideoProcessor", "validate"]
