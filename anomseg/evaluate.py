"""The evaluation pipeline behind ``tools/eval_caos.py``: one pass over a split, many methods.

For every image the backbone runs once (optionally multi-scale / flipped); every method turns
the logits or features into a float32 score map at the label size, which goes to that method's
:class:`~anomseg.metrics.AnomalyMetrics` (the chosen protocol) and to a plotting histogram;
closed-set mIoU is accumulated alongside. Images are sharded over torchrun ranks; the state is
saved every ``save_every`` images, so an interrupted evaluation resumes without redoing finished
images. Outputs: ``report.json``, ``per_image.csv``, ``report.md``, ``roc.png``, ``pr.png``,
``hist_<method>.png``, ``overlays/*.png`` and the resolved ``config.yaml``.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import anomseg
from anomseg import viz
from anomseg.bank.extract import weights_hash
from anomseg.config import ConfigError, save_config
from anomseg.data import build_dataset
from anomseg.distributed import all_reduce_sum, barrier, init_distributed
from anomseg.heads.train import HeadError, load_head
from anomseg.metrics import AnomalyMetrics, reduce_distributed
from anomseg.metrics.histogram import ScoreHistogram
from anomseg.models.checkpoints import backbone_from_config
from anomseg.models.inference import predict
from anomseg.scores import FITTED, POSTHOC, build_score, mc_dropout
from anomseg.train.seg_trainer import confusion_matrix, miou

DEFAULTS = {
    "seed": 0,
    "out": "runs/eval",
    "device": None,
    "data": {"name": "streethazards", "root": "data/synthetic", "split": "test", "options": {}},
    "backbone": {"name": None, "options": {}, "checkpoint": None},
    "inference": {"preset": "none", "scales": [1.0], "flip": False},
    "methods": [{"name": "msp"}, {"name": "max_logit"}, {"name": "entropy"}, {"name": "energy"}],
    "protocol": "per_image",
    "components": False,
    "component_track": "anomaly",
    "fit": {"train_split": "train", "val_split": "val", "max_images": 200},
    "save_every": 25,
    "overlays": {"images": 6, "threshold": "tpr95"},
}


def infer(model, images, size, inf: dict):
    """:func:`predict` under an evaluation's ``inference`` section."""
    return predict(model, images, size=size, scales=inf["scales"], flip=inf["flip"], preset=inf["preset"])


def check_inference(inf: dict) -> None:
    """Refuse inference settings that no longer mean anything (one line, with the fix)."""
    if "average" in inf:
        raise ConfigError("inference.average: removed; every method now gets what it consumes (logit scores the mean "
                          "logits, probability scores the mean probabilities); use inference.preset: caos to reproduce "
                          "CAOS, with its max_mean_prob / max_double_softmax / neg_mean_prob0 scores")
    if inf["preset"] == "caos" and (list(inf["scales"]) != [1.0] or inf["flip"]):
        raise ConfigError("inference.preset: caos fixes the five CAOS input sizes and no flip; remove inference.scales / "
                          "inference.flip")


def has_unresized_pass(inf: dict) -> bool:
    return inf["preset"] != "caos" and 1.0 in [float(s) for s in inf["scales"]]


class _Method:
    """One evaluated method: how to score, and its evaluator and plotting histogram.

    ``consumes`` says what it takes from the inference step: ``"logits"`` (mean logits),
    ``"probs"`` (mean probabilities), ``"features"`` (of the unresized pass) or ``"images"``.
    """

    def __init__(self, spec: dict, num_classes: int, model, cfg: dict, out: Path, dist_info):
        self.name = spec["name"]
        self.model = model
        self.backbone_key = _backbone_key(spec.get("backbone") or cfg["backbone"])
        self.kind = "head" if spec.get("head") else "score"
        self.score_name = spec.get("score", self.name)
        options = spec.get("options", {})
        inf = cfg["inference"]
        self.consumes = ("features" if self.kind == "head" else "images" if self.score_name == "mc_dropout"
                         else getattr(POSTHOC.get(self.score_name), "consumes", "logits"))
        if self.consumes == "features" and not has_unresized_pass(inf):
            raise ConfigError(f"method {self.name!r} consumes backbone features of the unresized image, but the inference "
                              f"settings (preset {inf['preset']}, scales {list(inf['scales'])}) have no scale-1.0 pass; "
                              f"add 1.0 to inference.scales or evaluate the head in a run of its own")
        if self.consumes == "images" and (inf["preset"] != "none" or [float(x) for x in inf["scales"]] != [1.0] or inf["flip"]):
            raise ConfigError(f"method {self.name!r} (mc_dropout) runs its own single-scale passes; it cannot follow "
                              f"multi-scale / flip / preset inference: evaluate it in a run with the default inference")
        if self.kind == "head":
            self.head, info = load_head(spec["head"])
            if info.get("weights") and info["weights"] != weights_hash(model):
                raise ValueError(f"method {self.name!r}: head {spec['head']} was trained on other backbone weights "
                                 f"({info['weights']}); evaluate it with the backbone it was trained on")
        elif self.score_name in POSTHOC:
            self.fn = build_score(self.score_name, **options)
        elif self.score_name in FITTED:
            self.fn = build_score(self.score_name, num_classes, **options)
            self._fit(spec, model, cfg, out, dist_info)
        elif self.score_name == "mc_dropout":
            self.passes = options.get("passes", 8)
        else:
            raise ValueError(f"method {self.name!r}: unknown score {self.score_name!r}; give 'head: <path>' for a head")

    def _fit(self, spec, model, cfg, out, dist_info):
        """Fit streaming over the fit split (SML: training pixels; KL matching: validation pixels)."""
        path = out / "fitted" / f"{viz.safe_name(self.name)}.pt"
        if not path.is_file() and dist_info.is_main:
            d, f = cfg["data"], cfg["fit"]
            split = spec.get("fit_split", f["train_split"] if self.score_name == "sml" else f["val_split"])
            ds = build_dataset(d["name"], d["root"], split, **d.get("options", {}))
            n = min(len(ds), spec.get("fit_images", f["max_images"]))
            for i in tqdm(range(n), desc=f"fit {self.name} on {split}", leave=False):
                s = ds[i]  # fitted under the evaluation's own inference settings: what it will be applied to
                logits = infer(model, torch.from_numpy(np.array(s["image"]))[None].to(dist_info.device),
                               s["semantic"].shape, cfg["inference"]).logits
                self.fn.update(logits.cpu(), torch.from_numpy(s["semantic"])[None])
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(self.fn.state_dict(), path.with_name(path.name + ".tmp"))
            path.with_name(path.name + ".tmp").replace(path)
        barrier()
        self.fn.load_state_dict(torch.load(path, weights_only=True))

    def score(self, model, images, out, size) -> torch.Tensor:
        if self.consumes == "features":
            return self.head.score_map(out.features.cpu(), size=size)
        if self.consumes == "images":
            return mc_dropout(model, images, passes=self.passes, size=size).cpu()
        return self.fn(out.probs if self.consumes == "probs" else out.logits).cpu()


def _backbone_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


def _backbones(cfg: dict, num_classes: int, device) -> dict[str, tuple]:
    """Every distinct backbone of the config (the main one and any a method names), built once."""
    specs = [cfg["backbone"]] + [m["backbone"] for m in cfg["methods"] if m.get("backbone")]
    models = {}
    for spec in specs:
        key = _backbone_key(spec)
        if key not in models:
            torch.manual_seed(cfg["seed"])  # a backbone without a checkpoint is reproducible
            model, name = backbone_from_config(spec, num_classes)
            models[key] = (model.to(device).eval(), name)
    return models


def _state_path(out: Path, rank: int) -> Path:
    return out / "state" / f"rank{rank}.pkl"


def run_evaluation(cfg: dict, progress: bool = True) -> dict | None:
    """Evaluate every method of ``cfg`` on one split; returns the report (on rank 0, else None)."""
    check_inference(cfg["inference"])
    info = init_distributed(cfg.get("device"))
    out = Path(cfg["out"])
    d = cfg["data"]
    dataset = build_dataset(d["name"], d["root"], d["split"], **d.get("options", {}))
    torch.manual_seed(cfg["seed"])
    models = _backbones(cfg, dataset.num_classes or 1, info.device)
    backbone_name = models[_backbone_key(cfg["backbone"])][1]
    if info.is_main:
        save_config(cfg, out / "config.yaml")
    for m in cfg["methods"]:  # fail before any fitting or inference, not after
        if m.get("head") and not Path(m["head"]).is_file():
            raise HeadError(f"{m['head']}: head checkpoint of method {m['name']!r} not found; train it with "
                            f"tools/train_head.py or remove the method")
    methods = [_Method(m, dataset.num_classes, models[_backbone_key(m.get("backbone") or cfg["backbone"])][0],
                       cfg, out, info) for m in cfg["methods"]]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique: {names}")
    make = lambda: AnomalyMetrics(cfg["protocol"], components=cfg["components"],  # noqa: E731
                                  component_track=cfg["component_track"], spill_dir=out / "state")
    plot_hist = lambda: ScoreHistogram(7, buffer_size=1 << 18)  # noqa: E731  (coarse: for plots and thresholds)
    state_path = _state_path(out, info.rank)
    k = dataset.num_classes
    metrics = {n: make() for n in names}
    hists = {n: plot_hist() for n in names}
    per_image_metrics = {n: AnomalyMetrics("per_image") for n in names} if cfg["protocol"] == "pooled" else {}
    conf, done = torch.zeros(max(k, 1), max(k, 1), dtype=torch.int64), set()
    if state_path.is_file():  # resume: our own state file, written by this code
        with open(state_path, "rb") as f:
            st = pickle.load(f)
        for n in names:
            metrics[n].merge(AnomalyMetrics.from_state(st["metrics"][n]))
            hists[n].load_state_dict(st["hists"][n])
            if per_image_metrics:
                per_image_metrics[n].merge(AnomalyMetrics.from_state(st["per_image_metrics"][n]))
        conf, done = torch.from_numpy(st["conf"]), set(st["done"])
    overlay_ids = set(range(min(cfg["overlays"]["images"], len(dataset))))
    mine = [i for i in range(len(dataset)) if i % info.world == info.rank]
    todo = [i for i in mine if i not in done]
    inf = cfg["inference"]

    def save_state():
        st = {"metrics": {n: m.state_dict() for n, m in metrics.items()},
              "hists": {n: h.state_dict() for n, h in hists.items()},
              "per_image_metrics": {n: m.state_dict() for n, m in per_image_metrics.items()},
              "conf": conf.numpy(), "done": sorted(done)}
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_name(state_path.name + ".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(st, f)
        os.replace(tmp, state_path)

    bar = tqdm(todo, desc=f"evaluate {d['split']}", disable=not (progress and info.is_main))
    for count, i in enumerate(bar, 1):
        s = dataset[i]
        images = torch.from_numpy(np.array(s["image"]))[None].to(info.device)
        size = s["anomaly"].shape
        outputs = {key: infer(mdl, images, size, inf) for key, (mdl, _) in models.items()}
        outp = outputs[_backbone_key(cfg["backbone"])]
        anomaly = torch.from_numpy(s["anomaly"])[None]
        if k:
            conf += confusion_matrix(outp.logits[:, :k].argmax(1).cpu(), torch.from_numpy(s["semantic"])[None], k)
        for m in methods:
            score = m.score(m.model, images, outputs[m.backbone_key], size).float()
            metrics[m.name].update(score, anomaly, ids=[i])
            hists[m.name].update(score.numpy(), s["anomaly"])
            if per_image_metrics:
                per_image_metrics[m.name].update(score, anomaly, ids=[i])
            if i in overlay_ids:
                cache = out / "state" / "overlays" / f"{i}_{viz.safe_name(m.name)}.npy"
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.save(cache, score[0].numpy().astype(np.float16))
        done.add(i)
        if count % cfg["save_every"] == 0:
            save_state()
    save_state()

    # merge over ranks
    for n in names:
        metrics[n] = reduce_distributed(metrics[n])
        if per_image_metrics:
            per_image_metrics[n] = reduce_distributed(per_image_metrics[n])
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * info.world
        dist.all_gather_object(gathered, {n: h.state_dict() for n, h in hists.items()})
        for n, h in hists.items():
            h.reset()
            for g in gathered:
                other = ScoreHistogram(7, buffer_size=1)
                other.load_state_dict(g[n])
                h.merge(other)
    all_reduce_sum(conf)
    barrier()
    if not info.is_main:
        return None
    report = _write_report(cfg, out, dataset, backbone_name, methods, metrics, per_image_metrics, hists, conf, k)
    _write_overlays(cfg, out, dataset, names, hists)
    return report


def _write_report(cfg, out, dataset, backbone_name, methods, metrics, per_image_metrics, hists, conf, k) -> dict:
    results = {}
    for m in methods:
        r = metrics[m.name].compute()
        r.pop("skipped_reasons", None)
        r["tpr95_threshold"] = viz.tpr_threshold(hists[m.name])
        results[m.name] = r
    report = {
        "protocol": cfg["protocol"], "dataset": cfg["data"]["name"], "split": cfg["data"]["split"],
        "images": len(dataset), "methods": results,
        "miou": miou(conf)[0] if k else None,
        "checkpoint": cfg["backbone"].get("checkpoint"), "backbone": backbone_name,
        "anomseg_version": anomseg.__version__, "config": cfg,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    source = per_image_metrics or metrics
    with open(out / "per_image.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "name", "method", "auroc", "aupr", "fpr95", "anomaly_px", "inlier_px"])
        for m in methods:
            for rec in source[m.name].per_image():
                w.writerow([rec["id"], dataset.records[rec["id"]].name, m.name, rec["auroc"], rec["aupr"], rec["fpr95"],
                            rec["anomaly_px"], rec["inlier_px"]])
    (out / "report.md").write_text(markdown_table(report) + "\n")
    viz.plot_curves(hists, out)
    viz.plot_histograms(hists, out)
    return report


def markdown_table(report: dict) -> str:
    """The report's methods as a Markdown table (percentages)."""
    head = (f"{report['dataset']} / {report['split']}, protocol `{report['protocol']}`, {report['images']} images"
            + (f", closed-set mIoU {100 * report['miou']:.1f}" if report.get("miou") is not None else ""))
    lines = [head, "", "| method | AUROC | AUPR | FPR95 |", "|---|---:|---:|---:|"]
    for name, r in report["methods"].items():
        lines.append(f"| {name} | {100 * r['auroc']:.2f} | {100 * r['aupr']:.2f} | {100 * r['fpr95']:.2f} |")
    return "\n".join(lines)


def _write_overlays(cfg, out, dataset, names, hists) -> None:
    spec = cfg["overlays"]
    for i in range(min(spec["images"], len(dataset))):
        s = dataset[i]
        maps, thresholds, label = {}, {}, ""
        for n in names:
            cache = out / "state" / "overlays" / f"{i}_{viz.safe_name(n)}.npy"
            if not cache.is_file():
                continue
            maps[n] = np.load(cache).astype(np.float32)
            thresholds[n], label = viz.resolve_threshold(spec["threshold"], hists[n], maps[n])
        if maps:
            panel = viz.overlay_panel(np.array(s["image"]), s["anomaly"], maps, thresholds, label)
            viz.save_png(out / "overlays" / f"{i:04d}_{dataset.records[i].name.replace('/', '_')}.png", panel)


def render_overlays(eval_dir: str | Path, indices, threshold="tpr95", out_dir: str | Path | None = None,
                    progress: bool = True) -> list[Path]:
    """Overlay panels for chosen images of a finished evaluation (``report.json`` in ``eval_dir``).

    Args:
        indices: image indices of the evaluated split.
        threshold: ``"tpr95"`` (each method's TPR-95 threshold on that split, from the report), a
            number, or ``"topK%"`` (the K% highest-scoring pixels of each image).
        out_dir: where the PNGs go (default ``<eval_dir>/overlays``).
    Returns:
        the written PNG paths.
    """
    eval_dir = Path(eval_dir)
    report_path = eval_dir / "report.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"{report_path}: no evaluation report; run tools/eval_caos.py first")
    report = json.loads(report_path.read_text())
    cfg = report["config"]
    d = cfg["data"]
    dataset = build_dataset(d["name"], d["root"], d["split"], **d.get("options", {}))
    models = _backbones(cfg, dataset.num_classes or 1, torch.device("cpu"))
    info = init_distributed("cpu")
    methods = [_Method(m, dataset.num_classes, models[_backbone_key(m.get("backbone") or cfg["backbone"])][0],
                       cfg, eval_dir, info) for m in cfg["methods"]]
    out_dir = Path(out_dir or eval_dir / "overlays")
    paths = []
    inf = cfg["inference"]
    for i in tqdm(list(indices), desc="overlays", disable=not progress):
        if not 0 <= i < len(dataset):
            raise IndexError(f"image index {i} is outside the {len(dataset)} images of {d['split']}")
        s = dataset[i]
        images = torch.from_numpy(np.array(s["image"]))[None]
        size = s["anomaly"].shape
        outputs = {key: infer(mdl, images, size, inf) for key, (mdl, _) in models.items()}
        maps, thresholds, label = {}, {}, ""
        for m in methods:
            maps[m.name] = m.score(m.model, images, outputs[m.backbone_key], size)[0].numpy()
            if threshold == "tpr95":
                thresholds[m.name], label = report["methods"][m.name]["tpr95_threshold"], "TPR95"
            else:
                thresholds[m.name], label = viz.resolve_threshold(threshold, None, maps[m.name])
        panel = viz.overlay_panel(np.array(s["image"]), s["anomaly"], maps, thresholds, label)
        paths.append(viz.save_png(out_dir / f"{i:04d}_{dataset.records[i].name.replace('/', '_')}.png", panel))
    return paths
