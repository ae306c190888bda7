"""Two-stage training: a pure step (data -> loss -> backward -> step) with checkpointing, logging, curriculum and
validation around it as hooks."""
