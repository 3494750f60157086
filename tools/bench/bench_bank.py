"""Benchmark the feature bank: mixed-batch sampler throughput and head training steps per second.

    python tools/bench/bench_bank.py [--closed 1000000] [--open 250000] [--dim 720] [--dir PATH]

Writes a bank of random float16 features (1M closed + 250k open rows of 720-d by default: 1.8 GB,
in a temporary folder unless --dir is given), then times ``MixedBatchSampler.next()`` at the
paper's 5000 closed / 2500 open pixels, and full OpenGAN-fea training steps (D and G updates on
5000 / 2500 / 2500 pixels) and CLS-fea steps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anomseg.bank import FeatureBank, MixedBatchSampler
from anomseg.bank.store import META, part_name, write_part
from anomseg.heads import build_head
from anomseg.heads.train import make_optimizers, opengan_step


def write_random_bank(root: Path, n_closed: int, n_open: int, dim: int, rows_per_part: int = 100_000) -> FeatureBank:
    rng = np.random.default_rng(0)
    parts = max(-(-n_closed // rows_per_part), 1)
    cs, os_ = np.array_split(np.arange(n_closed), parts), np.array_split(np.arange(n_open), parts)
    attrs = {"backbone": "random", "feature_dim": dim, "num_classes": 19, "weights": "random", "stride": 4}
    for p in range(parts):
        rows = {}
        for kind, idx in (("closed", cs[p]), ("open", os_[p])):
            n = len(idx)
            rows[kind] = {"features": rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16),
                          "labels": (rng.integers(0, 19, n) if kind == "closed" else np.full(n, -1)).astype(np.int16),
                          "image": (idx // 5000).astype(np.int32), "yx": np.zeros((n, 2), np.int16)}
        write_part(root / part_name(p), rows, attrs)
    (root / META).write_text(json.dumps({**attrs, "parts": parts, "complete": True}))
    return FeatureBank(root)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--closed", type=int, default=1_000_000)
    p.add_argument("--open", type=int, default=250_000)
    p.add_argument("--dim", type=int, default=720)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--dir", default=None, help="keep the bank here instead of a temporary folder")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.dir or tmp) / "bench_bank"
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        bank = write_random_bank(root, a.closed, a.open, a.dim)
        size = sum(f.stat().st_size for f in root.glob("*.h5")) / 2**30
        print(f"bank: {bank.counts['closed']:,} closed + {bank.counts['open']:,} open rows x {a.dim} float16, "
              f"{size:.2f} GiB on disk, written in {time.perf_counter() - t0:.1f} s")
        for block in (64, 256):
            sampler = MixedBatchSampler(bank, n_closed=5000, n_open=2500, block=block, seed=0)
            sampler.next()
            t0 = time.perf_counter()
            for _ in range(a.batches):
                sampler.next()
            rate = a.batches / (time.perf_counter() - t0)
            print(f"sampler (5000 closed + 2500 open, blocks of {block} rows): {rate:6.1f} batches/s")
        for name in ("opengan_fea", "cls_fea"):
            head = build_head(name, a.dim)
            sampler = MixedBatchSampler(bank, n_closed=5000, n_open=2500, block=64, seed=0)
            opt_d, opt_g = make_optimizers(head)
            opengan_step(head, sampler.next(), opt_d, opt_g, 2500)  # warm-up
            t0 = time.perf_counter()
            for _ in range(a.steps):  # the training step alone: no validation, no checkpoints
                opengan_step(head, sampler.next(), opt_d, opt_g, 2500)
            rate = a.steps / (time.perf_counter() - t0)
            print(f"{name} training (5000 / 2500 / {2500 if name == 'opengan_fea' else 0} pixels, {a.dim}-d, "
                  f"{torch.get_num_threads()} threads): {rate:6.2f} steps/s")
        bank.close()


if __name__ == "__main__":
    main()
