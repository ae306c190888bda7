"""Clip sampling: every random choice of a sample, from (seed, sample index), as a ClipRecipe."""
