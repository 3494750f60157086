"""Reading images and label maps, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from anomseg.errors import DatasetError

MAX_PIXELS = 40_000_000  #: per image, checked from the header before decoding; an 8K UHD frame has 33 Mpx


def too_many_pixels(w: int, h: int, limit: int, per: str = "image") -> str:
    """'WxH = N Mpx is more than the limit of M Mpx per image' (pixel counts below 0.1 Mpx written out)."""
    def size(n: int) -> str:
        return f"{round(n / 1e6, 1):g} Mpx" if n >= 100_000 else f"{n} pixels"
    return f"{w}x{h} = {size(w * h)} is more than the limit of {size(limit)} per {per}"


def _open(path: Path, max_pixels: int | None = None) -> Image.Image:
    limit = max_pixels or MAX_PIXELS
    try:
        img = Image.open(path)
        w, h = img.size  # from the header, before anything is decoded
        if w * h > limit:
            raise DatasetError(f"{path}: {too_many_pixels(w, h, limit)}; resize it (or raise "
                               f"anomseg.data.io.MAX_PIXELS for a trusted file)")
        img.load()  # forces decoding: a truncated file raises here, not later
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found; check the dataset root and split") from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{path}: image too large to decode safely ({exc}); resize it, or raise "
                           f"PIL.Image.MAX_IMAGE_PIXELS if the file is trusted") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"{path}: unreadable or truncated image ({exc}); re-extract or re-download this file"
        ) from None
    return img


def read_rgb(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB; RGBA, palette and grey images are converted. More than
    ``max_pixels`` (default :data:`MAX_PIXELS`) is refused before decoding."""
    img = _open(Path(path), max_pixels)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_label(path: str | Path, rgb_first_channel: bool = False) -> np.ndarray:
    """Read a single-channel label PNG as uint8 (H, W), values untouched.

    Raises DatasetError if the file is not single-channel 8-bit (a colour-coded label map was
    probably given instead of an id map), unless ``rgb_first_channel``: then an RGB(A) file's first
    channel is the id (datasets released with the id repeated in three channels).
    """
    path = Path(path)
    img = _open(path)
    if rgb_first_channel and img.mode in ("RGB", "RGBA"):
        arr = np.array(img.convert("RGB"), dtype=np.uint8)[..., 0]
    elif img.mode == "P":
        # Palette PNGs store the index per pixel; the index is the label value.
        arr = np.asarray(img, dtype=np.uint8)
    elif img.mode == "L":
        arr = np.asarray(img, dtype=np.uint8)
    else:
        raise DatasetError(
            f"{path}: label map has mode {img.mode!r}, expected a single-channel 8-bit id map "
            f"(mode 'L'); pass the *labelIds / *_train_id / annotation PNG, not a colour rendering"
        )
    return arr


def read_instance_ids(path: str | Path) -> np.ndarray:
    """Read an instance-id PNG (8- or 16-bit, one channel) as int32 (H, W): 0 none, k >= 1 instance k,
    65535 (the 16-bit -1) a group of anomaly pixels without an instance id -> -1."""
    path = Path(path)
    img = _open(path)
    if img.mode not in ("L", "P", "I;16", "I"):
        raise DatasetError(f"{path}: instance map has mode {img.mode!r}; expected a single-channel 8- or 16-bit id "
                           f"map (0 none, k instance k)")
    arr = np.asarray(img).astype(np.int64)
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
        raise DatasetError(f"{path}: instance ids outside 0..65535; write them as a 16-bit PNG")
    arr[arr == 65535] = -1
    return arr.astype(np.int32)
