"""Cutie training environment: the network in the official layout, the clip data pipeline, two-stage training."""

__version__ = "0.1.0"
