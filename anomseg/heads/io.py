"""Head checkpoints: writing a head with what rebuilds it, and reading it back (no pickle executed).

A head file is a torch file of plain data: ``format`` (``"anomseg-head"``), the head's ``name``,
``feat_dim``, constructor ``options``, ``state_dict`` and the trainer's info (backbone name, weights
hash of the backbone whose features it was trained on, bank, stride, validation AUROC, step).
"""

from __future__ import annotations

from pathlib import Path

import torch

from anomseg.errors import AnomsegError
from anomseg.files import save_torch_atomic
from anomseg.heads.registry import build_head

HEAD_FORMAT = "anomseg-head"


def save_head(path: Path, head, info: dict) -> Path:
    """Write a head with what rebuilds it (name, feature size, options) and ``info`` (backbone, weights hash, ...)."""
    return save_torch_atomic(path, head_payload(head, info))


class HeadError(AnomsegError, ValueError):
    """A head checkpoint is missing or malformed."""


def load_head(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a head saved by the trainers here, on ``device``; returns (head, the saved info)."""
    path = Path(path)
    if not path.is_file():
        raise HeadError(f"{path}: head checkpoint not found; train it with tools/train_head.py "
                        f"(heads are written to <out>/heads/<name>/best.pth)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, pickled code (refused, never run)
        raise HeadError(f"{path}: cannot be read as a head checkpoint ({type(exc).__name__}); retrain it with "
                        f"tools/train_head.py") from None
    return head_from_payload(obj, device, source=str(path))


def head_payload(head, info: dict) -> dict:
    """What a head file holds (plain data and tensors)."""
    return {"format": HEAD_FORMAT, "name": head.name, "feat_dim": head.feat_dim,
            "options": getattr(head, "build_options", {}), "state_dict": head.state_dict(), **info}


def head_from_payload(obj, device: str | torch.device = "cpu", source: str = "head payload"):
    """Rebuild a head from :func:`head_payload`'s dict; returns (head, info)."""
    if not isinstance(obj, dict) or obj.get("format") != HEAD_FORMAT:
        raise HeadError(f"{source}: not an anomseg head checkpoint (written by tools/train_head.py)")
    missing = [k for k in ("name", "feat_dim", "options", "state_dict") if k not in obj]
    if missing:
        raise HeadError(f"{source}: head checkpoint lacks {', '.join(missing)}; retrain it with tools/train_head.py")
    if not isinstance(obj["feat_dim"], int) or not isinstance(obj["options"], dict) or \
            not isinstance(obj["state_dict"], dict):
        raise HeadError(f"{source}: head checkpoint fields are malformed (feat_dim {obj['feat_dim']!r}); retrain it")
    try:
        head = make_head(obj["name"], obj["feat_dim"], **obj["options"])
    except (AnomsegError, ValueError, TypeError) as exc:
        raise HeadError(f"{source}: {exc}") from None
    try:
        head.load_state_dict(obj["state_dict"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln.strip() for ln in first if "size mismatch" in ln or "Missing" in ln or "Unexpected" in ln),
                      first[0] if first else type(exc).__name__)[:200].rstrip(".")
        if isinstance(exc, ValueError):  # a head's own reader refused its stored data (a faiss index)
            raise HeadError(f"{source}: the {obj['name']} head's weights cannot be read: {detail}; retrain it") from None
        raise HeadError(f"{source}: the {obj['name']} head's weights do not fit its recorded shape (feat_dim "
                        f"{obj['feat_dim']}, options {obj['options']}): {detail}; retrain it") from None
    head.to(device).eval()
    return head, {k: v for k, v in obj.items() if k != "state_dict"}


def make_head(name: str, feat_dim: int, **options):
    head = build_head(name, feat_dim, **options)
    head.build_options = options
    return head


