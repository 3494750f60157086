"""The runners, side by side: each is the library function behind one tool and imports the layers
below it (data, models, methods, bank, metrics); nothing below imports a runner. Each name is imported on
first use: a tool pays only for its own runner.

* :func:`train_segmentation` (``tools/train_seg.py``) -- :mod:`anomseg.engine.train_seg`
* :func:`run_head_training` (``tools/train_head.py``): banks, then heads -- :mod:`anomseg.engine.train_heads`
* :func:`run_evaluation` (``tools/eval_caos.py``), :func:`render_overlays` (``tools/visualize.py``) --
  :mod:`anomseg.engine.evaluate`
* :func:`run_tuning` (``tools/tune.py``) -- :mod:`anomseg.engine.tune`
* :func:`run_demo` (``tools/demo.py``) -- :mod:`anomseg.engine.demo`
"""

# name -> (module, attribute)
_EXPORTS = {
    "run_demo": ("anomseg.engine.demo", "run_demo"),
    "run_evaluation": ("anomseg.engine.evaluate", "run_evaluation"),
    "render_overlays": ("anomseg.engine.evaluate", "render_overlays"),
    "EVAL_DEFAULTS": ("anomseg.engine.evaluate", "DEFAULTS"), "EVAL_SCHEMA": ("anomseg.engine.evaluate", "SCHEMA"),
    "run_head_training": ("anomseg.engine.train_heads", "run_head_training"),
    "build_banks": ("anomseg.engine.train_heads", "build_banks"),
    "HEAD_DEFAULTS": ("anomseg.engine.train_heads", "DEFAULTS"), "HEAD_SCHEMA": ("anomseg.engine.train_heads", "SCHEMA"),
    "train_segmentation": ("anomseg.engine.train_seg", "train_segmentation"),
    "evaluate_miou": ("anomseg.engine.train_seg", "evaluate_miou"),
    "SEG_DEFAULTS": ("anomseg.engine.train_seg", "DEFAULTS"), "SEG_SCHEMA": ("anomseg.engine.train_seg", "SCHEMA"),
    "run_tuning": ("anomseg.engine.tune", "run_tuning"),
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        module, attribute = _EXPORTS[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'anomseg.engine' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
