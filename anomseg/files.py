"""Writing outputs so that nothing already written is lost: atomic replace for every file.

A file is written to ``<name>.tmp`` beside it and moved over the target with ``os.replace`` only once
complete, so a kill or a full disk leaves the previous version intact; a full disk becomes one
:class:`OutputError` line naming the file.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from anomseg.errors import AnomsegError


class OutputError(AnomsegError, OSError):
    """An output cannot be written (disk full, not writable, a folder in the way)."""


def _atomic(path: str | Path, write) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if exc.errno == errno.ENOSPC:
            raise OutputError(f"{path}: disk full; the previous version is kept; free space and run again") from None
        raise OutputError(f"{path}: cannot be written ({exc.strerror or exc}); choose a writable output folder") from None
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, obj) -> Path:
    """Strict JSON (NaN / inf refused: they are not JSON) written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_torch_atomic(path: str | Path, obj) -> Path:
    """``torch.save`` atomically."""
    import torch

    return _atomic(path, lambda tmp: torch.save(obj, tmp))
