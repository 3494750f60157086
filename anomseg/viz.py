"""Figures: ROC / PR curves and score histograms from pooled histograms, and overlay panels.

Everything here reads the constant-size :class:`~anomseg.metrics.histogram.ScoreHistogram`
of a method, so no pixel list is ever kept for plotting.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import cv2
import numpy as np

from anomseg.files import make_dirs
from anomseg.metrics.histogram import ScoreHistogram


def _figure(**kw):
    """A matplotlib Figure on its own Agg canvas: no pyplot, so no global backend is set or figure kept (safe
    in the evaluation's background thread and in a notebook); matplotlib is imported on first use."""
    from matplotlib.figure import Figure

    return Figure(**kw)


def _colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def safe_name(name: str) -> str:
    """A name usable as a file name (any character outside letters, digits, ``_ . -`` becomes ``_``); method names are
    already restricted at the config check (:data:`anomseg.files.SAFE_NAME`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def curves(hist: ScoreHistogram) -> dict[str, np.ndarray]:
    """ROC (fpr, tpr) and PR (recall, precision) points at every bin edge, from the top down."""
    _, pos, neg = hist.groups()
    tp = np.cumsum(pos[::-1]).astype(np.float64)
    fp = np.cumsum(neg[::-1]).astype(np.float64)
    P, N = max(tp[-1], 1.0), max(fp[-1], 1.0)
    return {"fpr": np.r_[0, fp / N], "tpr": np.r_[0, tp / P], "recall": tp / P, "precision": tp / np.maximum(tp + fp, 1)}


def tpr_threshold(hist: ScoreHistogram, level: float = 0.95) -> float:
    """The highest bin-edge threshold whose TPR (``score >= t`` on anomaly pixels) reaches ``level``."""
    bins, pos, _ = hist.groups()
    tp = np.cumsum(pos[::-1])[::-1]
    reach = np.flatnonzero(tp / max(tp[0], 1) >= level)
    return hist.bin_lower_edge(bins[reach[-1]])


def fpr_threshold(hist: ScoreHistogram, level: float = 0.05) -> float:
    """The lowest bin-edge threshold whose FPR (``score >= t`` on inlier pixels) is at most ``level``."""
    bins, _, neg = hist.groups()
    fp = np.cumsum(neg[::-1])[::-1]
    ok = np.flatnonzero(fp / max(fp[0], 1) <= level)
    if len(ok) == 0:  # even the top bin alone flags more: the next bin's edge, above every score seen
        return hist.bin_lower_edge(bins[-1] + 1)
    return hist.bin_lower_edge(bins[ok[0]])


# 20 distinct colours (tab20's dark shades, then its light ones) and four line styles: every method of a
# table up to 20 gets its own colour, and its own (colour, style) pair beyond
_COLOUR_ORDER = list(range(0, 20, 2)) + list(range(1, 20, 2))
_STYLES = ["-", "--", "-.", ":"]


def method_style(i: int) -> dict:
    """Matplotlib colour and line style of the ``i``-th method of a figure."""
    return {"color": _colormap("tab20")(_COLOUR_ORDER[i % len(_COLOUR_ORDER)]), "ls": _STYLES[i % len(_STYLES)]}


def plot_curves(hists: dict[str, ScoreHistogram], out_dir: Path) -> list[Path]:
    """roc.png and pr.png with one curve per method (each its own colour and line style)."""
    make_dirs(out_dir)
    paths = []
    for kind, (x, y, xl, yl) in {"roc": ("fpr", "tpr", "false positive rate", "true positive rate"),
                                 "pr": ("recall", "precision", "recall", "precision")}.items():
        fig = _figure(figsize=(5, 4.5), dpi=110)
        ax = fig.subplots()
        for i, (name, h) in enumerate(hists.items()):
            c = curves(h)
            ax.plot(c[x], c[y], label=name, lw=1.5, **method_style(i))
        if kind == "roc":
            ax.plot([0, 1], [0, 1], c="black", lw=0.6, alpha=0.35)  # chance: thin, not a method's colour
        ax.set(xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(0, 1.01), title=f"{kind.upper()} (pooled pixels)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(save_figure(fig, out_dir / f"{kind}.png"))
    return paths


def plot_histograms(hists: dict[str, ScoreHistogram], out_dir: Path, bins: int = 80) -> list[Path]:
    """One ``hist_<method>.png`` per method: inlier vs anomaly score densities."""
    make_dirs(out_dir)
    paths = []
    for name, h in hists.items():
        ids, pos, neg = h.groups()
        edges = h.bin_lower_edges(ids)
        total = np.cumsum(pos + neg) / max((pos + neg).sum(), 1)
        lo, hi = edges[np.searchsorted(total, 0.001)], edges[min(np.searchsorted(total, 0.999), len(edges) - 1)]
        if hi <= lo:
            lo, hi = edges[0], edges[-1] + 1e-6
        grid = np.linspace(lo, hi, bins + 1)
        fig = _figure(figsize=(5, 3.5), dpi=110)
        ax = fig.subplots()
        for counts, label, color in ((neg, "inlier", "tab:blue"), (pos, "anomaly", "tab:red")):
            w = counts / max(counts.sum(), 1)
            # binned here and drawn as one filled step outline (what ax.hist draws, without its 80 patches)
            heights, _ = np.histogram(np.clip(edges, lo, hi), bins=grid, weights=w)
            ax.stairs(heights, grid, fill=True, alpha=0.55, label=label, color=color)
        ax.set(xlabel=f"{name} score (higher = more anomalous)", ylabel="fraction of pixels", title=name)
        ax.legend()
        fig.tight_layout()
        paths.append(save_figure(fig, out_dir / f"hist_{safe_name(name)}.png"))
    return paths


def heat_map(score: np.ndarray) -> np.ndarray:
    """A float (H, W) score map as uint8 (H, W, 3) RGB on matplotlib's inferno scale, stretched between its 1st and
    99th percentiles (dark: low, bright: high)."""
    lo, hi = np.percentile(score, [1, 99])
    t = np.clip((score - lo) / max(hi - lo, 1e-12), 0, 1)
    return (_colormap("inferno")(t)[..., :3] * 255).astype(np.uint8)


def ground_truth_view(image: np.ndarray, anomaly: np.ndarray) -> np.ndarray:
    """The image with anomalies outlined in green and void pixels shaded grey."""
    view = image.copy()
    void = anomaly == 255
    view[void] = (0.35 * view[void] + 0.65 * 128).astype(np.uint8)
    contours, _ = cv2.findContours((anomaly == 1).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(view, contours, -1, (0, 255, 0), max(1, image.shape[0] // 200))
    return view


#: a threshold that flags more than this share of an image's pixels is not painted: a panel painted (nearly) all
#: red says nothing about where the anomalies are, so the panel says how much it would flag instead
MAX_PAINTED_SHARE = 0.5


def threshold_view(image: np.ndarray, anomaly: np.ndarray, score: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels with ``score >= threshold`` painted red over a dimmed image, GT outlined in green; when they are more
    than :data:`MAX_PAINTED_SHARE` of the image, nothing is painted and the tile says so."""
    view = (image * 0.5).astype(np.uint8)
    hit = score >= threshold
    share = float(hit.mean())
    painted = share <= MAX_PAINTED_SHARE
    if painted:
        view[hit] = (0.3 * view[hit] + 0.7 * np.array([255, 0, 0])).astype(np.uint8)
    contours, _ = cv2.findContours((anomaly == 1).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(view, contours, -1, (0, 255, 0), max(1, image.shape[0] // 200))
    return view if painted else _note(view, f"not painted: the threshold flags {100 * share:.0f}% of the image")


INSTANCE_COLOUR = (0, 200, 255)  # cyan outlines: distinct from the GT's green and the flagged pixels' red


def outline_instances(tile: np.ndarray, masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each instance (bool masks (M, H, W), confidences (M,)) outlined in cyan with its confidence written at
    its top-left corner; uint8 RGB."""
    tile = tile.copy()
    thick = max(1, tile.shape[0] // 250)
    scale = max(0.3, min(0.6, tile.shape[0] / 900))
    for m, c in zip(masks, scores):
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tile, contours, -1, INSTANCE_COLOUR, thick)
        ys, xs = np.nonzero(m)
        if len(ys):
            org = (int(xs.min()), max(int(ys.min()) - 2, 10))
            cv2.putText(tile, f"{float(c):.2f}", org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
            cv2.putText(tile, f"{float(c):.2f}", org, cv2.FONT_HERSHEY_SIMPLEX, scale, INSTANCE_COLOUR, 1, cv2.LINE_AA)
    return tile


def _note(tile: np.ndarray, text: str) -> np.ndarray:
    """``text`` centred on the tile, scaled to fit its width."""
    tile = tile.copy()
    scale = min(1.0, max(0.3, tile.shape[1] / 700))
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    scale *= min(1.0, (tile.shape[1] - 8) / max(w, 1))
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    org = (max(4, (tile.shape[1] - w) // 2), (tile.shape[0] + h) // 2)
    cv2.putText(tile, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), 1, cv2.LINE_AA)
    return tile


def label_tile(tile: np.ndarray, text: str) -> np.ndarray:
    """A copy of a uint8 (H, W, 3) tile with ``text`` in its top-left corner (white, outlined), scaled to fit."""
    tile = tile.copy()
    scale = min(1.0, max(0.3, tile.shape[1] / 700))
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    scale *= min(1.0, (tile.shape[1] - 8) / max(w, 1))
    y = int(h * 1.6) + 2
    for dx, dy in ((-1, -1), (-1, 1), (1, -1), (1, 1), (0, -1), (0, 1), (-1, 0), (1, 0)):  # a dark outline that
        cv2.putText(tile, text, (4 + dx, y + dy), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)  # keeps the glyphs' spacing
    cv2.putText(tile, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def overlay_panel(image: np.ndarray, anomaly: np.ndarray, maps: dict[str, np.ndarray],
                  thresholds: dict[str, float], threshold_label: str = "TPR95", instances: dict | None = None) -> np.ndarray:
    """One panel: [input | ground truth] then per method [heat map | thresholded map]; uint8 RGB.

    ``instances``: {method: an object with ``masks`` bool (M, H, W) and ``scores`` (M,)} outlined on that
    method's thresholded tile with their confidences (:class:`anomseg.instances.Instances`)."""
    rows = [np.concatenate([label_tile(image, "input"), label_tile(ground_truth_view(image, anomaly),
                                                           "anomaly outlined, void grey")], 1)]
    for name, score in maps.items():
        flagged = float((score >= thresholds[name]).mean())
        tile = threshold_view(image, anomaly, score, thresholds[name])
        text = f"{name} >= {threshold_label}: {100 * flagged:.1f}% of pixels"
        inst = (instances or {}).get(name)
        if inst is not None:
            tile = outline_instances(tile, inst.masks, inst.scores)
            text += f", {len(inst.scores)} instances"
        rows.append(np.concatenate([label_tile(heat_map(score), name), label_tile(tile, text)], 1))
    return np.concatenate(rows, 0)


def resolve_threshold(spec, hist: ScoreHistogram | None, score: np.ndarray) -> tuple[float, str]:
    """``"best_f1"`` (the pixel threshold of the best F1 on the split, the one SMIYC's component metrics use),
    ``"tpr95"`` (from the split's histogram), a number, or ``"top5%"`` (per image) -> (value, label)."""
    if spec == "best_f1":
        if hist is None:
            raise ValueError("threshold 'best_f1' needs the split's pooled histogram")
        return hist.best_f1_threshold()[0], "best-F1 threshold"
    if spec == "tpr95":
        if hist is None:
            raise ValueError("threshold 'tpr95' needs the split's pooled histogram")
        return tpr_threshold(hist), "TPR95"
    if isinstance(spec, str) and spec.startswith("top") and spec.endswith("%"):
        k = float(spec[3:-1])
        return float(np.percentile(score, 100 - k)), f"top {k:g}%"
    return float(spec), f"{float(spec):g}"


def save_figure(fig, path: Path) -> Path:
    """Render a matplotlib figure to PNG and write it atomically (a pyplot-free Figure: nothing to close)."""
    from anomseg.files import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(path, buf.getvalue())


def save_png(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 (H, W, 3) image as PNG, atomically; a failure is an error, never silent."""
    from anomseg.files import OutputError, write_bytes_atomic

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputError(f"{path}: the image could not be encoded as PNG")
    if Path(path).is_dir():
        raise OutputError(f"{path}: is a folder; give --out a folder for the panels, not a panel's path")
    return write_bytes_atomic(path, buf.tobytes())
