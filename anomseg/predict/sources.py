"""What ``anomseg predict`` reads: files, folders, globs, text lists and videos, expanded to named frame sources.

An input is, in this order of precedence:

* an existing folder: every image and video file below it (recursively), sorted by path;
* an image file (:data:`IMAGE_SUFFIXES`) or a video file (:data:`VIDEO_SUFFIXES`, read through OpenCV);
* a ``.txt`` list: one path a line (relative to the list's folder; blank lines and ``#`` comments skipped);
* a glob pattern (``frames/*.jpg``, ``**`` recursive), when no such file exists.

Each source gets an output name: a folder's files their path below the folder without the suffix, anything else
its stem; characters outside letters, digits and ``_ . -`` become ``_``. Two sources with one output name are
refused (they would overwrite each other's outputs). A video's frames are ``<name>/<index:06d>``.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

from anomseg.data.io import MAX_PIXELS, too_many_pixels
from anomseg.errors import AnomsegError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
#: PIL modes converted to RGB (and what the CSV's note says); other modes (16-bit, float) are refused
CONVERTED = {"L": "grey converted to RGB", "1": "bilevel converted to RGB", "P": "palette converted to RGB",
             "LA": "grey converted to RGB, alpha dropped", "RGBA": "alpha channel dropped",
             "PA": "palette converted to RGB, alpha dropped",
             "CMYK": "CMYK converted to RGB", "YCbCr": "YCbCr converted to RGB"}


class PredictError(AnomsegError, ValueError):
    """An input or setting of ``anomseg predict`` cannot be used (one line, with the fix)."""


@dataclass(frozen=True)
class Source:
    """One input file: ``kind`` ``"image"`` or ``"video"``, its ``path``, and ``name``, the stem of its outputs."""

    kind: str
    path: Path
    name: str


def _kind(path: Path) -> str | None:
    s = path.suffix.lower()
    return "image" if s in IMAGE_SUFFIXES else "video" if s in VIDEO_SUFFIXES else None


def _clean(name: str) -> str:
    """Each path part through :func:`anomseg.viz.safe_name`, without leading dots (no hidden or ``..`` parts)."""
    from anomseg.viz import safe_name

    return "/".join(safe_name(part).lstrip(".") or "_" for part in name.split("/"))


def _file_source(path: Path, name: str, listed_in: str | None = None) -> Source:
    kind = _kind(path)
    where = f" (listed in {listed_in})" if listed_in else ""
    if kind is None:
        raise PredictError(f"{path}{where}: not an image ({' '.join(IMAGE_SUFFIXES)}) or video "
                           f"({' '.join(VIDEO_SUFFIXES)}); give image or video files, a folder, a glob or a .txt list")
    if not path.is_file():
        raise PredictError(f"{path}{where}: file not found; check the path")
    return Source(kind, path, _clean(name))


def expand_inputs(inputs) -> list[Source]:
    """The inputs of ``anomseg predict`` (module docstring) -> the sources, in order; nothing found is an error."""
    sources: list[Source] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p) is not None)
            if not found:
                raise PredictError(f"{path}: folder holds no image or video file ({' '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)})")
            sources += [_file_source(p, p.relative_to(path).with_suffix("").as_posix()) for p in found]
        elif path.suffix.lower() == ".txt" and path.is_file():
            try:
                lines = path.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise PredictError(f"{path}: not a readable text list ({type(exc).__name__}); one path a line") from None
            entries = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
            if not entries:
                raise PredictError(f"{path}: the list names no file; one image or video path a line")
            for e in entries:
                p = Path(e) if Path(e).is_absolute() else path.parent / e
                sources.append(_file_source(p, p.stem, listed_in=str(path)))
        elif path.is_file() or _kind(path) is not None and not glob.has_magic(text):
            sources.append(_file_source(path, path.stem))
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file() and _kind(Path(p)))
            if not found:
                raise PredictError(f"{text}: the pattern matches no image or video file")
            sources += [_file_source(p, p.stem) for p in found]
        else:
            raise PredictError(f"{text}: no such file or folder (and not a glob pattern); give images, videos, a folder, "
                               f"a glob or a .txt list")
    seen: dict[str, Path] = {}
    for s in sources:
        if s.name in seen and seen[s.name] != s.path:
            raise PredictError(f"{seen[s.name]} and {s.path} would both write outputs named {s.name!r}; put them in one "
                               f"folder and give the folder (its files are named by their path below it), or rename one")
        seen[s.name] = s.path
    return list({(s.kind, s.path, s.name): s for s in sources}.values())


def read_frame(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """An image file as uint8 (H, W, 3) RGB, upright (its EXIF orientation applied, as a phone's viewer shows it),
    and a note of what was converted ('' if nothing); 16-bit or float images and too many pixels are refused."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise PredictError(f"{path}: {too_many_pixels(w, h, max_pixels, 'frame')}; resize it")
            img.load()
            notes = []
            orientation = img.getexif().get(0x0112, 1)
            if orientation not in (1, None):
                img = ImageOps.exif_transpose(img)
                notes.append(f"EXIF orientation {orientation} applied")
            if img.mode != "RGB":
                if img.mode not in CONVERTED:
                    raise PredictError(f"{path}: a {img.mode} image (16-bit or float); convert it to 8-bit RGB "
                                       f"(e.g. PNG or JPEG) first")
                notes.append(CONVERTED[img.mode])
                img = img.convert("RGB")
            return np.asarray(img, dtype=np.uint8), "; ".join(notes)
    except PredictError:
        raise
    except FileNotFoundError:
        raise PredictError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PredictError(f"{path}: not a readable image ({type(exc).__name__}: {str(exc)[:80]}); re-export it as "
                           f"PNG or JPEG") from None


def open_video(path: Path):
    """``(cv2.VideoCapture, fps, frame count)``; a file OpenCV cannot decode is one line."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise PredictError(f"{path}: OpenCV cannot open this video (codec or container not supported); convert it, "
                           f"e.g. ffmpeg -i {path.name} -c:v libx264 out.mp4, or extract the frames as images")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return cap, (fps if fps > 0 else 25.0), count


def video_info(path: Path) -> tuple[float, int]:
    """(frames per second, frame count) of a video, its file closed again."""
    cap, fps, count = open_video(path)
    cap.release()
    return fps, count


def video_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames of a video as uint8 (H, W, 3) RGB, in order, one at a time."""
    import cv2

    cap, _, _ = open_video(path)
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
