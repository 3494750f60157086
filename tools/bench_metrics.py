"""Benchmark the evaluator against the reference sklearn path, in one run, on one CPU thread.

    python tools/bench_metrics.py [--images 5] [--pooled-images 20]

Per-image protocol: a 720x1280 score map with about 1% anomaly pixels; ours (AnomalyMetrics
per_image, validation included) against ``roc_auc_score`` + ``average_precision_score`` +
``roc_curve`` on the same pixels, as the CAOS reference evaluates each image. Values must agree
within 1e-9. Pooled protocol: update throughput (pixels per second), state size, and the error
of the histogram against the exact pooled values next to its reported bounds.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve  # noqa: E402

from anomseg.metrics import AnomalyMetrics, exact_metrics  # noqa: E402

H, W = 720, 1280


def make_image(rng, ties: bool):
    a = (rng.random((H, W)) < 0.01).astype(np.uint8)
    a[:40] = 255  # a void band (ego vehicle)
    s = rng.normal(size=(H, W)) + 1.8 * (a == 1)
    s = s.astype(np.float16 if ties else np.float32).astype(np.float32)  # float16: heavy ties
    return s, a


def sklearn_path(s, a):
    keep = a != 255
    y, x = a[keep] == 1, s[keep]
    auroc = roc_auc_score(y, x)
    aupr = average_precision_score(y, x)
    fpr, tpr, _ = roc_curve(y, x, drop_intermediate=False)
    return auroc, aupr, fpr[np.argmax(tpr >= 0.95)]


def bench_per_image(rng, n, ties):
    images = [make_image(rng, ties) for _ in range(n)]
    t0 = time.perf_counter()
    ref = [sklearn_path(s, a) for s, a in images]
    t_ref = (time.perf_counter() - t0) / n
    ev = AnomalyMetrics("per_image")
    t0 = time.perf_counter()
    for s, a in images:
        ev.update(s, a)
    t_ours = (time.perf_counter() - t0) / n
    worst = max(abs(r[k] - o[key]) for r, o in zip(ref, ev.per_image()) for k, key in enumerate(("auroc", "aupr", "fpr95")))
    label = "float16-rounded scores (heavy ties)" if ties else "float32 scores"
    print(f"per-image, {label}: sklearn {1000 * t_ref:7.1f} ms/image, ours {1000 * t_ours:6.1f} ms/image, "
          f"speed-up {t_ref / t_ours:5.1f}x, max |difference| {worst:.1e}")
    return t_ref / t_ours, worst


def bench_pooled(rng, n):
    images = [make_image(rng, False) for _ in range(n)]
    ev = AnomalyMetrics("pooled")
    ev.update(*images[0])  # warm-up allocations
    ev.reset()
    t0 = time.perf_counter()
    for s, a in images:
        ev.update(s, a)
    ev.hist.flush()
    dt = time.perf_counter() - t0
    rate = n * H * W / dt
    out = ev.compute()
    s = np.concatenate([s.ravel() for s, _ in images])
    a = np.concatenate([a.ravel() for _, a in images])
    exact = exact_metrics(s[a == 1], s[a == 0])
    mb = ev.hist.nbytes / 2**20
    print(f"pooled update: {rate / 1e6:6.1f} M pixels/s on one core ({n} images of {H}x{W}), state {mb:.0f} MiB")
    print(f"pooled error vs exact: AUROC {abs(out['auroc'] - exact['auroc']):.1e} (bound {out['auroc_bound']:.1e}), "
          f"AUPR {out['aupr'] - exact['aupr']:+.1e} (bounds [{out['aupr_low'] - exact['aupr']:+.1e}, "
          f"{out['aupr_high'] - exact['aupr']:+.1e}]), FPR95 {out['fpr95'] - exact['fpr95']:+.1e} "
          f"(bound [{out['fpr95_low'] - out['fpr95']:+.1e}, 0])")
    inside = (abs(out["auroc"] - exact["auroc"]) <= out["auroc_bound"] and out["aupr_low"] <= exact["aupr"] <= out["aupr_high"]
              and out["fpr95_low"] <= exact["fpr95"] <= out["fpr95"])
    return rate, mb, inside


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5, help="images for the per-image comparison")
    p.add_argument("--pooled-images", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    results = [bench_per_image(rng, a.images, ties) for ties in (False, True)]
    rate, mb, inside = bench_pooled(rng, a.pooled_images)
    speedup = min(r[0] for r in results)
    print(f"summary: per-image speed-up >= {speedup:.1f}x (target 20x), values within "
          f"{max(r[1] for r in results):.1e} (target 1e-9); pooled {rate / 1e6:.0f} M px/s (target 100), "
          f"{mb:.0f} MiB (target <= 64), exact values inside the bounds: {inside}")


if __name__ == "__main__":
    main()
