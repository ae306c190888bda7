"""Rendering a ClipRecipe into frames and masks: OpenCV on the CPU, or the DALI graph."""
