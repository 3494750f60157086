"""Training loops: segmentation (this package), heads (anomseg.heads)."""

from anomseg.train.seg_trainer import DEFAULTS as SEG_DEFAULTS
from anomseg.train.seg_trainer import SCHEMA as SEG_SCHEMA
from anomseg.train.seg_trainer import evaluate_miou, train_segmentation

__all__ = ["train_segmentation", "evaluate_miou", "SEG_DEFAULTS", "SEG_SCHEMA"]
