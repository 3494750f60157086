"""anomseg: pixel-level anomaly segmentation for driving scenes.

Conventions used everywhere in the package:

* images are uint8 (H, W, 3) RGB;
* ``semantic`` targets are int64 (H, W) closed-set train ids 0..K-1, 255 = ignore;
* ``anomaly`` targets are uint8 (H, W): 0 = inlier, 1 = anomaly, 255 = void;
* score maps are float32 (N, H, W) or (H, W) and higher means more anomalous.
"""

__version__ = "0.1.0"

# the public API, imported on first use (``import anomseg`` stays light): name -> module
_EXPORTS = {
    "AnomalySegmenter": "anomseg.segmenter", "PipelineError": "anomseg.segmenter",
    "build_dataset": "anomseg.data", "generate_synthetic": "anomseg.data", "DATASETS": "anomseg.data",
    "build_backbone": "anomseg.models", "load_checkpoint": "anomseg.models", "BACKBONES": "anomseg.models",
    "predict": "anomseg.models.inference",
    "Method": "anomseg.methods", "Observation": "anomseg.methods", "METHODS": "anomseg.methods",
    "build_method": "anomseg.methods", "register_method": "anomseg.methods",
    "AnomalyMetrics": "anomseg.metrics", "miou": "anomseg.metrics", "confusion_matrix": "anomseg.metrics",
    "FeatureBank": "anomseg.bank", "extract_bank": "anomseg.bank",
    "build_head": "anomseg.heads", "load_head": "anomseg.heads", "save_head": "anomseg.heads",
    "train_segmentation": "anomseg.engine", "run_head_training": "anomseg.engine",
    "run_evaluation": "anomseg.engine", "render_overlays": "anomseg.engine", "run_tuning": "anomseg.engine",
    "run_demo": "anomseg.engine",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'anomseg' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
