"""AnomalyMetrics: the streaming evaluator every reported number goes through."""

from __future__ import annotations

import math
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch

from anomseg.files import make_dirs, write_with
from anomseg.metrics.components import TRACKS, ComponentStats, image_components
from anomseg.metrics.curves import exact_metrics
from anomseg.metrics.device import MetricInputError, exactly_float32, finite_rows, label_counts, per_image_metrics
from anomseg.metrics.histogram import ScoreHistogram
from anomseg.metrics.smiyc import MAX_FLOAT16, frame_bins, pix_binary_class

PROTOCOLS = ("per_image", "caos", "pooled", "smiyc")
INSTANCE_PROTOCOL = "instances"  # OoDIS instance AP (anomseg.instances), evaluated beside the pixel protocols


def pixel_protocols(protocol) -> list[str]:
    """The pixel protocols of a config's or report's ``protocol`` (a name or a list), without ``instances``;
    ``instances`` alone comes with ``per_image``."""
    names = [protocol] if isinstance(protocol, str) else list(protocol) if isinstance(protocol, list) else [str(protocol)]
    return [str(p) for p in names if p != INSTANCE_PROTOCOL] or ["per_image"]
#: which arithmetic produced a protocol's numbers (written into every report)
ARITHMETIC = {
    "per_image": "exact per image (void excluded), unweighted mean over images",
    "caos": "exact per image as hendrycks/anomaly-seg (void counted as inlier, FPR at the recall nearest 0.95)",
    "pooled_exact": "exact over all non-void pixels pooled",
    "pooled": "all non-void pixels pooled in a float-bit histogram (error bounds alongside)",
    "smiyc": "SegmentMeIfYouCan leaderboard (road-anomaly-benchmark PixBinaryClass: float16 scores, per-frame percentile "
             "bins, step-wise AP, trapezoid AUROC, FPR at the first TPR >= 0.95; frames in sorted order)",
}



def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


class Measured:
    """One evaluator's share of a batch :func:`measure_batch` measured: the maps and targets as given (on
    their device), and ``host``: what :meth:`AnomalyMetrics.commit` reads, copied (asynchronously on CUDA)
    to the host: ``counts`` int64 (B, 3) (inlier / anomaly / void pixels), ``finite`` bool (B,), the
    per-image ``metrics`` (per_image / caos), and ``maps`` / ``targets`` when the evaluator reads them."""

    __slots__ = ("ids", "scores", "anomaly", "given", "pixels", "host")

    def __init__(self, ids, scores, anomaly, given, host):
        self.ids, self.scores, self.anomaly, self.given, self.host = ids, scores, anomaly, given, host
        self.pixels = scores[0].numel() if len(scores) else 0


def _prepare(ev, s: torch.Tensor, target: torch.Tensor, ids) -> tuple:
    """One job of :func:`measure_batch`, its shapes, dtype and ids checked."""
    if s.ndim == 2 and target.ndim == 3 and len(target) == 1:
        s = s[None]
    if s.ndim != 3 or target.ndim != 3:
        raise MetricInputError(f"scores {tuple(s.shape)} and anomaly {tuple(target.shape)} must both be (N, H, W) or (H, W)")
    if ids is None:
        batch_ids = list(range(ev._next_id, ev._next_id + len(s)))
    else:
        ev._explicit_ids = True
        batch_ids = [int(i) for i in np.atleast_1d(ids)]
    if len(batch_ids) != len(s):
        raise MetricInputError(f"{len(batch_ids)} ids for a batch of {len(s)} images")
    if s.shape != target.shape:
        raise MetricInputError(f"image {batch_ids[0]}: scores shape {tuple(s.shape[1:])} != anomaly shape "
                               f"{tuple(target.shape[1:])}; resize the score map to the label size first")
    if not s.is_floating_point():
        raise MetricInputError(f"image {batch_ids[0]}: scores have dtype {s.dtype}; pass float scores")
    return ev, exactly_float32(s, batch_ids), batch_ids




def measure_batch(jobs, anomaly, ids=None, *, host_anomaly=None) -> list[Measured]:
    """Measure one batch for several evaluators at once, on the maps' device, without waiting for it.

    Args:
        jobs: (evaluator, scores) or (evaluator, scores, label) tuples, scores float (B, H, W) or (H, W)
            (numpy or torch, one device; a label, e.g. the method's name, prefixes the job's errors);
            the per-image metrics of all evaluators of a protocol are computed in one batched call
            (:func:`anomseg.metrics.device.per_image_metrics`: one sort per map).
        anomaly: the targets, uint8 (B, H, W) or (H, W), 0 inlier / 1 anomaly / 255 void.
        ids: global image indices (default: each evaluator's running count).
        host_anomaly: the same targets already on the host (saves copying them back).
    Returns:
        one :class:`Measured` per job, to hand to that evaluator's :meth:`AnomalyMetrics.commit` once the
        host copies have landed (on CUDA: record an event after this call and synchronise it first).
    Shapes, dtypes and ids are checked here (:class:`MetricInputError`); values (finite scores, target
    values) when committed.
    """
    target = _tensor(anomaly)
    if target.ndim == 2:
        target = target[None]
    prepared = []
    for job in jobs:
        ev, scores = job[:2]
        try:
            prepared.append(_prepare(ev, _tensor(scores), target, ids))
        except MetricInputError as exc:
            raise MetricInputError(f"{job[2]}: {exc}" if len(job) > 2 else str(exc)) from None
    if not prepared:
        return []
    device = prepared[0][1].device
    cuda = device.type == "cuda"
    to_host = lambda t: t.to("cpu", non_blocking=cuda)  # noqa: E731  (one event behind them all)
    t = target.to(device, non_blocking=True)
    a8 = t if t.dtype == torch.uint8 else torch.where((t >= 0) & (t <= 255), t, 2).to(torch.uint8)  # bad values stay bad
    values = label_counts(a8)  # (B, 256)
    if a8 is not t:  # values outside 0..255 were mapped to 2: count them as not (0, 1, 255)
        values[:, 0], values[:, 1], values[:, 255] = (t == 0).sum((1, 2)), (t == 1).sum((1, 2)), (t == 255).sum((1, 2))
    shared = {"counts": to_host(torch.stack([values[:, 0], values[:, 1], values[:, 255]], 1))}  # no index list to upload
    host_t = _tensor(host_anomaly) if host_anomaly is not None else target if target.device.type == "cpu" else None
    if host_t is not None and host_t.ndim == 2:
        host_t = host_t[None]
    if host_t is not None and (host_t.dtype != torch.uint8 or host_t.shape != a8.shape):
        host_t = None  # not the uint8 targets themselves: found on the device instead
    if any(ev.needs_host_maps() for ev, _, _ in prepared):
        shared["targets"] = host_t if host_t is not None else to_host(a8)
    per_protocol: dict[str, dict] = {}
    for protocol in ("per_image", "caos"):
        group = [(k, s) for k, (ev, s, _) in enumerate(prepared) if ev.protocol == protocol]
        if group:
            stacked = torch.cat([s for _, s in group]) if len(group) > 1 else group[0][1]
            once = len(group) == 1 or len(t) == 1  # one image's target serves every method's map (broadcast)
            got = per_image_metrics(stacked, a8 if once else a8.repeat(len(group), 1, 1), protocol, check_finite=False,
                                    counts=values if once else values.repeat(len(group), 1),
                                    host_anomaly=host_t if once or host_t is None else host_t.repeat(len(group), 1, 1))
            got = {key: to_host(v) for key, v in got.items()}  # a few copies per protocol, sliced on the host
            B = len(t)
            for n, (k, _) in enumerate(group):
                per_protocol[k] = {key: v if key in ("ap_terms", "ap_last") else v[n * B:(n + 1) * B]
                                   for key, v in got.items()}  # the flat terms whole: ap_start indexes them
    out = []
    for k, (ev, s, batch_ids) in enumerate(prepared):
        host = dict(shared)
        if k in per_protocol:
            host["metrics"] = per_protocol[k]
            host["finite"] = per_protocol[k]["finite"]
        else:
            host["finite"] = to_host(finite_rows(s))
        if ev.needs_host_maps():
            host["maps"] = to_host(s.float())
        else:
            host.pop("targets", None)
        out.append(Measured(batch_ids, s, a8, target, host))
    return out


def _fsum_mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (ddof 0, as numpy's default) by exactly rounded sums: order-independent."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = math.fsum(values) / n
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)


class AnomalyMetrics:
    """Pixel-level anomaly metrics, streamed image by image.

    Args:
        protocol: ``"per_image"`` (default: metrics per image with void excluded, unweighted mean
            over images; images without anomaly or without inlier pixels are skipped and counted),
            ``"caos"`` (the CAOS reference, hendrycks/anomaly-seg: per image, void counted as
            inlier, FPR at the recall nearest 0.95), or ``"pooled"`` (SMIYC / Fishyscapes: all
            non-void pixels of all images pooled, FPR at the first TPR >= 0.95).
        exact: pooled protocol only; keep every pixel and compute exactly (small sets). Default:
            a constant-memory histogram (:class:`~anomseg.metrics.histogram.ScoreHistogram`) whose
            error bounds are returned with the values.
        mantissa_bits: histogram resolution (pooled, and for the best-F1 component threshold).
        components: also compute SMIYC component metrics (sIoU, PPV, mean F1).
        component_track: ``"anomaly"`` (sizes 500 / 100) or ``"obstacle"`` (50 / 10).
        min_pred_size, min_gt_size: override the track's minimum component sizes.
        component_threshold: a fixed score threshold, or ``"best_f1"`` (default): the pixel
            threshold maximising pooled F1, found from the histogram after the stream; the score maps
            then wait on disk for the second pass: in ``spill_dir`` if given (kept, for resuming),
            else in a temporary folder this evaluator owns (deleted with it; ``merge`` hands the
            other evaluator's folders over to the merged one). File names carry a token unique to
            the evaluator, so two evaluators sharing a ``spill_dir`` never overwrite each other.

    ``update(scores, anomaly, ids=None)`` takes float scores (N, H, W) or (H, W) (numpy or torch,
    higher = more anomalous, never transformed) and uint8 targets of the same shape (0 inlier,
    1 anomaly, 255 void); the per-image metrics and histograms are computed on the maps' device
    (:mod:`anomseg.metrics.device`), each image's values equal to the numpy reference's
    (:func:`~anomseg.metrics.curves.exact_metrics`) bit for bit. :func:`measure_batch` + :meth:`commit` split
    an update in two, for several evaluators at once (the evaluation loop: every method of an image in one
    call, recorded after one synchronisation). ``ids`` are global image indices (default: a running count); results are
    independent of the order and sharding of the images. Evaluators fed only default ids merge by
    numbering the other's images after this one's; with explicit ids a repeated id is an error.
    """

    def __init__(self, protocol: str = "per_image", *, exact: bool = False, mantissa_bits: int = 11,
                 components: bool = False, component_track: str = "anomaly", min_pred_size: int | None = None,
                 min_gt_size: int | None = None, component_threshold: float | str = "best_f1",
                 spill_dir: str | Path | None = None):
        if protocol not in PROTOCOLS:
            raise MetricInputError(f"protocol={protocol!r} is unknown; choose one of {', '.join(PROTOCOLS)}")
        if exact and protocol != "pooled":
            raise MetricInputError("exact=True applies to protocol='pooled' only (per-image metrics are always exact)")
        if component_track not in TRACKS:
            raise MetricInputError(f"component_track={component_track!r} is unknown; choose one of {', '.join(TRACKS)}")
        if isinstance(component_threshold, str) and component_threshold != "best_f1":
            raise MetricInputError(f"component_threshold={component_threshold!r}: give a number or 'best_f1'")
        self.protocol = protocol
        self.exact = exact
        self.mantissa_bits = mantissa_bits
        self.components = components
        track = TRACKS[component_track]
        self.min_pred_size = track["min_pred_size"] if min_pred_size is None else min_pred_size
        self.min_gt_size = track["min_gt_size"] if min_gt_size is None else min_gt_size
        self.component_threshold = component_threshold
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._owned: list[Path] = []  # temporary spill folders this evaluator deletes
        self._token = uuid.uuid4().hex[:12]
        self.reset()

    # -- state ---------------------------------------------------------------------------
    def reset(self) -> None:
        self.records: dict[int, dict] = {}  # per-image results (per_image / caos), by image id
        self.skipped: dict[int, str] = {}
        self.seen: set[int] = set()
        self._next_id = 0
        self._explicit_ids = False  # whether any update named its ids
        needs_hist = self.protocol == "pooled" and not self.exact
        needs_hist |= self.components and self.component_threshold == "best_f1" and self.protocol != "smiyc"
        if not needs_hist:
            self.hist = None
        elif getattr(self, "hist", None) is not None:
            self.hist.reset()  # keep the (already touched) memory: no reallocation per reset
        else:
            self.hist = ScoreHistogram(self.mantissa_bits)
        self.pooled_pos: list[np.ndarray] = []
        self.pooled_neg: list[np.ndarray] = []
        self.comp = ComponentStats()
        self._spilled: list[Path] = []
        self._resolved_components: tuple[ComponentStats, float] | None = None
        self._remove_owned()

    def _remove_owned(self) -> None:
        for folder in getattr(self, "_owned", []):
            shutil.rmtree(folder, ignore_errors=True)
        self._owned = []

    def __del__(self):
        self._remove_owned()

    # -- input ---------------------------------------------------------------------------
    def update(self, scores, anomaly, ids=None) -> None:
        """Add a batch: scores float (N, H, W) or (H, W), anomaly uint8 of the same shape (numpy or torch,
        on any device: per-image metrics and histograms are computed where the maps are). An empty batch (N = 0)
        adds nothing."""
        if getattr(scores, "ndim", 0) == 3 and len(scores) == 0 and getattr(anomaly, "ndim", 0) == 3 \
                and len(anomaly) == 0:
            return
        self.commit(measure_batch([(self, scores)], anomaly, ids)[0])

    def needs_host_maps(self) -> bool:
        """Whether :meth:`commit` reads the score maps on the host (SMIYC bins, exact pooling, components)."""
        return self.protocol == "smiyc" or (self.protocol == "pooled" and self.exact) or self.components

    def commit(self, measured: "Measured") -> None:
        """Record a batch :func:`measure_batch` measured for this evaluator, once its host copies have landed
        (on CUDA: after the event recorded behind them); images are validated and recorded in order."""
        host = measured.host
        counts = host["counts"].numpy()
        finite = host["finite"].numpy()
        for b, i in enumerate(measured.ids):
            if i in self.seen:
                raise MetricInputError(f"image id {i} was already evaluated; ids must be unique across updates and shards")
            if not finite[b]:
                s = measured.scores[b]
                bad = s[~torch.isfinite(s)]
                raise MetricInputError(f"image {i}: {bad.numel()} scores are NaN or infinite (e.g. {bad[0].item()}); "
                                       f"fix the score function or clip explicitly before evaluating")
            n0, n1, n255 = (int(c) for c in counts[b])
            if n0 + n1 + n255 != measured.pixels:
                values = np.unique(_numpy(measured.given[b]))
                bad = values[~np.isin(values, (0, 1, 255))]
                raise MetricInputError(f"image {i}: target values {bad.tolist()} are not 0 (inlier), "
                                       f"1 (anomaly) or 255 (void)")
            self._record(measured, b, i, (n0, n1, n255))
            self.seen.add(i)
            self._next_id = max(self._next_id, i + 1)

    def _record(self, measured: "Measured", b: int, image_id: int, counts: tuple[int, int, int]) -> None:
        n_in, n_anom, n_void = counts
        host = measured.host
        s = host["maps"][b].numpy() if "maps" in host else None
        a = host["targets"][b].numpy() if "targets" in host else None
        if self.protocol == "smiyc":  # the scores as the official code reads them back from a float16 file
            with np.errstate(over="ignore"):
                s16 = s.astype(np.float16)
            if not np.isfinite(s16).all():
                raise MetricInputError(f"image {image_id}: scores beyond float16's range (|s| <= {MAX_FLOAT16:g}, e.g. "
                                       f"{s[~np.isfinite(s16)][0]}); SMIYC reads float16 files: rescale the score first")
            s = s16.astype(np.float32)  # exact: what the components are computed on too
            bins = frame_bins(s16, a)
            if bins is None:
                self.skipped[image_id] = "no evaluated pixel"
            else:
                self.records[image_id] = bins
        elif self.protocol == "pooled":
            if self.exact:
                self.pooled_pos.append(s[a == 1])
                self.pooled_neg.append(s[a == 0])
        else:
            if self.protocol == "caos":
                n_in += n_void
            if n_anom == 0 or n_in == 0:
                self.skipped[image_id] = "no anomaly pixel" if n_anom == 0 else "no inlier pixel"
            else:
                v = host["metrics"]
                # AP: the device's terms summed by numpy, in the reference's order: the reference's value bit for bit
                part = slice(int(v["ap_start"][b]), int(v["ap_start"][b]) + n_anom)
                aupr = float(np.sum(v["ap_terms"][part].numpy()[v["ap_last"][part].numpy()]))
                self.records[image_id] = {"id": image_id, "auroc": float(v["auroc"][b]), "aupr": aupr,
                                          "fpr95": float(v["fpr95"][b]), "anomaly_px": n_anom, "inlier_px": n_in}
        if self.hist is not None:
            self.hist.update(measured.scores[b], measured.anomaly[b])
        if self.components:
            if self.component_threshold == "best_f1":
                self._spill_image(s, a, image_id)
            else:
                self.comp.add(*image_components(s, a, float(self.component_threshold), self.min_pred_size, self.min_gt_size,
                                                smiyc=self.protocol == "smiyc"))

    def _spill_image(self, s: np.ndarray, a: np.ndarray, image_id: int) -> None:
        if self._spill_dir is not None:
            folder = make_dirs(self._spill_dir)
        else:
            if not self._owned:
                self._owned.append(Path(tempfile.mkdtemp(prefix="anomseg_components_")))
            folder = self._owned[0]
        path = folder / f"{self._token}_{image_id}.npz"
        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, score=s.astype(np.float32), anomaly=a)

        write_with(path, write)
        self._spilled.append(path)

    # -- combine -------------------------------------------------------------------------
    def merge(self, other: "AnomalyMetrics") -> None:
        """Add another evaluator's state (same settings); merged shards equal one run."""
        for name in ("protocol", "exact", "mantissa_bits", "components", "min_pred_size", "min_gt_size", "component_threshold"):
            if getattr(self, name) != getattr(other, name):
                raise MetricInputError(f"cannot merge evaluators with different {name}: {getattr(self, name)!r} vs {getattr(other, name)!r}")
        if not other._explicit_ids and self.seen & other.seen:
            other = other._renumbered(self._next_id)  # default ids: the other's images come after ours
        dup = self.seen & other.seen
        if dup:
            raise MetricInputError(f"image ids {sorted(dup)[:5]} were evaluated in both shards; pass each image's "
                                   f"global index as update(..., ids=[...]) in sharded runs")
        self._explicit_ids |= other._explicit_ids
        self.records.update(other.records)
        self.skipped.update(other.skipped)
        self.seen |= other.seen
        self._next_id = max(self._next_id, other._next_id)
        if self.hist is not None:
            self.hist.merge(other.hist)
        self.pooled_pos += other.pooled_pos
        self.pooled_neg += other.pooled_neg
        self.comp.merge(other.comp)
        self._spilled += other._spilled
        self._owned += other._owned  # the spilled maps now live as long as this evaluator
        other._owned = []

    def _renumbered(self, offset: int) -> "AnomalyMetrics":
        """A copy whose default image ids start at ``offset`` (spilled files keep their paths)."""
        m = AnomalyMetrics.from_state(self.state_dict())
        m.records = {i + offset: {**r, "id": i + offset} for i, r in self.records.items()}
        m.skipped = {i + offset: r for i, r in self.skipped.items()}
        m.seen = {i + offset for i in self.seen}
        m._next_id = self._next_id + offset
        m._owned, self._owned = self._owned, []
        return m

    def settings(self) -> dict:
        """The constructor arguments that define this evaluator (spill folder aside)."""
        return {"protocol": self.protocol, "exact": self.exact, "mantissa_bits": self.mantissa_bits,
                "components": self.components, "min_pred_size": self.min_pred_size, "min_gt_size": self.min_gt_size,
                "component_threshold": self.component_threshold}

    def state_dict(self) -> dict:
        """Picklable state (histogram sparse); spilled score maps stay on this machine."""
        return {"settings": self.settings(), "records": self.records, "skipped": self.skipped, "seen": sorted(self.seen),
                "next_id": self._next_id, "hist": self.hist.state_dict() if self.hist is not None else None,
                "pooled_pos": self.pooled_pos, "pooled_neg": self.pooled_neg,
                "siou": self.comp.siou, "ppv": self.comp.ppv, "spilled": [str(p) for p in self._spilled],
                "explicit_ids": self._explicit_ids}

    @classmethod
    def from_state(cls, state: dict) -> "AnomalyMetrics":
        m = cls(**state["settings"])
        m.records, m.skipped, m.seen = dict(state["records"]), dict(state["skipped"]), set(state["seen"])
        m._next_id = state["next_id"]
        if state["hist"] is not None:
            m.hist.load_state_dict(state["hist"])
        m.pooled_pos, m.pooled_neg = list(state["pooled_pos"]), list(state["pooled_neg"])
        m.comp.siou, m.comp.ppv = list(state["siou"]), list(state["ppv"])
        m._spilled = [Path(p) for p in state.get("spilled", [])]
        m._explicit_ids = bool(state.get("explicit_ids", True))
        return m

    def spilled_components(self, threshold: float) -> ComponentStats:
        """Component statistics of this evaluator's spilled score maps at ``threshold``."""
        stats = ComponentStats()
        for path in sorted(self._spilled, key=lambda p: int(p.stem.rsplit("_", 1)[-1])):
            with np.load(path) as z:
                stats.add(*image_components(z["score"], z["anomaly"], threshold, self.min_pred_size, self.min_gt_size,
                                            smiyc=self.protocol == "smiyc"))
        return stats

    # -- results -------------------------------------------------------------------------
    def per_image(self) -> list[dict]:
        """Per-image records (per_image / caos protocols; smiyc: each frame's bins), sorted by image id."""
        return [self.records[i] for i in sorted(self.records)]

    def _smiyc(self) -> dict:
        try:
            return pix_binary_class(self.per_image())
        except ValueError as exc:
            raise MetricInputError(str(exc)) from None

    def compute(self) -> dict:
        """Metrics as a plain dict: at least ``auroc, aupr, fpr95, images, skipped``."""
        out: dict = {"protocol": self.protocol, "images": len(self.seen) - len(self.skipped), "skipped": len(self.skipped)}
        key = "pooled_exact" if self.protocol == "pooled" and self.exact else self.protocol
        out["arithmetic"] = ARITHMETIC[key]
        if self.protocol == "smiyc":
            m = self._smiyc()
            out.update({k: m[k] for k in ("auroc", "aupr", "fpr95", "best_f1", "best_f1_threshold", "order_dependent")})
            out["exact"] = False
            out["anomaly_px"], out["inlier_px"] = m["pos"], m["neg"]
        elif self.protocol == "pooled":
            if self.exact:
                if not self.pooled_pos or not sum(len(p) for p in self.pooled_pos) or not sum(len(n) for n in self.pooled_neg):
                    raise MetricInputError("pooled metrics need at least one anomaly and one inlier pixel in total; evaluate a split whose labels hold both (anomaly pixels and inliers outside void)")
                m = exact_metrics(np.concatenate(self.pooled_pos), np.concatenate(self.pooled_neg))
                out.update(auroc=m["auroc"], aupr=m["aupr"], fpr95=m["fpr95"], exact=True)
            else:
                _, pos, neg = self.hist.groups()
                if pos.sum() == 0 or neg.sum() == 0:
                    raise MetricInputError("pooled metrics need at least one anomaly and one inlier pixel in total; evaluate a split whose labels hold both (anomaly pixels and inliers outside void)")
                m = self.hist.metrics()
                out.update({k: m[k] for k in ("auroc", "aupr", "fpr95", "auroc_bound", "aupr_low", "aupr_high", "fpr95_low")})
                out["exact"] = False
            out["anomaly_px"], out["inlier_px"] = m["pos"], m["neg"]
        else:
            recs = self.per_image()
            if not recs:
                reasons = sorted(set(self.skipped.values()))
                hint = ("; if anomalies are marked 255 (void), map them to 1 (0 inlier, 1 anomaly, 255 void)"
                        if "no anomaly pixel" in reasons else "")
                raise MetricInputError(f"no image can be evaluated: all {len(self.skipped)} were skipped "
                                       f"({', '.join(reasons) or 'none given'}){hint}")
            for key in ("auroc", "aupr", "fpr95"):
                out[key], out[f"{key}_std"] = _fsum_mean_std([r[key] for r in recs])
            out["skipped_reasons"] = {str(i): r for i, r in sorted(self.skipped.items())}
        if self.components:
            out.update(self._components())
        return out

    def component_threshold_value(self) -> float:
        """The threshold the component metrics use (best pooled pixel F1, or the fixed value)."""
        if self.component_threshold != "best_f1":
            return float(self.component_threshold)
        if self.protocol == "smiyc":
            return self._smiyc()["best_f1_threshold"]
        return self.hist.best_f1_threshold()[0]

    def _components(self) -> dict:
        if self._resolved_components is not None:
            stats, t = self._resolved_components
        elif self.component_threshold == "best_f1":
            t = self.component_threshold_value()
            stats = self.spilled_components(t)
        else:
            t, stats = float(self.component_threshold), self.comp
        rule = "s > t in float16 (SegEval)" if self.protocol == "smiyc" else "s >= t"
        return {**stats.compute(), "component_threshold": t, "component_rule": rule, "min_pred_size": self.min_pred_size,
                "min_gt_size": self.min_gt_size}
