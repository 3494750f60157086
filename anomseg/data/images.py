"""Every image layout the API accepts, in one place; anything else is one line saying what to give.

=====================================  ==================================================
input                                  read as
=====================================  ==================================================
a path (str / Path) or a PIL image     RGB (RGBA, palette and grey files converted)
uint8 (H, W, 3) or (N, H, W, 3)        RGB, 0..255
uint8 (3, H, W) or (N, 3, H, W)        RGB, 0..255, channels first
float (H, W, 3) / (N, H, W, 3)         RGB in [0, 1] (float16, float32 or float64)
float (3, H, W) / (N, 3, H, W)         RGB in [0, 1], channels first
=====================================  ==================================================

numpy arrays and torch tensors alike. A float image outside [0, 1] (e.g. 0..255 floats), a 2-D grey
array, an alpha channel, another dtype, or more than ``max_pixels`` pixels per image (default
:data:`anomseg.data.io.MAX_PIXELS`; checked before a file is decoded) is an :class:`ImageInputError`. The result is
uint8 (N, H, W, 3) for uint8 input and float32 (N, 3, H, W) in [0, 1] for float input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anomseg.data.io import MAX_PIXELS, read_rgb, too_many_pixels
from anomseg.errors import AnomsegError


class ImageInputError(AnomsegError, ValueError):
    """An image given to the API is in no accepted layout (see the module docstring)."""


LAYOUTS = ("a path or PIL image, uint8 (H, W, 3) / (N, H, W, 3) / (N, 3, H, W), or float in [0, 1] of those "
           "shapes")


def _check_pixels(h: int, w: int, max_pixels: int, what: str) -> None:
    if h * w > max_pixels:
        raise ImageInputError(f"{what}: {too_many_pixels(w, h, max_pixels)}; resize it, or raise max_pixels")


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB, its size checked before it is decoded."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size  # the header only
    except FileNotFoundError:
        raise ImageInputError(f"{path}: image not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"{path}: not a readable image ({type(exc).__name__}); give a PNG / JPEG / WebP file") from None
    _check_pixels(h, w, max_pixels, str(path))
    try:
        return read_rgb(path, max_pixels)
    except AnomsegError as exc:
        raise ImageInputError(str(exc)) from None


def as_image_batch(images, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Any accepted layout (module docstring) -> uint8 (N, H, W, 3) or float32 (N, 3, H, W) in [0, 1]."""
    if isinstance(images, (str, Path)):
        images = read_image(images, max_pixels)
    elif isinstance(images, Image.Image):
        _check_pixels(images.height, images.width, max_pixels, "the PIL image")
        images = np.asarray(images.convert("RGB"))
    if isinstance(images, np.ndarray):
        if images.dtype == object or images.dtype.kind not in "uif" and images.dtype != bool:
            raise ImageInputError(f"an image array of dtype {images.dtype}; give {LAYOUTS}")
        images = torch.from_numpy(images if images.flags.writeable else images.copy())
    if not isinstance(images, torch.Tensor):
        raise ImageInputError(f"an image of type {type(images).__name__}; give {LAYOUTS}")
    shape = tuple(images.shape)
    if images.ndim == 2:
        raise ImageInputError(f"a 2-D {shape} array is a grey image; give RGB (H, W, 3), e.g. np.stack([image] * 3, -1)")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ImageInputError(f"an image array of shape {shape}; give {LAYOUTS}")
    last, first = images.shape[-1] == 3, images.shape[1] == 3
    if not (last or first):
        channels = images.shape[-1] if images.shape[-1] in (1, 2, 4) else images.shape[1]
        fix = "drop the alpha channel (image[..., :3])" if channels == 4 else "give three RGB channels"
        raise ImageInputError(f"an image array of shape {shape} has no 3-channel axis; {fix}")
    h, w = (images.shape[1], images.shape[2]) if last else (images.shape[2], images.shape[3])
    _check_pixels(int(h), int(w), max_pixels, f"an image array of shape {shape}")
    if images.dtype == torch.uint8:
        return images if last else images.permute(0, 2, 3, 1)
    if not images.is_floating_point():
        raise ImageInputError(f"an image array of dtype {str(images.dtype).replace('torch.', '')}; give uint8 (0..255) or "
                              f"float in [0, 1]")
    lo, hi = float(images.min()), float(images.max())
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
        raise ImageInputError(f"a float image with values in [{lo:g}, {hi:g}]; float images are RGB in [0, 1]: divide "
                              f"0..255 values by 255, or pass uint8")
    x = images.permute(0, 3, 1, 2) if last else images
    return x.float().contiguous()
