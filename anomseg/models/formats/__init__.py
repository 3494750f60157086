"""Checkpoint formats, one module each, behind one detection table (../shared/docs/FORMATS.md, "Checkpoint layouts").

Each module says how its format is recognised (``recognise``), converted to our model's names (``convert``)
and refused, and which weight's rows are the classes (``HEAD_KEY``, for the strict load's error):

=============================  ====================  =====================================================
format                         module                files
=============================  ====================  =====================================================
``anomseg``                    :mod:`.own`           ours (``save_checkpoint``): the file rebuilds its model
``mask2former_detectron2``     :mod:`.detectron2`    Mask2Former model zoo ``.pkl``, RbA / EAM ``model_final.pth``
``mask2former_transformers``   :mod:`.transformers`  ``facebook/mask2former-*`` folders and weights files
``hrnet``                      :mod:`.hrnet`         HRNet-Semantic-Segmentation releases (+ ImageNet init)
``csail_encoder`` / ``_decoder`` :mod:`.csail`       CSAIL / CAOS PSPNet pairs (+ ImageNet init)
``dinov2_official`` / ``dinov3_`` :mod:`.dinov2`    torch.hub DINOv2 / DINOv3 encoder files, transformers folders
=============================  ====================  =====================================================

:func:`detect_format` walks :data:`DETECTION` in order (the most specific layout first); the loading entry
points are in :mod:`anomseg.models.checkpoints`. A new format is one module and one row here.
"""

from __future__ import annotations

from pathlib import Path

from anomseg.models.formats import csail, detectron2, dinov2, hrnet, own, transformers
from anomseg.models.formats.common import load_strict, mismatch, read_tensors, state_of, strip
from anomseg.models.registry import ModelError

#: (format name, recognise(state dict) -> bool), tried in order; ``anomseg`` is recognised on the file itself
DETECTION = (
    (dinov2.NAME, dinov2.recognise),
    (dinov2.NAME_V3, dinov2.recognise_v3),
    (detectron2.NAME, detectron2.recognise),
    (transformers.NAME, transformers.recognise),
    (hrnet.NAME, hrnet.recognise),
    ("csail_decoder", lambda sd: csail.recognise(sd) == "csail_decoder"),
    ("csail_encoder", lambda sd: csail.recognise(sd) == "csail_encoder"),
)
#: the weight whose first dimension is the class count, per format
HEAD_KEYS = {m.NAME: m.HEAD_KEY for m in (own, detectron2, transformers, hrnet, csail, dinov2)}


def read_file(path: Path) -> dict:
    """A checkpoint file's content: a detectron2 ``.pkl`` (numpy arrays only), ``.safetensors``, or a file of plain
    tensors ``torch.load(weights_only=True)`` reads; nothing pickled is ever run."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found; check the path (relative paths start from the current folder)")
    if path.suffix == ".pkl":  # detectron2's model zoo: a plain pickle of numpy arrays
        return detectron2.read_pickle(path)
    return read_tensors(path)


def detect_format(obj) -> str:
    """'anomseg', 'hrnet', 'csail_encoder' / 'csail_decoder', 'mask2former_detectron2',
    'mask2former_transformers', 'dinov2_official' or 'dinov3_official' for a loaded checkpoint object."""
    if own.recognise(obj):
        return own.NAME
    sd = state_of(obj)
    if not isinstance(sd, dict):
        raise ModelError("checkpoint holds no state dict")
    for name, recognise in DETECTION:
        if recognise(sd):
            return name
    raise ModelError(f"unrecognised checkpoint layout (first keys: {list(sd)[:4]}); expected an anomseg, "
                     f"HRNet-Semantic-Segmentation, CSAIL encoder/decoder, Mask2Former (detectron2 / transformers) or DINOv2 / "
                     f"DINOv3 (torch.hub) file")


__all__ = ["DETECTION", "HEAD_KEYS", "detect_format", "read_file", "load_strict", "mismatch", "state_of", "strip",
           "csail", "detectron2", "dinov2", "hrnet", "own", "transformers"]
