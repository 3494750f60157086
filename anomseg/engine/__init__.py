"""The runners, side by side: each is the library function behind one tool and imports the layers
below it (data, models, methods, bank, metrics); nothing below imports a runner.

* :func:`train_segmentation` (``tools/train_seg.py``) -- :mod:`anomseg.engine.train_seg`
* :func:`run_head_training` (``tools/train_head.py``): banks, then heads -- :mod:`anomseg.engine.train_heads`
* :func:`run_evaluation` (``tools/eval_caos.py``), :func:`render_overlays` (``tools/visualize.py``) --
  :mod:`anomseg.engine.evaluate`
* :func:`run_tuning` (``tools/tune.py``) -- :mod:`anomseg.engine.tune`
* :func:`run_demo` (``tools/demo.py``) -- :mod:`anomseg.engine.demo`
"""

from anomseg.engine.demo import run_demo
from anomseg.engine.evaluate import DEFAULTS as EVAL_DEFAULTS
from anomseg.engine.evaluate import SCHEMA as EVAL_SCHEMA
from anomseg.engine.evaluate import render_overlays, run_evaluation
from anomseg.engine.train_heads import DEFAULTS as HEAD_DEFAULTS
from anomseg.engine.train_heads import SCHEMA as HEAD_SCHEMA
from anomseg.engine.train_heads import build_banks, run_head_training
from anomseg.engine.train_seg import DEFAULTS as SEG_DEFAULTS
from anomseg.engine.train_seg import SCHEMA as SEG_SCHEMA
from anomseg.engine.train_seg import evaluate_miou, train_segmentation
from anomseg.engine.tune import run_tuning

__all__ = ["run_demo", "run_evaluation", "render_overlays", "run_head_training", "build_banks", "train_segmentation",
           "evaluate_miou", "run_tuning", "EVAL_DEFAULTS", "EVAL_SCHEMA", "HEAD_DEFAULTS", "HEAD_SCHEMA",
           "SEG_DEFAULTS", "SEG_SCHEMA"]
