"""Shared helpers: small fixture trees in the real dataset layouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Nothing may reach a model hub: with these set, any transformers / huggingface_hub download raises, so a
# passing suite proves the mask2former paths build and load offline (subprocesses inherit them).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def write_jpg(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)
    return path


def random_image(rng, h, w, channels=3) -> np.ndarray:
    return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)


def tiled_label(values, h, w) -> np.ndarray:
    """A (h, w) uint8 map cycling through ``values`` pixel by pixel, so that every value occurs."""
    flat = np.resize(np.asarray(values, np.uint8), h * w)
    return flat.reshape(h, w)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """The demo (tools/demo.py) run once on its config shrunk to seconds (tests/test_demo.py ``tiny_config``):
    ``{"out": folder, "config": its config file, "stdout": what the first run printed}``. Tests read it, never
    change it (a test that writes copies what it needs)."""
    import contextlib
    import io
    import sys

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tools"))
    sys.path.insert(0, str(root / "tests"))
    import demo
    from test_demo import tiny_config

    base = tmp_path_factory.mktemp("tiny_demo")
    cfg = tiny_config(base)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert demo.main(["--out", str(base / "demo"), "--config", str(cfg), "--workers", "1"]) == 0
    return {"out": base / "demo", "config": cfg, "stdout": buf.getvalue()}
