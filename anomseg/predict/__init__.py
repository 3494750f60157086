"""``anomseg predict``: score a user's own images, folders, globs, lists and videos (see :mod:`anomseg.predict.run`)."""

from anomseg.predict.outputs import SCORE_FORMATS, read_score_png
from anomseg.predict.run import run_predict
from anomseg.predict.sources import PredictError, Source, expand_inputs, read_frame

__all__ = ["PredictError", "SCORE_FORMATS", "Source", "expand_inputs", "read_frame", "read_score_png", "run_predict"]
