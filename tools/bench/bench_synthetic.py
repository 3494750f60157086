"""Benchmark the synthetic generator: images per second, drawing alone and written to disk.

    python tools/bench/bench_synthetic.py [--images 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from anomseg.data import generate_synthetic
from anomseg.data.synthetic.scene import draw_scene


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    for i in range(a.images):
        draw_scene(np.random.default_rng(i), a.height, a.width, anomalies=i % 3)
    draw = a.images / (time.perf_counter() - t0)
    print(f"draw only, 1 process:            {draw:7.1f} images/s ({a.height}x{a.width})")

    for workers in sorted({1, a.workers}):
        with tempfile.TemporaryDirectory() as tmp:
            n_val = max(1, a.images // 5)
            t0 = time.perf_counter()
            generate_synthetic(tmp, num_train=a.images - 2 * n_val, num_val=n_val, num_test=n_val,
                               num_outliers=0, height=a.height, width=a.width, workers=workers, progress=False)
            rate = a.images / (time.perf_counter() - t0)
        print(f"generate_synthetic, {workers} worker(s): {rate:7.1f} images/s (PNG files written)")


if __name__ == "__main__":
    main()
