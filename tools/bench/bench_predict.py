"""Peak memory and speed of ``anomseg predict`` over 10 and 200 frames: memory must stay flat in the frame count.

    python tools/bench/bench_predict.py --pipeline runs/demo/pipeline.pt [--size 128x256] [--video]

Each run is a fresh process (``anomseg predict`` on a folder of N PNG frames, or on one MP4 of N frames with
``--video``), its peak resident memory read from ``getrusage(RUSAGE_CHILDREN)`` after it ends; the frames are the
synthetic test images of the pipeline's demo folder, cycled and resized to ``--size``. Prints both runs and the
ratio of their peaks (1.0 = flat), then frames per second of the 200-frame run.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def frames(pipeline: Path, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    root = pipeline.parent / "data" / "test" / "images"
    files = sorted(root.rglob("*.png"))
    if not files:
        sys.exit(f"error: no synthetic test images under {root}; run the demo first (python tools/demo.py)")
    h, w = size
    return [cv2.resize(np.asarray(Image.open(files[i % len(files)]).convert("RGB")), (w, h)) for i in range(n)]


def run(pipeline: Path, n: int, size, video: bool, work: Path) -> tuple[float, float, float]:
    """(peak RSS MB, seconds, frames / s reported by predict) of one fresh ``anomseg predict`` process."""
    src = work / f"in_{n}"
    src.mkdir()
    imgs = frames(pipeline, n, size)
    if video:
        w = cv2.VideoWriter(str(src / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (size[1], size[0]))
        for im in imgs:
            w.write(cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
        w.release()
    else:
        for i, im in enumerate(imgs):
            Image.fromarray(im).save(src / f"{i:05d}.png")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "anomseg.cli", "predict", "--pipeline", str(pipeline), str(src),
                          "--out", str(work / f"out_{n}"), "--quiet"], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode:
        sys.exit(out.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    fps = float(out.stdout.split(" frames/s")[0].rsplit(" ", 1)[-1])
    return max(peak, before) / 1024, seconds, fps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", default="runs/demo/pipeline.pt")
    p.add_argument("--size", default="128x256", help="HxW of the frames")
    p.add_argument("--video", action="store_true", help="one MP4 instead of a folder of PNGs")
    a = p.parse_args(argv)
    size = tuple(int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        small = run(Path(a.pipeline), 10, size, a.video, Path(tmp))
        # RUSAGE_CHILDREN keeps the largest child so far: the 200-frame run is measured after the 10-frame one,
        # so its figure is max(both); a 200-frame peak above the 10-frame one shows as a larger number
        big = run(Path(a.pipeline), 200, size, a.video, Path(tmp))
    kind = "video" if a.video else "PNG folder"
    print(f"{kind}, {size[0]}x{size[1]} frames")
    print(f"10 frames:  peak RSS {small[0]:.0f} MB, {small[1]:.1f} s wall, {small[2]:.2f} frames/s")
    print(f"200 frames: peak RSS {big[0]:.0f} MB, {big[1]:.1f} s wall, {big[2]:.2f} frames/s")
    print(f"peak memory ratio 200 / 10 frames: {big[0] / small[0]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
