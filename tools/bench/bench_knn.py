"""kNN at bank scale: faiss on every closed row against the bounded-sample brute force, at equal k.

    python tools/bench/bench_knn.py [--rows 1000000] [--queries 1000000] [--dim 720] [--k 10]
                              [--index auto] [--nprobe 16] [--sample 50000] [--check 2000]

Features are clustered like a segmenter's (19 class centres, a 32-dimensional spread within each
class, small isotropic noise; float32), generated chunk by chunk from fixed seeds so that no
process holds the whole bank or the query set as an array. Each method runs in a fresh process:

* ``faiss``: ``KNNHead(backend="faiss", index=--index)`` fitted on all ``--rows`` rows (inverted
  lists trained on a 100,000-row sample), then scoring ``--queries`` rows;
* ``sampled``: ``KNNHead(backend="torch", max_samples=--sample)``, the bounded-sample brute force
  that was the toolkit's only kNN before, at the same k, on the same queries.

Printed per method: build seconds, score seconds and rows/s, peak resident memory above the process's
baseline (Linux VmHWM). Then, on the first ``--check`` queries, the error of each against the exact
k-th neighbour distance over all ``--rows`` rows (faiss ``Flat``, brute force), and the last line
``knn/sampled: build+score time ratio R, peak memory ratio M`` from this one run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

CHUNK = 100_000


def _vm(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def _chunk(kind: str, i: int, n: int, dim: int):
    """Rows [i, i + n) of the bank ("bank") or the queries ("query"): float32 (n, dim) torch tensor."""
    import numpy as np
    import torch

    layout = np.random.default_rng(12345)  # the same class structure for bank and queries
    centres = layout.normal(0, 1, (19, dim)).astype(np.float32)
    spread = layout.normal(0, 0.5, (19, 32, dim)).astype(np.float32)
    rng = np.random.default_rng([0 if kind == "bank" else 1, i])
    y = rng.integers(0, 19, n)
    z = rng.standard_normal((n, 32), dtype=np.float32)
    x = centres[y] + 0.3 * rng.standard_normal((n, dim), dtype=np.float32)
    for c in range(19):
        x[y == c] += z[y == c] @ spread[c]
    return torch.from_numpy(x)


def _chunks(kind, rows, dim):
    for i in range(0, rows, CHUNK):
        yield _chunk(kind, i, min(CHUNK, rows - i), dim)


def _run(method, args, queue):
    import torch

    from anomseg.heads.io import make_head

    torch.manual_seed(0)
    if method == "faiss":
        head = make_head("knn", args.dim, k=args.k, backend="faiss", index=args.index, nprobe=args.nprobe)
    else:
        head = make_head("knn", args.dim, k=args.k, backend="torch", max_samples=args.sample)
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak to the current resident size
        f.write("5")
    base = _vm("VmRSS")
    t0 = time.perf_counter()
    sample = torch.cat([_chunk("bank", i, CHUNK // 2, args.dim) for i in (0, CHUNK)])[: max(args.sample, 100_000)]
    head.fit(lambda: _chunks("bank", args.rows, args.dim), sample=sample, rows=args.rows)
    build = time.perf_counter() - t0
    del sample
    t0 = time.perf_counter()
    first = None
    with torch.no_grad():
        for q in _chunks("query", args.queries, args.dim):
            s = head.score_rows(q)
            first = s[: args.check].clone() if first is None else first
    score = time.perf_counter() - t0
    spec = head.resolve_index(args.rows, 100_000) if method == "faiss" else f"torch, {head.ntotal} rows"
    queue.put({"build": build, "score": score, "peak": (_vm("VmHWM") - base) / 2**20, "first": first.numpy(),
               "rows": head.ntotal, "spec": spec})


def _exact(args, queue):
    """Exact k-th neighbour distance of the first --check queries over every bank row (faiss Flat)."""
    from anomseg.heads.io import make_head

    head = make_head("knn", args.dim, k=args.k, backend="faiss", index="Flat")
    head.fit(lambda: _chunks("bank", args.rows, args.dim), sample=_chunk("bank", 0, 1000, args.dim), rows=args.rows)
    first = _chunk("query", 0, min(CHUNK, args.queries), args.dim)[: args.check]  # the queries the methods kept
    queue.put(head.score_rows(first).numpy())


def _in_process(target, args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=target, args=args + (q,))
    proc.start()
    out = q.get()
    proc.join()
    return out


def main(argv=None):
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=720)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--index", default="auto", help="faiss factory string or auto")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--sample", type=int, default=50_000, help="rows of the bounded-sample baseline")
    p.add_argument("--check", type=int, default=2000, help="queries checked against the exact full-bank kNN")
    p.add_argument("--skip-sampled", action="store_true")
    args = p.parse_args(argv)
    print(f"bank {args.rows:,} x {args.dim}, {args.queries:,} queries, k={args.k}")
    results = {}
    for method in ("faiss",) + (() if args.skip_sampled else ("sampled",)):
        r = results[method] = _in_process(_run, (method, args))
        print(f"{method} [{r['spec']}; {r['rows']:,} rows searched]: build {r['build']:.1f} s, score "
              f"{r['score']:.1f} s ({args.queries / r['score']:,.0f} rows/s), peak memory {r['peak']:,.0f} MiB", flush=True)
    exact = _in_process(_exact, (args,))
    for method, r in results.items():
        rel = np.abs(r["first"] - exact) / exact
        print(f"{method} vs exact full-bank k-th distance on {args.check} queries: mean relative error "
              f"{rel.mean():.4f}, max {rel.max():.4f}, equal (1e-4) {np.mean(rel < 1e-4):.3f}")
    if "sampled" in results:
        f, s = results["faiss"], results["sampled"]
        print(f"knn/sampled: build+score time ratio {(f['build'] + f['score']) / (s['build'] + s['score']):.2f}, "
              f"peak memory ratio {f['peak'] / s['peak']:.2f}")


if __name__ == "__main__":
    main()
