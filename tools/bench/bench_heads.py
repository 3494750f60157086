"""Peak memory of fitting and scoring the statistical heads at D = 720, and their speed.

    python tools/bench/bench_heads.py [--rows 100000] [--dim 720] [--classes 19] [--budget-mib 256]

Each head runs in a fresh process on random features already in memory (float32); the peak
resident memory above that baseline (Linux VmHWM, reset through /proc/self/clear_refs after the
data exist) is what fitting and scoring ``--rows`` rows add: the intermediates. Printed per head:
fit seconds, score rows/s, peak MiB of intermediates.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time


def _vm(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def _run(name, rows, dim, classes, budget, queue):
    import numpy as np
    import torch

    from anomseg.heads.io import make_head

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((rows, dim), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, classes, rows))
    options = {"gaussian": {"num_classes": classes}, "gmm": {"n_components": 16, "max_iter": 20},
               "knn": {"k": 10, "max_samples": 20000}}[name]
    head = make_head(name, dim, **options)
    head.memory_budget = budget
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak to the current resident size
        f.write("5")
    base = _vm("VmRSS")
    t0 = time.perf_counter()
    if name == "gaussian":
        head.fit(lambda: iter([(x[i:i + 65536], y[i:i + 65536]) for i in range(0, rows, 65536)]))
    else:
        head.fit(x[:100000])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        head.score_rows(x)
    score_s = time.perf_counter() - t0
    queue.put((fit_s, rows / score_s, (_vm("VmHWM") - base) / 2**20))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100000)
    p.add_argument("--dim", type=int, default=720)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--budget-mib", type=int, default=256, help="the heads' memory_budget")
    args = p.parse_args(argv)
    ctx = mp.get_context("spawn")
    print(f"{args.rows} rows x {args.dim}, {args.classes} classes, memory budget {args.budget_mib} MiB")
    for name in ("gaussian", "gmm", "knn"):
        q = ctx.Queue()
        proc = ctx.Process(target=_run, args=(name, args.rows, args.dim, args.classes, args.budget_mib << 20, q))
        proc.start()
        fit_s, rate, peak = q.get()
        proc.join()
        print(f"{name}: fit {fit_s:.1f} s, score {rate:,.0f} rows/s, peak intermediates {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
