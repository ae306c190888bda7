"""The Cutie network in the official checkpoint layout, and its training-mode clip forward."""

from cutie.config.model import ModelConfigError, ModelSpec, load_model_config
from cutie.model.network import CutieNet, build_network

__all__ = ["CutieNet", "ModelConfigError", "ModelSpec", "build_network", "load_model_config"]
