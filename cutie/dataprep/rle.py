"""The COCO RLE codec moved to cutie/utils/rle.py (the data index decodes SA-1B masks with it, and data may not
import dataprep); the converters' imports keep working through this name."""

from cutie.utils.rle import RLEError, check_segmentation, compressed_counts, decode, rle_total

__all__ = ["RLEError", "check_segmentation", "compressed_counts", "decode", "rle_total"]
