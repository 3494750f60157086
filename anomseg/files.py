"""Writing outputs so that nothing already written is lost: atomic replace for every file.

A file is written to ``<name>.tmp`` beside it and moved over the target with ``os.replace`` only once
complete, so a kill or a full disk leaves the previous version intact; a full disk becomes one
:class:`OutputError` line naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import socket
import time
from pathlib import Path

import numpy as np

from anomseg.errors import AnomsegError

log = logging.getLogger(__name__)


class OutputError(AnomsegError, OSError):
    """An output cannot be written (disk full, not writable, a folder in the way)."""



#: what a method / file name may hold: a letter or digit first (so never "." or ".."), then letters, digits, "_",
#: ".", "+", "-"; at most 100 characters. Names become folder and file names (score files, histograms, state).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP "CSV Injection": what a spreadsheet reads as a formula


def csv_cell(value):
    """A CSV cell that no spreadsheet runs: text starting with = + - @ tab or carriage return gets a leading ``'``
    (OWASP's advice for CSV injection); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def check_safe_name(name, what: str = "method name") -> str:
    """``name`` if it matches :data:`SAFE_NAME`, else ValueError in one line with the rule."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise ValueError(f"{what} {shown}: use 1-100 letters, digits and _ . + - (a letter or digit first; never "
                         f"'.' or '..')")
    return name

def _reason(exc: BaseException) -> str:
    """One line saying why a write failed (torch and h5py wrap the OS error in text of their own)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    for code, words in ((errno.ENOSPC, "disk full"), (errno.EFBIG, "file too large (a file-size limit)"),
                        (errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")):
        if getattr(exc, "errno", None) == code:
            return words
    low = text.lower()
    for needle, words in (("no space left", "disk full"), ("file too large", "file too large (a file-size limit)"),
                          ("permission denied", "permission denied"), ("read-only", "read-only file system")):
        if needle in low:
            return words
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return line[:160]


def _cut_short(path: Path, written: int) -> str | None:
    """Why a write that a library reported in its own words stopped: a file-size limit or a full disk."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and written >= limit - (1 << 16):
            return "file too large (a file-size limit)"
    except (ImportError, OSError, ValueError):
        pass
    try:
        if os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize < (1 << 20):
            return "disk full"
    except OSError:
        pass
    return None


def make_dirs(path: str | Path) -> Path:
    """``mkdir -p`` whose failure (a file in the way, no permission, a full disk) is one OutputError line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create this folder ({_reason(exc)}); choose a writable output folder") from None
    return path


def _atomic(path: str | Path, write) -> Path:
    """Run ``write(tmp)`` and move ``tmp`` over ``path``. A failed write (the OS's error, or the text torch and
    h5py wrap it in) is one OutputError line; whatever goes wrong, no ``.tmp`` is left behind."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        make_dirs(path.parent)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.is_file() else 0
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OutputError):
            raise
        if isinstance(exc, (OSError, RuntimeError)):  # torch.save reports I/O failures as RuntimeError
            reason = _reason(exc)
            if isinstance(exc, RuntimeError) and reason not in ("disk full", "file too large (a file-size limit)"):
                reason = _cut_short(path, written) or reason
            if reason == "disk full":
                raise OutputError(f"{path}: disk full; the previous version is kept; free space and run again") from None
            raise OutputError(f"{path}: cannot be written ({reason}); the previous version is kept; choose a writable "
                              f"output folder") from None
        raise
    return path


def write_with(path: str | Path, write) -> Path:
    """Write ``path`` atomically with ``write(tmp_path)`` (any writer: numpy, h5py, zipfile, ...)."""
    return _atomic(path, write)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic(path, lambda tmp: tmp.write_text(text))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return _atomic(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: str | Path, obj) -> Path:
    """Strict JSON (NaN / inf refused: they are not JSON) written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_torch_atomic(path: str | Path, obj) -> Path:
    """``torch.save`` atomically."""
    import torch

    return _atomic(path, lambda tmp: torch.save(obj, tmp))


# -- data-only state files ---------------------------------------------------------------------
# Resumable state lives in a user's output folder, which others may write to (shared cluster
# folders): it must never execute code when read. The format is one .npz (read with
# allow_pickle=False) whose "__json__" entry holds the structure as JSON and whose other entries are
# the numpy arrays it refers to.

STATE_FORMAT = 1


def _encode(x, arrays: dict):
    if isinstance(x, np.ndarray) or isinstance(x, np.generic):
        if isinstance(x, np.generic):
            return x.item()
        if x.dtype == object:
            raise TypeError("object arrays cannot be stored in a data-only state")
        key = f"a{len(arrays)}"
        arrays[key] = x
        return {"__nd__": key}
    if hasattr(x, "detach"):  # a torch tensor
        return _encode(x.detach().cpu().numpy(), arrays)
    if isinstance(x, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in x):
            return {k: _encode(v, arrays) for k, v in x.items()}
        return {"__items__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in x.items()]}
    if isinstance(x, (list, tuple)):
        return [_encode(v, arrays) for v in x]
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise TypeError(f"{type(x).__name__} cannot be stored in a data-only state")


def _decode(x, arrays):
    if isinstance(x, dict):
        if set(x) == {"__nd__"}:
            return arrays[x["__nd__"]]
        if set(x) == {"__items__"}:
            return {_decode(k, arrays) if not isinstance(k, list) else tuple(k): _decode(v, arrays) for k, v in x["__items__"]}
        return {k: _decode(v, arrays) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v, arrays) for v in x]
    return x


def save_state(path: str | Path, obj, kind: str) -> Path:
    """Write ``obj`` (nested dicts / lists of numbers, strings, numpy arrays) as a data-only state file."""
    arrays: dict = {}
    meta = {"format": STATE_FORMAT, "kind": kind, "state": _encode(obj, arrays)}
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, __json__=blob, **arrays)

    return _atomic(path, write)


def load_state(path: str | Path, kind: str):
    """Read a file written by :func:`save_state`; anything else is refused with one line."""
    path = Path(path)
    fix = "delete it (or use a new out folder) to start over"
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["__json__"]).decode())
            arrays = {k: z[k] for k in z.files if k != "__json__"}
    except Exception as exc:  # truncated, not an npz, pickled objects inside: never executed
        raise OutputError(f"{path}: not a readable anomseg state file ({type(exc).__name__}); {fix}") from None
    if meta.get("format") != STATE_FORMAT or meta.get("kind") != kind:
        raise OutputError(f"{path}: a state file of format {meta.get('format')} / kind {meta.get('kind')!r}, expected "
                          f"{STATE_FORMAT} / {kind!r}; {fix}")
    return _decode(meta["state"], arrays)


# -- fingerprints: resume only what the same inputs made -----------------------------------------

class StaleError(AnomsegError, ValueError):
    """A resumable artefact was made from other inputs than the current run's."""


def _canonical(x) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def check_fingerprint(path: str | Path, saved: dict, expected: dict, restart: str) -> None:
    """Raise :class:`StaleError` naming what changed when ``saved`` differs from ``expected``.

    ``restart`` says how to start over (e.g. "set resume: false or choose a new out").
    """
    if _canonical(saved) == _canonical(expected):
        return
    keys = sorted(set(saved) | set(expected))
    changed = [k for k in keys if _canonical(saved.get(k)) != _canonical(expected.get(k))]
    raise StaleError(f"{path}: made with other inputs (changed: {', '.join(changed)}); it is not reused; {restart}")


def file_digest(path: str | Path) -> str:
    """sha256 (first 16 hex digits) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


# -- one run per output folder -----------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def output_lock(folder: str | Path):
    """Hold ``<folder>/.lock`` for the duration: a second run into the same folder stops with one line.

    A lock left by a killed run (its process is gone on this host) is taken over.
    """
    folder = Path(folder)
    path = folder / ".lock"
    me = f"{socket.gethostname()}:{os.getpid()}"
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a folder; choose another out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the output folder ({exc.strerror or exc}); choose a writable out") from None
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = path.read_text().strip()
            except OSError:
                owner = "?"
            host, _, pid = owner.rpartition(":")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                path.unlink(missing_ok=True)  # left by a run that was killed
                continue
            raise OutputError(f"{folder}: another run ({owner}) is writing to this folder; wait for it or choose another "
                              f"out (delete {path} if that run no longer exists)") from None
        except OSError as exc:
            raise OutputError(f"{folder}: cannot write here ({exc.strerror or exc}); choose a writable out") from None
        with os.fdopen(fd, "w") as f:
            f.write(me)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


class StageClock:
    """Host seconds per stage of a loop: :meth:`lap` charges the time since the previous lap to a stage. On CUDA
    the device runs asynchronously: a stage's figure is then what the host spent launching it, and a wait lands
    in whichever stage synchronises."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


def write_timing(path: str | Path, stage: str, images: int, seconds: float, breakdown: dict | None = None) -> Path:
    """``{"stage", "images", "seconds", "images_per_second"}`` of a loop over images (logged too), and a
    :class:`StageClock`'s ``breakdown`` (seconds per stage) when given."""
    rate = images / seconds if seconds > 0 else None
    log.info("%s: %d images in %.1f s (%s images/s)", stage, images, seconds, f"{rate:.2f}" if rate else "-")
    extra = {"breakdown": {k: round(v, 4) for k, v in breakdown.items()}} if breakdown else {}
    return write_json_atomic(path, {"stage": stage, "images": images, "seconds": round(seconds, 4),
                                    "images_per_second": rate, **extra})
