"""EvaluationRecorder: everything one evaluation accumulates, in one object.

Per method it owns an :class:`~anomseg.metrics.AnomalyMetrics` for every protocol asked for (the headline
first; a per-image evaluator beside a pooled / smiyc headline, so ``per_image.csv`` always has rows) and a
coarse :class:`~anomseg.metrics.ScoreHistogram` (the plots and the overlays' thresholds); for the run it
owns the closed-set confusion counts and the set of images already recorded. The evaluation loop calls
:meth:`measure` on the device and :meth:`record` on the host; :meth:`save` / :meth:`load` write and read the
resumable state file, :meth:`merge` adds another recorder (a resumed part, a rank), :meth:`reduce` merges
the ranks of a torchrun job, and :meth:`results` / :meth:`per_image_rows` are what the report is written
from. A new protocol is one more evaluator in :meth:`evaluators` (the model: torchmetrics'
``MetricCollection``, detectron2's ``DatasetEvaluators``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from anomseg import viz
from anomseg.distributed import all_reduce_sum
from anomseg.files import load_state, save_state
from anomseg.metrics import AnomalyMetrics, MetricInputError, ScoreHistogram, measure_batch, reduce_distributed
from anomseg.metrics.segmentation import miou

HIST_MANTISSA_BITS = 7  # coarse: the histograms are for plots and the overlays' thresholds
HIST_BUFFER = 1 << 18


class EvaluationRecorder:
    """The accumulated state of an evaluation.

    Args:
        names: the methods' report names, in the config's order.
        protocols: the protocols asked for, the headline first (:data:`~anomseg.metrics.PROTOCOLS`).
        num_classes: K closed classes of the evaluated split (0: an evaluation-only set, no confusion counts).
        components, component_track: the SMIYC component metrics, for every evaluator.
        spill_root: where each evaluator spills its score maps (``<root>/<method>[/<protocol>]/rank<r>``);
            None: temporary folders owned by the evaluators.
        rank: this process's torchrun rank (its spill folders).
    """

    def __init__(self, names, protocols, *, num_classes: int = 0, components: bool = False,
                 component_track: str = "anomaly", spill_root: str | Path | None = None, rank: int = 0):
        self.names = list(names)
        self.protocols = list(protocols)
        self.num_classes = num_classes
        self.component_track = component_track
        headline, *others = self.protocols

        def make(name, protocol, sub=()):
            spill = None if spill_root is None else Path(spill_root).joinpath(viz.safe_name(name), *sub, f"rank{rank}")
            return AnomalyMetrics(protocol, components=components, component_track=component_track, spill_dir=spill)

        self.headline = {n: make(n, headline) for n in self.names}
        # pooled / smiyc headlines have no per-image values of their own: a per-image evaluator beside them
        self.per_image = {n: AnomalyMetrics("per_image") for n in self.names} if headline in ("pooled", "smiyc") else {}
        self.extra = {p: {n: make(n, p, (p,)) for n in self.names} for p in others}
        self.hists = {n: ScoreHistogram(HIST_MANTISSA_BITS, buffer_size=HIST_BUFFER) for n in self.names}
        k = max(num_classes, 1)
        self.conf = torch.zeros(k, k, dtype=torch.int64, device="cpu")  # accumulated on the host
        self.done: set[int] = set()

    # -- the loop ------------------------------------------------------------------------
    def evaluators(self, name: str) -> list[AnomalyMetrics]:
        """Every evaluator a method's maps go to: the headline, the per-image one, the other protocols."""
        return ([self.headline[name]] + ([self.per_image[name]] if self.per_image else [])
                + [self.extra[p][name] for p in self.extra])

    def measure(self, scores: dict, target: torch.Tensor, image_id: int, host_anomaly=None) -> dict:
        """Every method's per-image metrics of one image in one batched call on the maps' device.

        Args:
            scores: {method: float (1, H, W) score map} on the device.
            target: uint8 (1, H, W) anomaly labels on the same device.
            host_anomaly: the same labels on the host, if the caller has them (no device wait).
        Returns:
            {method: [Measured, one per :meth:`evaluators`]}, for :meth:`record`.
        """
        jobs = [(ev, scores[n], f"method {n!r}") for n in self.names for ev in self.evaluators(n)]
        flat = iter(measure_batch(jobs, target, ids=[image_id], host_anomaly=host_anomaly))
        return {n: [next(flat) for _ in self.evaluators(n)] for n in self.names}

    def record(self, image_id: int, scores: dict, target: torch.Tensor, measured: dict,
               image_conf: torch.Tensor | None = None) -> None:
        """Host side of one image: commit what :meth:`measure` measured, count the histograms and the
        closed-set confusion (int64 (K, K), or None), mark the image done. ``measured`` empty: an
        image of a split without labels (nothing is counted, the image is done)."""
        if measured:
            if image_conf is not None:
                self.conf += image_conf
            for name in self.names:
                for ev, m in zip(self.evaluators(name), measured[name]):
                    try:
                        ev.commit(m)
                    except MetricInputError as exc:
                        raise MetricInputError(f"method {name!r}: {exc}") from None
                self.hists[name].update(scores[name], target)  # on the maps' device
        self.done.add(int(image_id))

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain data (numpy arrays, lists, dicts): what :func:`~anomseg.files.save_state` writes."""
        return {"metrics": {n: m.state_dict() for n, m in self.headline.items()},
                "hists": {n: h.state_dict() for n, h in self.hists.items()},
                "per_image_metrics": {n: m.state_dict() for n, m in self.per_image.items()},
                "extra": {p: {n: m.state_dict() for n, m in e.items()} for p, e in self.extra.items()},
                "conf": self.conf.numpy(), "done": sorted(self.done)}

    def load_state_dict(self, state: dict) -> None:
        """Add a saved state (:meth:`state_dict`) to this recorder's (normally empty) one."""
        for n in self.names:
            self.headline[n].merge(AnomalyMetrics.from_state(state["metrics"][n]))
            other = ScoreHistogram(HIST_MANTISSA_BITS, buffer_size=1)
            other.load_state_dict(state["hists"][n])
            self.hists[n].merge(other)
            if self.per_image:
                self.per_image[n].merge(AnomalyMetrics.from_state(state["per_image_metrics"][n]))
            for p in self.extra:
                self.extra[p][n].merge(AnomalyMetrics.from_state(state["extra"][p][n]))
        self.conf += torch.from_numpy(np.asarray(state["conf"])).to(torch.int64)
        self.done |= {int(i) for i in state["done"]}

    def merge(self, other: "EvaluationRecorder") -> None:
        """Add another recorder's images (another rank, an earlier part); merged parts equal one run."""
        if other.names != self.names or other.protocols != self.protocols:
            raise MetricInputError(f"cannot merge recorders of other methods / protocols ({other.names}, "
                                   f"{other.protocols} vs {self.names}, {self.protocols})")
        self.load_state_dict(other.state_dict())

    def save(self, path: str | Path, fingerprint: dict) -> Path:
        """The resumable state file (data only: npz + JSON), with what made it."""
        return save_state(path, {"fingerprint": fingerprint, **self.state_dict()}, "evaluation")

    @staticmethod
    def read(path: str | Path) -> dict:
        """A state file's content: ``{"fingerprint", ...}``; load it with :meth:`load_state_dict`."""
        return load_state(path, "evaluation")

    def reduce(self, device) -> None:
        """Merge every torchrun rank's state into every rank's recorder (no-op in one process)."""
        for n in self.names:
            self.headline[n] = reduce_distributed(self.headline[n])
            if self.per_image:
                self.per_image[n] = reduce_distributed(self.per_image[n])
            for p in self.extra:
                self.extra[p][n] = reduce_distributed(self.extra[p][n])
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, {n: h.state_dict() for n, h in self.hists.items()})
            for n, h in self.hists.items():
                h.reset()
                for g in gathered:
                    other = ScoreHistogram(HIST_MANTISSA_BITS, buffer_size=1)
                    other.load_state_dict(g[n])
                    h.merge(other)
        self.conf = all_reduce_sum(self.conf.to(device)).cpu()  # a device tensor: NCCL reduces only those

    # -- what the report is written from -------------------------------------------------
    def anomaly_pixels(self) -> int:
        """Anomaly pixels counted (the first method's histogram; every method sees the same labels)."""
        _, anomalous, _ = self.hists[self.names[0]].groups()
        return int(anomalous.sum())

    def miou(self) -> float | None:
        """Closed-set mIoU of the main backbone, or None without closed-set labels."""
        return miou(self.conf)[0] if self.num_classes and int(self.conf.sum()) > 0 else None

    def results(self) -> dict:
        """{method: the headline's metrics, its TPR-95 and best-F1 pixel thresholds on the split, and with
        several protocols ``protocols``: {protocol: metrics} in the order asked}."""
        results = {}
        for n in self.names:
            r = self.headline[n].compute()
            r.pop("skipped_reasons", None)
            r["tpr95_threshold"] = viz.tpr_threshold(self.hists[n])
            # the overlays' thresholds on this split (pooled pixels, `score >= t`)
            r["overlay_thresholds"] = {"best_f1": self.hists[n].best_f1_threshold()[0], "tpr95": r["tpr95_threshold"]}
            if self.extra:  # every protocol asked for, the headline first, each with its arithmetic
                r["protocols"] = {r["protocol"]: {k: v for k, v in r.items()
                                                  if k not in ("tpr95_threshold", "overlay_thresholds")}}
                for p, e in self.extra.items():
                    other = e[n].compute()
                    other.pop("skipped_reasons", None)
                    r["protocols"][p] = other
            results[n] = r
        return results

    def per_image_rows(self, image_name) -> list[list]:
        """``per_image.csv``'s rows after its header: [image id, name, method, auroc, aupr, fpr95, anomaly px,
        inlier px], methods in order; ``image_name(i)`` names image i."""
        source = self.per_image or self.headline
        return [[rec["id"], image_name(rec["id"]), n, rec["auroc"], rec["aupr"], rec["fpr95"], rec["anomaly_px"],
                 rec["inlier_px"]] for n in self.names for rec in source[n].per_image()]
