"""Exact per-image AUROC / AP / FPR95 in torch, on the score maps' device, batched over maps.

The same numbers as :func:`anomseg.metrics.curves.exact_metrics` (the numpy reference; ties as scikit-learn
treats them), computed where the maps are. Per map, one sort: the inlier scores, as order-preserving int32 keys
of their float32 values (-0.0 taken as +0.0; the pixels that are not inliers get a key above every finite
score and sort last). The anomaly pixels of the whole chunk (few) are sorted once more, as int64 (map, key)
pairs: map by map, scores ascending. For each anomaly pixel i with score u_i, searches give lt_i (inliers < u_i),
le_i (inliers <= u_i) and its group (the map's anomaly pixels scoring u_i: its size cp and TP_i, the anomaly
pixels >= u_i); FP_i = N - lt_i. Then (P anomaly, N inlier pixels of the map):

* AUROC = sum_i (lt_i + le_i) / (2 P N), the Mann-Whitney statistic with half credit for ties, in exact
  integers;
* AP = sum over the map's distinct scores of cp / P * TP / (TP + FP), float64, one term at the last pixel of
  each group; the terms are returned too (``ap_terms``, in the reference's order), so a caller that sums them
  with numpy gets the reference's value bit for bit;
* FPR95 ``first`` (protocol ``per_image``): FP / N at the highest score whose recall reaches 0.95;
  ``nearest`` (``caos``, hendrycks/anomaly-seg ``anom_utils.fpr_and_fdr_at_recall``): the recall nearest
  0.95 (first on ties), at the lowest threshold of that recall (just above the next lower distinct score).

Every tensor after the sorts has a size known before the device computes it (the anomaly pixels' count), and
per-map reductions are scatters: with the targets on the host (``host_anomaly``, as in the evaluation loop),
where the anomaly pixels are found, nothing here waits for the device; without them, finding those pixels
(``nonzero``) waits once per chunk.

Why these sorts: on an accelerator the rows are sorted and searched in one batched call each; on CPU a batched
sort along a dimension is slow (33 ms a 720x1280 row), so rows are sorted one by one with torch's parallel radix
sort for 1-D integer tensors (fbgemm).

Which path on CPU: this computation in torch, or the numpy reference itself (:func:`numpy_metrics`: per map
:func:`~anomseg.metrics.curves.exact_metrics`, single-threaded, with the AP terms laid out as here). Which is
faster depends on the CPU and its load: on one of this project's machines torch's radix sort made the torch
path 1.7x faster than numpy's (25 vs 42 ms a 720x1280 map); on an AVX2 machine without AVX-512, numpy's SIMD
sort made numpy's path 1.6-2.2x faster (14 vs 23-31 ms), and torch's two threads stall beside a busy core. So
the CPU path is measured once per process, on maps of the size of the first it is given, on the CPU as it is
loaded then (:func:`cpu_path`; ``ANOMSEG_CPU_METRICS=torch|numpy`` sets it). Both give every number to the last
bit (the tests and ``tools/bench/bench_metrics.py`` check it), so the choice changes only the time.

Maps are processed in chunks of images that keep the working memory under ``memory_budget`` bytes: never by
subsampling pixels.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from anomseg.errors import AnomsegError
from anomseg.metrics.curves import exact_groups, group_metrics

RECALL_LEVEL = 0.95
PROTOCOLS = ("per_image", "caos")
_ABOVE = 0x7FFFFFFF  # int32 key above every finite float32's (+inf is 0x7F800000)
BYTES_PER_PIXEL = 48  # working memory of one pixel: keys, masks, sorted keys, sort indices, the rows' int64 search copy
BYTES_PER_ANOMALY_PIXEL = 256  # and of one anomaly pixel: its pair, searches, counts and terms


class MetricInputError(AnomsegError, ValueError):
    """Scores or targets given to the evaluator are malformed."""


def exactly_float32(s: torch.Tensor, ids) -> torch.Tensor:
    """float64 maps as float32 when that changes no ranking, else :class:`MetricInputError` in one line: the metrics
    sort float32 keys, and a float64 map whose values differ below float32 precision (or exceed its range) would be
    measured wrong (two scores 1e-9 apart become one: a per-image AUROC of 0.5 instead of 1.0)."""
    if s.dtype != torch.float64:
        return s
    s32 = s.float()
    over = torch.isfinite(s) & ~torch.isfinite(s32)
    if bool(over.any()):
        b = int(over.reshape(len(s), -1).any(1).nonzero()[0])
        raise MetricInputError(f"image {ids[b]}: float64 scores beyond float32's range (e.g. {s[b][over[b]][0].item():g}); "
                               f"the metrics are computed in float32: rescale the scores (e.g. a logarithm) first")
    for b in range(len(s)):
        n64, n32 = torch.unique(s[b]).numel(), torch.unique(s32[b]).numel()
        if n64 != n32:
            raise MetricInputError(f"image {ids[b]}: float64 scores that differ below float32 precision ({n64} distinct "
                                   f"values, {n32} once float32); the metrics are computed in float32: subtract their "
                                   f"mean and divide by their spread (or cast to float32 yourself) first")
    return s32


def int32_keys(scores: torch.Tensor) -> torch.Tensor:
    """int32 keys whose signed order is the float32 order of ``scores`` (-0.0 and +0.0 one key).

    The same map as :func:`anomseg.metrics.histogram.float_keys` (uint32 there), shifted by 2**31."""
    i = (scores.float() + 0.0).view(torch.int32)  # -0.0 + 0.0 = +0.0
    key = i >> 31  # negative floats: flip the magnitude bits, so that a larger |s| sorts lower
    key &= 0x7FFFFFFF  # in place: on CPU every fresh map-sized tensor costs its page faults
    key ^= i
    return key


CPU_PATHS = ("torch", "numpy")
_measured_cpu_paths: dict[str, float] = {}  # the one-time measurement: {path: seconds}


def cpu_path(shape: tuple[int, int] = (720, 1280)) -> str:
    """``"torch"`` or ``"numpy"``: the faster per-image metrics on this CPU (module docstring), from
    ``ANOMSEG_CPU_METRICS`` if set, else measured once per process on two maps of ``shape``
    (:func:`measure_cpu_paths`; later calls reuse the first measurement whatever their shape)."""
    forced = os.environ.get("ANOMSEG_CPU_METRICS")
    if forced:
        if forced not in CPU_PATHS:
            raise ValueError(f"ANOMSEG_CPU_METRICS={forced!r}: choose one of {', '.join(CPU_PATHS)} (or unset it to "
                             f"measure)")
        return forced
    if not _measured_cpu_paths:
        _measured_cpu_paths.update(measure_cpu_paths(shape))
    return min(_measured_cpu_paths, key=_measured_cpu_paths.get)


def measure_cpu_paths(shape: tuple[int, int] = (720, 1280), maps: int = 2, repeats: int = 2) -> dict[str, float]:
    """Seconds (the best of ``repeats``) each CPU path takes for ``maps`` random maps of ``shape`` sharing one target
    given on the host (as the evaluation loop calls :func:`per_image_metrics`); at most 1 M pixels a map."""
    h, w = shape
    if h * w > 1 << 20:
        h, w = max(1, (1 << 20) // max(w, 1)), min(w, 1 << 20)
    g = torch.Generator().manual_seed(0)
    target = (torch.rand((1, h, w), generator=g, device="cpu") < 0.01).to(torch.uint8)
    target[0, 0, 0], target[0, -1, -1] = 1, 0
    scores = torch.randn((maps, h, w), generator=g, device="cpu") + 2 * target
    seconds = {}
    for path in CPU_PATHS:
        times = []
        for _ in range(repeats + 1):  # the first: warm-up (allocations, the thread pool)
            t0 = time.perf_counter()
            per_image_metrics(scores, target, host_anomaly=target, check_finite=False, path=path)
            times.append(time.perf_counter() - t0)
        seconds[path] = min(times[1:])
    return seconds


def _sort_rows(keys: torch.Tensor, per_row: bool | None = None) -> torch.Tensor:
    """Each row of int32 (B, N) sorted ascending: row by row (default on CPU: torch's radix sort for 1-D integer
    tensors) or in one batched call (elsewhere)."""
    if keys.device.type == "cpu" if per_row is None else per_row:
        out, order = torch.empty_like(keys), torch.empty(keys.shape[1], dtype=torch.long, device=keys.device)
        for row, dest in zip(keys, out):
            torch.sort(row, out=(dest, order))
        return out
    return torch.sort(keys, dim=1).values


def finite_rows(scores: torch.Tensor) -> torch.Tensor:
    """bool (B,): whether every score of each map of float (B, ...) is finite (one ``aminmax``; NaN propagates)."""
    lo, hi = torch.aminmax(scores.float().reshape(len(scores), -1), dim=1)
    return torch.isfinite(lo) & torch.isfinite(hi)


def count_into_(counts: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``counts[i] += 1`` for every index of int64 ``idx``, on their device, in place; unlike ``bincount`` it
    does not wait for the device to find the largest index."""
    return counts.index_add_(0, idx, torch.ones((), dtype=counts.dtype, device=counts.device).expand(len(idx)))


def label_counts(anomaly: torch.Tensor, per_row: bool | None = None) -> torch.Tensor:
    """int64 (B, 256): how many pixels of each uint8 (B, ...) target hold each value, on its device: a ``bincount``
    per row (default on CPU), or one ``index_add_`` that does not wait for the device (elsewhere)."""
    flat = anomaly.reshape(len(anomaly), -1)
    if flat.device.type == "cpu" if per_row is None else per_row:
        return torch.stack([torch.bincount(row, minlength=256) for row in flat]) if len(flat) else \
            torch.zeros((0, 256), dtype=torch.long, device=flat.device)
    idx = (flat.long() + 256 * torch.arange(len(flat), device=flat.device).unsqueeze(1)).reshape(-1)
    return count_into_(torch.zeros(256 * len(flat), dtype=torch.long, device=flat.device), idx).view(-1, 256)


class _Targets:
    """What a chunk needs of its targets (Bt = 1: one target shared by every map): the anomaly pixels' positions
    are found on the host when the caller has the targets there (no wait for the device), else on the device
    (``nonzero``: one wait)."""

    def __init__(self, anomaly: torch.Tensor, counts: torch.Tensor, caos: bool, host: torch.Tensor | None = None):
        n = anomaly.shape[1]
        self.P = counts[:, 1]
        self.N = n - counts[:, 1] if caos else counts[:, 0]
        self.not_inlier = anomaly == 1 if caos else anomaly != 0  # (Bt, n)
        src = anomaly if host is None else host
        flat = (src.reshape(-1) == 1).nonzero().squeeze(1).to(anomaly.device, non_blocking=True)  # row-major
        self.rows, self.cols = flat // n, flat % n


def _search_rows(sorted_rows: torch.Tensor, pairs: torch.Tensor, right: bool, per_row: bool | None,
                 each: int | None = None) -> torch.Tensor:
    """For int64 ``pairs`` = (row << 32) | (key + 2**31), ascending, and int32 (B, n) rows sorted ascending: how
    many keys of the pair's row are < (``right``: <=) its key, int64 (L,). With ``each`` pairs in every row (one
    shared target): one batched search. Otherwise row by row on CPU (the rows' extents read on the host, free
    there), elsewhere one search of the rows as a single ascending int64 sequence, which does not wait for the
    device."""
    B, n = sorted_rows.shape
    row, key = pairs >> 32, ((pairs & 0xFFFFFFFF) - 2**31)
    if each is not None:
        return torch.searchsorted(sorted_rows, key.int().view(B, each), right=right).view(-1)
    if sorted_rows.device.type == "cpu" if per_row is None else per_row:
        out, at = torch.empty_like(pairs), 0
        for b, size in enumerate(torch.bincount(row, minlength=B).tolist()):
            out[at:at + size] = torch.searchsorted(sorted_rows[b], key[at:at + size].int(), right=right)
            at += size
        return out
    flat = sorted_rows.long()
    flat += 2**31
    flat |= (torch.arange(B, device=flat.device) << 32).unsqueeze(1)
    return torch.searchsorted(flat.view(-1), pairs, right=right) - row * n


def _segment_reduce(values: torch.Tensor, row: torch.Tensor, B: int, how: str, empty) -> torch.Tensor:
    """values (L,) reduced per row into (B,) (``how``: sum / amax / amin); rows without values get ``empty``."""
    out = torch.full((B,), empty, dtype=values.dtype, device=values.device)
    return out.index_add_(0, row, values) if how == "sum" else out.scatter_reduce_(0, row, values, how)


def _chunk(scores: torch.Tensor, t: _Targets, caos: bool, per_row: bool | None) -> dict[str, torch.Tensor]:
    B, dev = len(scores), scores.device
    shared = len(t.P) == 1 and B > 1
    finite = finite_rows(scores)
    key = int32_keys(scores)
    P, Nn = (t.P.expand(B), t.N.expand(B)) if shared else (t.P, t.N)
    # the chunk's anomaly pixels as (map, key) pairs, sorted: map by map, scores ascending
    if shared:
        rows = torch.arange(B, device=dev).unsqueeze(1).expand(B, len(t.cols)).reshape(-1)
        anomalous = key[:, t.cols].reshape(-1)
    else:
        rows, anomalous = t.rows, key[t.rows, t.cols]
    pairs = torch.sort((rows << 32) | (anomalous.long() + 2**31)).values
    inliers = _sort_rows(key.masked_fill_(t.not_inlier, _ABOVE), per_row)  # the first Nn of each row are the inliers
    # every anomaly pixel i, in that order, with its score u_i: nothing below has a data-dependent size
    L = len(pairs)
    row, idx = pairs >> 32, torch.arange(L, device=dev)
    each = len(t.cols) if shared else None  # every map has the shared target's anomaly pixels
    lt = _search_rows(inliers, pairs, False, per_row, each)  # inliers < u_i
    le = _search_rows(inliers, pairs, True, per_row, each)  # inliers <= u_i
    first = torch.searchsorted(pairs, pairs)  # the first pixel of u_i's group (its map's pixels with score u_i)
    last = torch.searchsorted(pairs, pairs, right=True)  # one past its last
    start = (torch.cumsum(P, 0) - P)[row]  # the map's first pixel
    is_last = last == idx + 1  # one pixel per distinct score of a map: where its term is kept
    Pr, Nr = P[row], Nn[row]
    ok = (P > 0) & (Nn > 0)
    u2 = _segment_reduce(lt + le, row, B, "sum", 0)  # = sum over distinct u of cp (2 lt + tie)
    Pd, Nd = P.double(), Nn.double()
    auroc = u2.double() / (2 * Pd * Nd)
    cp, tp, fp = last - first, Pr + start - first, Nr - lt  # the group's size; anomaly / inlier pixels >= u_i
    tp_d, fp_d = tp.double(), fp.double()
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    # the reference's expression, operation for operation: pos[g] / P * (tp_g / (tp_g + fp_g))
    terms = torch.where(is_last, cp.double() / Pr.double().clamp(min=1) * (tp_d / (tp_d + fp_d).clamp(min=1)), zero)
    recall = tp_d / Pr.double().clamp(min=1)
    inf = torch.full_like(recall, float("inf"))
    if caos:  # the recall nearest 0.95 (the first, from the lowest score, on ties), at its lowest threshold
        gap = torch.where(is_last, (recall - RECALL_LEVEL).abs(), inf)
        nearest = is_last & (gap == _segment_reduce(gap, row, B, "amin", float("inf"))[row])
        pick = _segment_reduce(torch.where(nearest, idx, L), row, B, "amin", L)
        # inliers >= the lowest threshold of that recall = inliers above the map's next lower distinct score
        below = torch.where(first > start, le[(first - 1).clamp(min=0)], lt)
        fp_pick = Nr - below
    else:  # the highest score whose recall reaches 0.95
        pick = _segment_reduce(torch.where(is_last & (recall >= RECALL_LEVEL), idx, -1), row, B, "amax", -1)
        fp_pick = fp
    fp95 = torch.cat([fp_pick, fp_pick.new_zeros(1)])[torch.where((pick >= 0) & (pick < L), pick, L)]
    nan = torch.full_like(auroc, float("nan"))
    return {"auroc": torch.where(ok, auroc, nan), "aupr": torch.where(ok, _segment_reduce(terms, row, B, "sum", 0.0), nan),
            "fpr95": torch.where(ok, fp95.double() / Nd, nan), "anomaly_px": P, "inlier_px": Nn,
            "ap_terms": terms, "ap_last": is_last, "finite": finite}


def numpy_metrics(scores: torch.Tensor, anomaly: torch.Tensor, caos: bool) -> dict[str, torch.Tensor]:
    """:func:`per_image_metrics`' result computed by the numpy reference, map by map, on the CPU.

    Args:
        scores: float (B, n) CPU maps (cast to float32, as the torch path's keys are).
        anomaly: uint8 (B, n) or (1, n) CPU targets.
    Returns:
        the same keys, dtypes and layout: per map :func:`~anomseg.metrics.curves.exact_metrics`' AUROC, AP and
        FPR95 (``fpr95_nearest`` under ``caos``), its AP terms at the last pixel of each distinct anomaly score in
        ascending order (``ap_last``), zeros elsewhere; NaN metrics for a map without anomaly or inlier pixels or
        with a non-finite score (``finite`` False).
    """
    B = len(scores)
    out = {k: torch.full((B,), float("nan"), dtype=torch.float64, device="cpu") for k in ("auroc", "aupr", "fpr95")}
    out["anomaly_px"] = torch.zeros(B, dtype=torch.int64, device="cpu")
    out["inlier_px"] = torch.zeros(B, dtype=torch.int64, device="cpu")
    out["finite"] = torch.ones(B, dtype=torch.bool, device="cpu")
    terms, last = [], []
    for b in range(B):
        s = scores[b].float().numpy()
        a = anomaly[b if len(anomaly) > 1 else 0].numpy()
        is_anomaly = a == 1
        pos, neg = s[is_anomaly], s[~is_anomaly if caos else a == 0]
        out["anomaly_px"][b], out["inlier_px"][b] = pos.size, neg.size
        t, at = np.zeros(pos.size), np.zeros(pos.size, bool)
        finite = bool(np.isfinite(s).all())  # every pixel, void too: as the torch path's finite_rows
        out["finite"][b] = finite
        if finite and pos.size and neg.size:
            groups = exact_groups(pos, neg)
            m = group_metrics(*groups)
            ends = np.cumsum(groups[0][groups[0] > 0]) - 1  # the last pixel of each distinct anomaly score
            t[ends], at[ends] = m["ap_terms"], True
            out["auroc"][b], out["aupr"][b] = m["auroc"], m["aupr"]
            out["fpr95"][b] = m["fpr95_nearest"] if caos else m["fpr95"]
        terms.append(t)
        last.append(at)
    out["ap_terms"] = torch.from_numpy(np.concatenate(terms)) if B else torch.zeros(0, dtype=torch.float64, device="cpu")
    out["ap_last"] = torch.from_numpy(np.concatenate(last)) if B else torch.zeros(0, dtype=torch.bool, device="cpu")
    out["ap_start"] = torch.cumsum(out["anomaly_px"], 0) - out["anomaly_px"]
    return out


def per_image_metrics(scores: torch.Tensor, anomaly: torch.Tensor, protocol: str = "per_image",
                      memory_budget: int = 512 << 20, check_finite: bool = True,
                      counts: torch.Tensor | None = None, host_anomaly: torch.Tensor | None = None,
                      per_row: bool | None = None, path: str | None = None) -> dict[str, torch.Tensor]:
    """Exact per-image metrics of a batch of maps, on their device (see the module docstring).

    Args:
        scores: float (B, H, W) (float16 / bfloat16 / float32; higher = more anomalous).
        anomaly: uint8 (B, H, W), or (1, H, W): one target for every map (several methods' maps of one image);
            0 inlier / 1 anomaly / 255 void (void is excluded under ``per_image``, counted as inlier under ``caos``).
        memory_budget: bytes of working memory; the maps are processed in chunks of images that fit.
        check_finite: raise on NaN / infinite scores (a host sync); with False the caller reads
            ``finite`` and must refuse the other maps itself (their metrics are meaningless).
        counts: :func:`label_counts` of ``anomaly`` when the caller has them.
        host_anomaly: the same targets on the host, when the caller has them: the anomaly pixels are found
            there, and the call does not wait for the device at all.
        per_row: sort and search row by row (the default on CPU) or batched (the default elsewhere).
        path: on CPU, ``"torch"`` (this module's computation) or ``"numpy"`` (:func:`numpy_metrics`); default
            :func:`cpu_path` (measured once). Maps elsewhere always take the torch path.
    Returns:
        on the maps' device: ``auroc``, ``aupr``, ``fpr95`` float64 (B,) (NaN for a map without anomaly or
        inlier pixels); ``anomaly_px``, ``inlier_px`` int64 (B,); ``finite`` bool (B,); ``ap_terms`` float64 and
        ``ap_last`` bool (L,), one entry per anomaly pixel, map by map (map b's ``anomaly_px[b]`` pixels from
        ``ap_start[b]``, int64 (B,)), scores ascending: ``ap_terms[ap_last]`` of a map are its AP terms in the
        reference's order (the other entries are 0).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: device metrics cover {', '.join(PROTOCOLS)}")
    if scores.ndim != 3 or anomaly.ndim != 3 or anomaly.shape[1:] != scores.shape[1:] \
            or len(anomaly) not in (1, len(scores)):
        raise ValueError(f"scores {tuple(scores.shape)} and anomaly {tuple(anomaly.shape)} must be (B, H, W) and "
                         f"(B, H, W) or (1, H, W)")
    if not scores.is_floating_point():
        raise ValueError(f"scores have dtype {scores.dtype}; pass float scores")
    if scores.shape[0] == 0:
        raise ValueError("scores hold no map (an empty batch): pass at least one (B >= 1)")
    if scores.dtype == torch.float64:  # the keys are float32's: refused where the cast would change the ranking
        scores = exactly_float32(scores, list(range(len(scores))))
    if anomaly.dtype != torch.uint8:
        raise ValueError(f"anomaly has dtype {anomaly.dtype}; pass uint8 targets (0 inlier, 1 anomaly, 255 void)")
    if host_anomaly is not None and tuple(host_anomaly.shape) != tuple(anomaly.shape):
        raise ValueError(f"host_anomaly {tuple(host_anomaly.shape)} must have the targets' shape {tuple(anomaly.shape)}")
    B = scores.shape[0]
    caos = protocol == "caos"
    flat_s, flat_a = scores.reshape(B, -1), anomaly.reshape(len(anomaly), -1)
    flat_h = None if host_anomaly is None else host_anomaly.reshape(len(anomaly), -1)
    if path not in (None, *CPU_PATHS):
        raise ValueError(f"path={path!r}: choose one of {', '.join(CPU_PATHS)} (or None: measured)")
    if scores.device.type == "cpu" and (path or cpu_path(tuple(scores.shape[1:]))) == "numpy":
        out = numpy_metrics(flat_s, flat_h if flat_h is not None else flat_a, caos)
    else:
        out = _torch_metrics(flat_s, flat_a, flat_h, counts, caos, memory_budget, per_row)
    if check_finite and not bool(out["finite"].all()):
        raise ValueError(f"{int((~out['finite']).sum())} of {B} maps hold NaN or infinite scores; scores must be finite")
    return out


def _torch_metrics(flat_s, flat_a, flat_h, counts, caos: bool, memory_budget: int, per_row) -> dict[str, torch.Tensor]:
    """:func:`per_image_metrics` in torch on the maps' device: maps (B, n), targets and host targets (B or 1, n)."""
    B = len(flat_s)
    counts = label_counts(flat_a) if counts is None else counts
    n = flat_s.shape[1]
    if len(flat_a) == 1:  # one target: its anomaly pixels, the per-pixel work of every map, known here
        shared = _Targets(flat_a, counts, caos, flat_h)
        step = max(1, memory_budget // max(1, n * BYTES_PER_PIXEL + len(shared.cols) * BYTES_PER_ANOMALY_PIXEL))
    else:
        shared, step = None, max(1, memory_budget // max(1, n * BYTES_PER_PIXEL))
    parts = [_chunk(flat_s[i:i + step], shared or _Targets(flat_a[i:i + step], counts[i:i + step], caos,
                                                           None if flat_h is None else flat_h[i:i + step]), caos, per_row)
             for i in range(0, B, step)]
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    out["ap_start"] = torch.cumsum(out["anomaly_px"], 0) - out["anomaly_px"]
    return out
