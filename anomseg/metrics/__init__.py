"""Metrics: anomaly (exact per-image metrics, the CAOS and pooled protocols, component metrics) and
closed-set segmentation (confusion matrix, mIoU).

``AnomalyMetrics(protocol=...)`` streams images (``update``), merges shards (``merge``,
:func:`reduce_distributed`) and returns a plain dict (``compute``).
"""

from anomseg.metrics.components import ComponentStats, image_components
from anomseg.metrics.curves import exact_metrics, group_metrics
from anomseg.metrics.distributed import reduce_distributed
from anomseg.metrics.evaluator import PROTOCOLS, AnomalyMetrics, MetricInputError, measure_batch
from anomseg.metrics.histogram import ScoreHistogram
from anomseg.metrics.segmentation import confusion_matrix, miou

__all__ = ["AnomalyMetrics", "MetricInputError", "PROTOCOLS", "ScoreHistogram", "ComponentStats",
           "exact_metrics", "group_metrics", "measure_batch", "image_components", "reduce_distributed", "confusion_matrix", "miou"]
