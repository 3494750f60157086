"""Benchmark exact per-image metrics at 720x1280: numpy (the reference path), torch on CPU and on CUDA, and the
peers, in one run; then the pooled histogram.

    python tools/bench/bench_metrics.py [--images 8] [--batch 8] [--dtype float32|bfloat16|float16] [--pooled-images 20]

Per-image protocol (void excluded, FPR at the first TPR >= 0.95), maps with about 1% anomaly pixels and a void
band, images/s of each path on the same maps:

* ``numpy``: what the evaluator computed per image before the device path (validation, masks,
  :func:`anomseg.metrics.curves.exact_metrics`), single-threaded as numpy is;
* ``cpu/torch``, ``cpu/numpy``: the evaluator (``AnomalyMetrics("per_image").update``) with each of its CPU
  paths forced (``ANOMSEG_CPU_METRICS``: the torch computation on torch's threads, or the numpy reference on
  one), and ``torch-cpu``: as the evaluator runs it, the path measured once per process
  (:func:`anomseg.metrics.device.cpu_path`); the line before the table gives the SIMD level and thread counts;
* ``torch-cpu`` / ``cuda``: ``AnomalyMetrics("per_image").update`` on a batch of ``--batch`` maps, the
  evaluator's own path (:func:`anomseg.metrics.measure_batch`: one sort per map, validation, host copies), with
  torch's threads; on CUDA the maps are on the device and the time runs until the records are on the host;
* the peers, per image on the same valid pixels: scikit-learn (``roc_auc_score`` + ``average_precision_score``
  + ``roc_curve``, as the CAOS reference evaluates), torchmetrics ``binary_auroc`` + ``binary_average_precision``
  (``thresholds=None``: exact) and pytorch-ood ``OODMetrics`` (void label excluded), each where installed.

Every path's values are compared with numpy's (max |difference| printed); pytorch-ood's AUPR, the trapezoid area
under the PR curve rather than step-wise AP, with that trapezoid computed here. The last line reads
``metrics/numpy: torch-cpu <ratio> cuda <ratio or n/a>`` (images/s over numpy's images/s).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from anomseg.metrics import AnomalyMetrics, exact_metrics
from anomseg.metrics.device import CPU_PATHS, cpu_path

H, W = 720, 1280
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_maps(rng, n: int, dtype: str):
    a = (rng.random((n, H, W)) < 0.01).astype(np.uint8)
    a[:, :40] = 255  # a void band (ego vehicle)
    s = rng.normal(size=(n, H, W)).astype(np.float32) + 1.8 * (a == 1)
    return torch.from_numpy(s).to(DTYPES[dtype]), torch.from_numpy(a)


def simd_level() -> str:
    """The SIMD level torch's CPU kernels use, and the widest numpy found (x86-simd-sort's kernels follow it)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as feats
    widest = next((f for f in ("AVX512_SPR", "AVX512_ICL", "AVX512_SKX", "AVX512F", "AVX2", "SSE42") if feats.get(f)), "none")
    return f"torch {torch.backends.cpu.get_cpu_capability()}, numpy {widest}"


def numpy_path(s: np.ndarray, a: np.ndarray) -> dict:
    """The host work the evaluator did per image before the device path: checks, masks, exact metrics."""
    if not np.isfinite(s).all():
        raise ValueError("non-finite score")
    counts = [int(np.count_nonzero(a == v)) for v in (0, 1, 255)]
    assert sum(counts) == a.size
    return exact_metrics(s[a == 1], s[a == 0])


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up (allocations, lazy imports, CUDA context)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - t0) / repeats, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8, help="maps per path (a multiple of --batch)")
    p.add_argument("--batch", type=int, default=8, help="maps per torch call (the evaluation's batch)")
    p.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="score maps' dtype (bfloat16: heavy ties)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peer-images", type=int, default=2, help="maps for each peer library (they are slow)")
    p.add_argument("--pooled-images", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rng = np.random.default_rng(a.seed)
    S, A = make_maps(rng, a.images, a.dtype)
    S32 = S.float().numpy()  # the maps numpy sees (bfloat16 has no numpy dtype; the conversion is exact)
    An = A.numpy()
    print(f"{a.images} maps of {H}x{W}, {a.dtype}, about 1% anomaly pixels; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")

    t_np, ref = timed(lambda: [numpy_path(S32[i], An[i]) for i in range(a.images)], a.repeats)
    rate = {"numpy": a.images / t_np}
    want = np.array([[r["auroc"], r["aupr"], r["fpr95"]] for r in ref])

    def evaluator_path(scores, anomaly):
        ev = AnomalyMetrics("per_image")
        for i in range(0, a.images, a.batch):
            ev.update(scores[i:i + a.batch], anomaly[i:i + a.batch])
        return np.array([[r["auroc"], r["aupr"], r["fpr95"]] for r in ev.per_image()])

    worst = {}
    # the evaluator's CPU paths, each forced (ANOMSEG_CPU_METRICS), then as the evaluator runs: measured once
    for path in CPU_PATHS:
        os.environ["ANOMSEG_CPU_METRICS"] = path
        t, got = timed(lambda: evaluator_path(S, A), a.repeats)
        rate[f"cpu/{path}"], worst[f"cpu/{path}"] = a.images / t, float(np.abs(got - want).max())
    os.environ.pop("ANOMSEG_CPU_METRICS")
    t, got = timed(lambda: evaluator_path(S, A), a.repeats)
    rate["torch-cpu"], worst["torch-cpu"] = a.images / t, float(np.abs(got - want).max())
    print(f"CPU: {simd_level()}; the torch path on {torch.get_num_threads()} threads, the numpy path on 1; "
          f"the evaluator takes the {cpu_path((H, W))} path here")
    if torch.cuda.is_available():
        Sc, Ac = S.cuda(), A.cuda()

        def cuda_path():
            out = evaluator_path(Sc, Ac)  # records are host floats: the time includes the copies
            torch.cuda.synchronize()
            return out
        t, got = timed(cuda_path, a.repeats)
        rate["cuda"], worst["cuda"] = a.images / t, float(np.abs(got - want).max())
    n = min(a.peer_images, a.images)
    for name, fn in (peers().items() if n else ()):  # --peer-images 0: numpy and torch only
        try:
            t, got = timed(lambda: np.array([fn(S32[i], An[i]) for i in range(n)]), 1)
        except Exception as exc:  # a peer's own failure is reported, not fatal
            print(f"{name}: failed ({type(exc).__name__}: {exc})")
            continue
        ref = want[:n, :got.shape[1]]
        if name == "pytorch-ood":  # its AUPR is the trapezoid under the PR curve, not step-wise AP
            ref = np.column_stack([want[:n, 0], [trapezoid_aupr(S32[i], An[i]) for i in range(n)], want[:n, 2]])
        rate[name], worst[name] = n / t, float(np.abs(got - ref).max())
    for name, r in rate.items():
        diff = f", max |difference| to numpy {worst[name]:.1e}" if name in worst else ""
        diff += " (the evaluator's choice)" if name == "torch-cpu" else ""
        diff += " (AUPR: to the trapezoid rule's)" if name == "pytorch-ood" else ""
        print(f"  {name:<16} {r:8.2f} maps/s  ({1000 / r:7.1f} ms/map){diff}")
    bench_pooled(rng, a.pooled_images)
    cuda = f"{rate['cuda'] / rate['numpy']:.2f}" if "cuda" in rate else "n/a"
    print(f"metrics/numpy: torch-cpu {rate['torch-cpu'] / rate['numpy']:.2f} cuda {cuda}")


def peers() -> dict:
    """The peer libraries' exact per-image metrics on the valid pixels: (AUROC, AP[, FPR95]) per map."""
    out = {}
    try:
        from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

        def sklearn(s, a):
            keep = a != 255
            y, x = a[keep] == 1, s[keep]
            fpr, tpr, _ = roc_curve(y, x, drop_intermediate=False)
            return [roc_auc_score(y, x), average_precision_score(y, x), fpr[np.argmax(tpr >= 0.95)]]
        out["scikit-learn"] = sklearn
    except ImportError:
        print("scikit-learn: not installed")
    try:
        from torchmetrics.functional.classification import binary_auroc, binary_average_precision

        def torchmetrics(s, a):
            keep = a != 255
            x, y = torch.from_numpy(s[keep]), torch.from_numpy((a[keep] == 1).astype(np.int64))
            return [float(binary_auroc(x, y, thresholds=None)), float(binary_average_precision(x, y, thresholds=None))]
        out["torchmetrics"] = torchmetrics
    except ImportError:
        print("torchmetrics: not installed (pip install torchmetrics)")
    try:
        from pytorch_ood.metrics import OODMetrics

        def pytorch_ood(s, a):
            labels = np.where(a == 1, -1, np.where(a == 255, 255, 0))  # OOD labels < 0; void label excluded
            m = OODMetrics(void_label=255)
            m.update(torch.from_numpy(s), torch.from_numpy(labels))
            r = m.compute()
            return [r["AUROC"], r["AUPR-OUT"], r["FPR95TPR"]]
        out["pytorch-ood"] = pytorch_ood
    except ImportError:
        print("pytorch-ood: not installed (pip install pytorch-ood)")
    return out


def trapezoid_aupr(s: np.ndarray, a: np.ndarray) -> float:
    """Trapezoid-rule area under the PR curve (anomaly positive, void excluded), the curve's points at the distinct
    scores plus (recall 0, precision 1), as sklearn's ``auc(*precision_recall_curve(...)[1::-1])``: the AUPR that
    pytorch-ood reports (pytorch_ood/metrics/functional.py ``_aupr``), beside the step-wise AP the others report."""
    keep = a != 255
    x, y = s[keep].astype(np.float64), a[keep] == 1
    order = np.argsort(-x, kind="stable")
    x, y = x[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(x)), x.size - 1]  # the last position of each distinct score
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    precision, recall = np.r_[1.0, tps / (tps + fps)], np.r_[0.0, tps / tps[-1]]
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))


def bench_pooled(rng, n: int) -> None:
    """Pooled protocol: histogram update throughput and its error against the exact pooled values."""
    maps = [make_maps(rng, 1, "float32") for _ in range(n)]
    ev = AnomalyMetrics("pooled")
    ev.update(*maps[0])  # warm-up allocations
    ev.reset()
    t0 = time.perf_counter()
    for s, a in maps:
        ev.update(s, a)
    ev.hist.flush()
    rate = n * H * W / (time.perf_counter() - t0)
    out = ev.compute()
    s = np.concatenate([s.numpy().ravel() for s, _ in maps])
    a = np.concatenate([a.numpy().ravel() for _, a in maps])
    exact = exact_metrics(s[a == 1], s[a == 0])
    inside = (abs(out["auroc"] - exact["auroc"]) <= out["auroc_bound"] and out["aupr_low"] <= exact["aupr"] <= out["aupr_high"]
              and out["fpr95_low"] <= exact["fpr95"] <= out["fpr95"])
    print(f"pooled histogram: {rate / 1e6:.1f} M pixels/s ({n} maps, CPU), {ev.hist.nbytes / 2**20:.0f} MiB; "
          f"AUROC error {abs(out['auroc'] - exact['auroc']):.1e} (bound {out['auroc_bound']:.1e}); exact values inside "
          f"the bounds: {inside}")


if __name__ == "__main__":
    main()
