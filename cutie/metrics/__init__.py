"""DAVIS 2017 semi-supervised metrics (J&F), our own implementation of the toolkit's protocol, and the SA-V
val/test per-object scoring."""

from cutie.metrics.davis import (
    GLOBAL_COLUMNS,
    DavisReport,
    ObjectResult,
    Unscored,
    evaluate_folders,
    evaluate_sequence,
    read_index_mask,
)
from cutie.metrics.measures import boundary_f_measure, boundary_map, mean_recall_decay, region_similarity
from cutie.metrics.sav import SavReport, evaluate_sav_folders, is_sav_layout

__all__ = [
    "GLOBAL_COLUMNS",
    "DavisReport",
    "ObjectResult",
    "SavReport",
    "Unscored",
    "boundary_f_measure",
    "boundary_map",
    "evaluate_folders",
    "evaluate_sav_folders",
    "evaluate_sequence",
    "mean_recall_decay",
    "is_sav_layout",
    "read_index_mask",
    "region_similarity",
]
