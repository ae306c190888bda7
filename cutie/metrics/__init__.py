"""DAVIS 2017 semi-supervised metrics (J&F), our own implementation of the toolkit's protocol."""

from cutie.metrics.davis import (
    GLOBAL_COLUMNS,
    DavisReport,
    ObjectResult,
    evaluate_folders,
    evaluate_sequence,
    read_index_mask,
)
from cutie.metrics.measures import boundary_f_measure, boundary_map, mean_recall_decay, region_similarity

__all__ = [
    "GLOBAL_COLUMNS",
    "DavisReport",
    "ObjectResult",
    "boundary_f_measure",
    "boundary_map",
    "evaluate_folders",
    "evaluate_sequence",
    "mean_recall_decay",
    "read_index_mask",
    "region_similarity",
]
