"""Exact per-image AUROC / AP / FPR95 in torch, on the score maps' device, batched over maps.

The same numbers as :func:`anomseg.metrics.curves.exact_metrics` (the numpy reference; ties as scikit-learn
treats them), computed without moving a map to the host and without sorting its pixels: per map, only the
distinct anomaly scores u_0 < ... < u_{m-1} are sorted; every inlier pixel is placed among them with one
``searchsorted`` (strictly between two of them, or equal to one), and one ``bincount`` over the batch
counts the inliers of each place. From those counts (per map: m anomaly groups, 2m + 1 inlier places):

* AUROC = sum_j cp_j (2 below_j + tie_j) / (2 P N), in exact integers (cp_j anomaly pixels at u_j, below_j
  inliers under it, tie_j inliers equal to it);
* AP = sum_j cp_j / P * TP_j / (TP_j + FP_j) with TP_j, FP_j the pixels >= u_j (float64; the sum's
  order differs from numpy's, so the last bits may too);
* FPR95 ``first`` (per_image): FP / N at the highest u_j whose recall reaches 0.95; ``nearest`` (caos,
  hendrycks/anomaly-seg ``fpr_and_fdr_at_recall``): the recall nearest 0.95 (first on ties), at the
  lowest threshold of that recall.

Maps are processed in chunks that keep the working memory under ``memory_budget`` bytes: never by
subsampling pixels.
"""

from __future__ import annotations

import torch

RECALL_LEVEL = 0.95
PROTOCOLS = ("per_image", "caos")


def _chunk(scores: torch.Tensor, anomaly: torch.Tensor, nearest: bool, caos: bool) -> dict[str, torch.Tensor]:
    B, N = scores.shape
    dev = scores.device
    s = scores.float()
    pos = anomaly == 1
    neg = anomaly != 1 if caos else anomaly == 0
    P = pos.sum(1)
    Nn = neg.sum(1)
    rows = torch.arange(B, device=dev).unsqueeze(1).expand(B, N)
    # distinct anomaly scores per map, sorted: sort the anomaly pixels by value, then (stably) by map
    v, r = s[pos], rows[pos]
    order = torch.argsort(v, stable=True)
    v, r = v[order], r[order]
    order = torch.argsort(r, stable=True)
    v, r = v[order], r[order]
    new = torch.ones(len(v), dtype=torch.bool, device=dev)
    if len(v) > 1:
        new[1:] = (v[1:] != v[:-1]) | (r[1:] != r[:-1])
    group = torch.cumsum(new.long(), 0) - 1  # distinct (map, value) pairs in order
    n_groups = int(group[-1]) + 1 if len(v) else 0
    g_row = torch.zeros(n_groups, dtype=torch.long, device=dev)
    g_val = torch.zeros(n_groups, dtype=s.dtype, device=dev)
    if n_groups:
        g_row[group] = r
        g_val[group] = v
    cp_flat = torch.bincount(group, minlength=n_groups)
    m = torch.bincount(g_row, minlength=B)  # distinct anomaly scores per map
    M = max(int(m.max()) if B else 0, 1)
    first = torch.cumsum(m, 0) - m
    col = torch.arange(n_groups, device=dev) - first[g_row]
    U = torch.full((B, M), float("inf"), dtype=s.dtype, device=dev)
    CP = torch.zeros((B, M), dtype=torch.long, device=dev)
    U[g_row, col] = g_val
    CP[g_row, col] = cp_flat
    # every inlier pixel: its place among the map's distinct anomaly scores
    idx = torch.searchsorted(U, s.contiguous())  # = number of u_j < s
    tie = U.gather(1, idx.clamp(max=M - 1)) == s
    place = 2 * idx + tie.long()  # 2j: strictly between u_{j-1} and u_j; 2j + 1: equal to u_j
    width = 2 * M + 1
    flat = (rows * width + place)[neg]
    counts = torch.bincount(flat, minlength=B * width).reshape(B, width)
    between, tied = counts[:, 0::2][:, :M], counts[:, 1::2]  # (B, M) each
    below = torch.cumsum(between, 1) + torch.cumsum(tied, 1) - tied  # inliers strictly below u_j
    valid = torch.arange(M, device=dev).unsqueeze(0) < m.unsqueeze(1)
    u2 = (CP * (2 * below + tied)).sum(1)
    Pd, Nd = P.double(), Nn.double()
    ok = (P > 0) & (Nn > 0)
    auroc = u2.double() / (2 * Pd * Nd)
    tp = P.unsqueeze(1) - (torch.cumsum(CP, 1) - CP)  # anomaly pixels >= u_j
    fp = Nn.unsqueeze(1) - below  # inliers >= u_j
    tp_d, fp_d = tp.double(), fp.double()
    terms = torch.where(valid & (CP > 0), CP.double() / Pd.clamp(min=1).unsqueeze(1) * (tp_d / (tp_d + fp_d).clamp(min=1)),
                        torch.zeros((), dtype=torch.float64, device=dev))
    aupr = terms.sum(1)
    recall = tp_d / Pd.clamp(min=1).unsqueeze(1)
    if nearest:
        fp_low = torch.empty_like(fp)
        fp_low[:, 0] = fp[:, 0]
        if M > 1:
            fp_low[:, 1:] = fp[:, :-1] - tied[:, :-1]
        gap = torch.where(valid, (recall - RECALL_LEVEL).abs(), torch.full_like(recall, float("inf")))
        k = torch.argmin(gap, 1)  # the first minimum
        fpr95 = fp_low.gather(1, k.unsqueeze(1)).squeeze(1).double() / Nd
    else:
        reach = valid & (recall >= RECALL_LEVEL)
        j = torch.where(reach, torch.arange(M, device=dev).expand(B, M), torch.full_like(fp, -1)).amax(1)
        fpr95 = fp.gather(1, j.clamp(min=0).unsqueeze(1)).squeeze(1).double() / Nd
    nan = torch.full_like(auroc, float("nan"))
    return {"auroc": torch.where(ok, auroc, nan), "aupr": torch.where(ok, aupr, nan), "fpr95": torch.where(ok, fpr95, nan),
            "anomaly_px": P, "inlier_px": Nn}


def per_image_metrics(scores: torch.Tensor, anomaly: torch.Tensor, protocol: str = "per_image",
                      memory_budget: int = 256 << 20) -> dict[str, torch.Tensor]:
    """Exact per-image metrics of a batch of maps, on their device (see the module docstring).

    Args:
        scores: float (B, H, W) (float16 / float32; higher = more anomalous), finite.
        anomaly: uint8 (B, H, W), 0 inlier / 1 anomaly / 255 void (void is excluded under ``per_image``,
            counted as inlier under ``caos``).
    Returns:
        ``{"auroc", "aupr", "fpr95"}`` float64 (B,) (NaN for a map without anomaly or inlier pixels) and
        ``{"anomaly_px", "inlier_px"}`` int64 (B,), on the maps' device.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: device metrics cover {', '.join(PROTOCOLS)}")
    if scores.shape != anomaly.shape or scores.ndim != 3:
        raise ValueError(f"scores {tuple(scores.shape)} and anomaly {tuple(anomaly.shape)} must both be (B, H, W)")
    if not scores.is_floating_point() or not torch.isfinite(scores).all():
        raise ValueError("scores must be finite floats")
    B = scores.shape[0]
    flat_s, flat_a = scores.reshape(B, -1), anomaly.reshape(B, -1)
    per_map = max(1, flat_s.shape[1] * 40)  # bytes of working memory per map (indices, masks, places)
    step = max(1, memory_budget // per_map)
    parts = [_chunk(flat_s[i:i + step], flat_a[i:i + step], protocol == "caos", protocol == "caos")
             for i in range(0, B, step)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
