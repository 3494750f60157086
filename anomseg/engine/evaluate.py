"""The evaluation pipeline behind ``tools/eval_caos.py``: one pass over a split, many methods.

For every image the backbone runs once (optionally multi-scale / flipped; a method reading inner
responses, CORES, taps that pass instead of running its own); every method turns the logits or features
into a float32 score map at the label size, which goes to that method's
:class:`~anomseg.metrics.AnomalyMetrics` (the chosen protocol) and to a plotting histogram, on the device:
the per-image metrics of every method in one batched call (:func:`~anomseg.metrics.measure_batch`), what
the host records copied behind one event; closed-set mIoU is accumulated alongside. ``timing.json`` gives
the loop's images/s and its time per stage. Images are sharded over torchrun ranks; the state is
saved every ``save_every`` images, so an interrupted evaluation resumes without redoing finished
images. Outputs: ``report.json``, ``per_image.csv``, ``report.md``, ``roc.png``, ``pr.png``,
``hist_<method>.png``, ``overlays/*.png`` and the resolved ``config.yaml``.

``protocol`` names one protocol or a list (the first is the report's headline; each is reported with the
arithmetic that produced it). ``export: smiyc`` also writes every method's score files for
SegmentMeIfYouCan (:mod:`anomseg.engine.export`); a split whose labels are hidden (a benchmark's test
split) is then scored and exported without metrics.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import functools
import io
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

import anomseg
from anomseg import viz
from anomseg.models.identity import weights_hash
from anomseg.config import ANY, BACKBONE_SCHEMA, OPTIONAL_STR, ConfigError, merge, save_config, schema_from_defaults
from anomseg.background import Background
from anomseg.data import DatasetSection, build_dataset
from anomseg.data.loader import sample_loader, spare_cores
from anomseg.errors import DatasetError
from anomseg.files import (StageClock, check_fingerprint, check_safe_name, csv_cell, file_digest, output_lock,
                           save_torch_atomic, write_json_atomic, write_text_atomic, write_timing, write_with)
from anomseg.distributed import barrier, init_distributed
from anomseg.engine import instance_eval
from anomseg.engine.export import EXPORTS, SmiycExporter
from anomseg.engine.recorder import EvaluationRecorder
from anomseg.heads.io import HeadError
from anomseg import instances as instances_lib
from anomseg.html_report import read_per_image, worst_images, write_html_report
from anomseg.metrics import PROTOCOLS
from anomseg.metrics.evaluator import INSTANCE_PROTOCOL, pixel_protocols
from anomseg.metrics.components import TRACKS
from anomseg.models.checkpoints import backbone_from_config
from anomseg.models.inference import AMP, PRESETS, predict_with
from anomseg.methods import Method, Observation, build_from_spec, check_consumable, method_class, spec_method_name
from anomseg.methods.base import check_method_options
from anomseg.models.inference import check_inference_settings
from anomseg.options import NonNegativeInt, PositiveInt, check_options
from anomseg.metrics.segmentation import confusion_matrix

DEFAULTS = {
    "seed": 0,
    "out": "runs/eval",
    "device": None,
    "data": {"name": "streethazards", "root": "data/synthetic", "split": "test", "options": {}},
    "backbone": {"name": None, "options": {}, "checkpoint": None},
    "inference": {"preset": "none", "scales": [1.0], "flip": False, "amp": "none"},
    "workers": "auto",  # image-decoding processes ahead of the backbone (0: none; auto: on the spare cores)
    "methods": [{"name": "msp"}, {"name": "max_logit"}, {"name": "entropy"}, {"name": "energy"}],
    "protocol": "per_image",  # or a list, e.g. [pooled, smiyc]: the first is the headline; add instances for OoDIS AP
    "components": False,
    "component_track": "auto",  # anomaly (500 / 100 px) | obstacle (50 / 10) | auto: the dataset's track
    # protocol instances: how score maps become instances (anomseg.instances.DEFAULTS: threshold, min_size,
    # confidence, refine: none | sam, sam: {model, prompts, multimask, merge_iou, seed}, export: [oodis, coco])
    "instances": copy.deepcopy(instances_lib.DEFAULTS),
    "export": "none",  # smiyc: also write SegmentMeIfYouCan score files (anomaly_p/<method>/<set>/<fid>.hdf5 + a zip)
    # fitted scores: fit on `data` (default: the evaluated dataset) at its train / val split; a method's
    # own `fit: {data, split, images}` overrides
    "fit": {"data": None, "train_split": "train", "val_split": "val", "max_images": 200},
    "save_every": 25,
    "resume": True,
    "overlays": {"images": 6, "threshold": "best_f1"},  # or tpr95, a number, topK%
}


def check_inference(inf: dict) -> None:
    """Refuse inference settings that no longer mean anything (one line, with the fix)."""
    if inf["preset"] not in PRESETS:
        raise ConfigError(f"inference preset {inf['preset']!r}: choose one of {', '.join(PRESETS)}")
    if inf.get("amp", "none") not in AMP:
        raise ConfigError(f"inference.amp {inf['amp']!r}: choose one of {', '.join(AMP)}")
    if "average" in inf:
        raise ConfigError("inference.average: removed; every method now gets what it consumes (logit scores the mean "
                          "logits, probability scores the mean probabilities); use inference.preset: caos to reproduce "
                          "CAOS, with its max_mean_prob / max_double_softmax / neg_mean_prob0 scores")
    check_inference_settings(inf)
    if inf["preset"] == "caos" and (list(inf["scales"]) != [1.0] or inf["flip"]):
        raise ConfigError("inference.preset: caos fixes the five CAOS input sizes and no flip; remove inference.scales / "
                          "inference.flip")


def fit_section(data: DatasetSection | None = None, train_split: str = "train", val_split: str = "val",
                max_images: PositiveInt = 200) -> None:
    """The evaluation's ``fit`` section, declared: the data fitted scores fit on (default: the evaluated
    dataset), its split roles and the most images they read."""


def method_fit_section(data: DatasetSection | None = None, split: str | None = None,
                       images: PositiveInt | None = None) -> None:
    """A method's own ``fit`` section, declared: its data, split and image count."""


def protocols(cfg: dict) -> list[str]:
    """The config's pixel protocols, checked (one line naming the bad value); ``instances`` (the OoDIS
    instance protocol, :mod:`anomseg.engine.instance_eval`) is not one of them: alone it comes with
    ``per_image``."""
    p = cfg["protocol"]
    names = [p] if isinstance(p, str) else list(p)
    known = PROTOCOLS + (INSTANCE_PROTOCOL,)
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"protocol={p!r}: give one of {', '.join(known)} or a list of them")
    for n in names:
        if n not in known:
            raise ConfigError(f"protocol={n!r} is unknown; choose one of {', '.join(known)} (or a list of them)")
    if len(set(names)) != len(names):
        raise ConfigError(f"protocol {p!r}: each protocol once")
    return pixel_protocols(names)


def overlays_section(images: NonNegativeInt = 6, threshold: str | float = "best_f1") -> None:
    """The ``overlays`` section, declared: how many images get a panel, and at which threshold."""


def check_settings(cfg: dict) -> None:
    """Every check that needs only the config, before anything is built or written."""
    protocols(cfg)
    if instance_eval.enabled(cfg):
        instance_eval.settings(cfg)
    check_options("overlays", overlays_section, cfg["overlays"])
    if not isinstance(cfg["save_every"], int) or cfg["save_every"] < 1:
        raise ConfigError(f"save_every={cfg['save_every']!r}: give a number of images >= 1")
    names = [m["name"] for m in cfg["methods"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"methods: names must be unique, got {names}; give repeated scores their own name")
    if cfg["component_track"] != "auto" and cfg["component_track"] not in TRACKS:
        raise ConfigError(f"component_track {cfg['component_track']!r}: choose auto, {', '.join(TRACKS)}")
    if cfg["export"] not in EXPORTS:
        raise ConfigError(f"export {cfg['export']!r}: choose one of {', '.join(EXPORTS)}")
    if cfg["export"] == "smiyc":
        for m in cfg["methods"]:
            try:
                SmiycExporter(".").path(m["name"], "x", "x")
            except ValueError as exc:
                raise ConfigError(f"export: smiyc: {exc}") from None


def consumes(spec: dict) -> str:
    """What a config entry's method takes from the inference step (see :mod:`anomseg.methods`)."""
    return method_class(spec_method_name(spec)).consumes


def check_methods(cfg: dict) -> None:
    """Refuse a method with a bad option, or whose input the inference settings cannot give it (one line, with
    the fix)."""
    check_options("fit", fit_section, cfg["fit"])
    for spec in cfg["methods"]:
        try:  # a method's name names its files and columns: the report, the CSV, the score files
            check_safe_name(spec["name"], "method name")
        except ValueError as exc:
            raise ConfigError(f"methods: {exc}") from None
        name = spec_method_name(spec)
        check_method_options(name, spec.get("options", {}))
        if "fit" in spec:
            check_options(f"method {spec['name']!r}: fit", method_fit_section, spec["fit"])
        problem = check_consumable(consumes(spec), cfg["inference"])
        if problem:
            raise ConfigError(f"method {spec['name']!r}: {problem}")
    for m in cfg["methods"]:  # fail before any fitting or inference, not after
        if m.get("head") and not Path(m["head"]).is_file():
            raise HeadError(f"{m['head']}: head checkpoint of method {m['name']!r} not found; train it with "
                            f"tools/train_head.py or remove the method")


SCHEMA = schema_from_defaults(DEFAULTS, {
    "device": OPTIONAL_STR, "workers": (int, str), "data.options": ANY, "data.split": OPTIONAL_STR, "backbone": BACKBONE_SCHEMA,
    "inference.scales": list, "inference.window": (list, type(None)), "inference.window_stride": list, "fit.data": ANY, "overlays.threshold": (str, int, float), "protocol": (str, list),
    "instances": ANY,
    "methods": [{"name": str, "score": str, "options": ANY, "head": OPTIONAL_STR, "backbone": BACKBONE_SCHEMA,
                 "fit": {"data": ANY, "split": str, "images": int}}],
})

EVAL_STATE_VERSION = 2  # 2: data-only state files (npz + JSON), per-method spill folders
FIT_VERSION = 1
FIT_BATCH = 8  # images per backbone call while fitting


def prepare(spec: dict, model, cfg: dict, out: Path, dist_info, progress: bool = True) -> Method:
    """Build a config entry's method for ``model`` and fit it if it is fitted (see :func:`fit`)."""
    method = build_from_spec(spec)
    method.setup(model)
    if method.fit_split is not None:
        fit(method, spec, model, cfg, out, dist_info, progress)
    return method


def fit(method: Method, spec: dict, model, cfg: dict, out: Path, dist_info, progress: bool = True) -> None:
    """Fit streaming over the method's fit split under the evaluation's inference settings (what it will
    be applied to); the fitted state is saved in ``out/fitted/<name>.pt`` with what made it, and checked
    when it is reused."""
    name = spec["name"]
    f = {**cfg["fit"], **spec.get("fit", {})}
    data = f.get("data") or cfg["data"]
    split = f.get("split") or (f["train_split"] if method.fit_split == "train" else f["val_split"])
    fingerprint = {"version": FIT_VERSION, "score": spec_method_name(spec), "options": spec.get("options", {}),
                   "weights": weights_hash(model), "num_classes": model.num_classes,
                   "data": {k: data.get(k) for k in ("name", "root", "options")}, "split": split,
                   "images": f.get("images", f["max_images"]), "inference": cfg["inference"]}
    path = out / "fitted" / f"{viz.safe_name(name)}.pt"
    if dist_info.is_main and not path.is_file():
        try:
            ds = build_dataset(data["name"], data["root"], split, **data.get("options", {}))
        except DatasetError as exc:
            raise ConfigError(f"method {name!r} is fitted on split {split!r} of dataset {data['name']!r}, which "
                              f"cannot be read ({exc}); give the method (or the fit section) fit: {{data: {{name, "
                              f"root}}, split}} naming the dataset the backbone was trained on") from None
        if not ds.num_classes:
            raise ConfigError(f"method {name!r} fits on closed-set labels, but {data['name']}/{split} has none (an "
                              f"evaluation-only set); give the method (or the fit section) fit: {{data: {{name, root}}}} "
                              f"naming the dataset the backbone was trained on")
        n = min(len(ds), fingerprint["images"])
        dev, inf = dist_info.device, cfg["inference"]
        loader = sample_loader(ds, range(n), workers=cfg["workers"], device=dev)

        def observe(group):
            images = torch.cat([s["image"] for s in group]).to(dev, non_blocking=True)
            size = group[0]["semantic"].shape
            semantic = torch.from_numpy(np.stack([s["semantic"] for s in group])).to(dev)
            return Observation(predict_with(model, images, size, inf), images, model, size, inf["amp"]), semantic

        def batches():  # up to FIT_BATCH equally sized images per backbone call (the fitted statistics are sums)
            group = []
            for s in tqdm(loader, desc=f"fit {name} on {split}", leave=False, disable=not progress):
                if group and (len(group) == FIT_BATCH or s["semantic"].shape != group[0]["semantic"].shape
                              or s["image"].shape != group[0]["image"].shape):
                    yield observe(group)
                    group = []
                group.append(s)
            if group:
                yield observe(group)
        method.fit(batches())
        save_torch_atomic(path, {"fingerprint": fingerprint, "state": method.state_dict()})
    barrier()
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        saved_fp, state = saved["fingerprint"], saved["state"]
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable fitted-score file ({type(exc).__name__}); delete it to refit") from None
    check_fingerprint(path, saved_fp, fingerprint, "delete it to refit, or set resume: false")
    method.load_state_dict(state)


class _Evaluated(NamedTuple):
    """A method of the config with the name it is reported under and the backbone it scores."""

    name: str
    method: Method
    backbone_key: str


def _methods(cfg: dict, models: dict, out: Path, info, progress: bool) -> list[_Evaluated]:
    out_list = []
    for spec in cfg["methods"]:
        key = _backbone_key(spec.get("backbone") or cfg["backbone"])
        out_list.append(_Evaluated(spec["name"], prepare(spec, models[key][0], cfg, out, info, progress), key))
    return out_list


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
    return out / "state" / f"rank{rank}.npz"


def _fingerprint(cfg: dict, models: dict, world: int) -> dict:
    """What an evaluation state depends on: a state made from anything else is not resumed."""
    heads = {m["name"]: file_digest(m["head"]) for m in cfg["methods"] if m.get("head")}
    return {"version": EVAL_STATE_VERSION, "data": cfg["data"], "inference": cfg["inference"], "methods": cfg["methods"],
            "backbone_weights": {key: weights_hash(model) for key, (model, _) in sorted(models.items())},
            "heads": heads, "protocol": cfg["protocol"], "components": cfg["components"],
            "component_track": cfg["component_track"], "fit": cfg["fit"], "processes": world, "export": cfg["export"],
            "instances": cfg["instances"] if instance_eval.enabled(cfg) else None}


def _check_classes(dataset, models: dict, cfg: dict) -> None:
    """A backbone must predict the dataset's K closed classes, or K + 1 when it is a pixel backbone trained with
    the ``background`` loss. A mask-classification backbone (Mask2Former) has no such route: K + 1 known classes
    there is a UNO file (K + 2 head rows with 'no object') read as a normal model, its negative row a known class."""
    k = dataset.num_classes
    if not k:
        return
    for key, (model, name) in models.items():
        masked = getattr(model, "mask_classification", False)
        if masked and model.num_classes == k + 1:
            raise ConfigError(f"backbone {name!r} ({json.loads(key).get('checkpoint') or 'no checkpoint'}) predicts "
                              f"{k + 1} known classes but {cfg['data']['name']}/{dataset.split} has {k}, and a "
                              f"Mask2Former has no trained background class: a {k}-class UNO file reads like this (its "
                              f"negative row would count as known class {k}); build it with num_classes {k} and backbone "
                              f"option negative_class: true")
        if model.num_classes not in (k, k + 1):
            raise ConfigError(f"backbone {name!r} ({json.loads(key).get('checkpoint') or 'no checkpoint'}) predicts "
                              f"{model.num_classes} classes but {cfg['data']['name']}/{dataset.split} has {k}; evaluate it on "
                              f"the dataset it was trained for")


def run_evaluation(cfg: dict, progress: bool = True) -> dict | None:
    """Evaluate every method of ``cfg`` on one split; returns the report (on rank 0, else None).

    Keys ``cfg`` leaves out take their :data:`DEFAULTS`."""
    cfg = merge(copy.deepcopy(DEFAULTS), copy.deepcopy(cfg))
    check_settings(cfg)
    check_inference(cfg["inference"])
    check_methods(cfg)
    dataset = _dataset(cfg)  # before any folder is made: a wrong root leaves nothing behind
    info = init_distributed(cfg.get("device"))
    if info.is_main:
        for w in dataset.check_warnings:
            print(f"warning: {w}", file=sys.stderr)
    out = Path(cfg["out"])
    with output_lock(out) if info.is_main else contextlib.nullcontext():
        run = _build(cfg, info, out, dataset, progress)
        _loop(run, progress)  # this rank's images not yet recorded
        run.recorder.reduce(info.device)  # every rank's
        barrier()
        return _write_outputs(run, progress) if info.is_main else None


def _dataset(cfg: dict):
    """The evaluated split, checked against what the config asks of it."""
    d = cfg["data"]
    dataset = build_dataset(d["name"], d["root"], d["split"], **d.get("options", {}))
    _check_download(dataset, d)
    if dataset.labels_hidden and cfg["export"] == "none":
        hidden = sum(r.label is None for r in dataset.records)
        raise ConfigError(f"{d['name']}/{dataset.split}: {hidden} of {len(dataset)} frames have no public label "
                          f"({dataset.hidden_labels_note}); metrics need a split with labels (e.g. validation), "
                          f"or set export: smiyc to write the score files")
    if instance_eval.enabled(cfg) and not dataset.labels_hidden:
        instance_eval.check_dataset(dataset, cfg)
    return dataset


def _check_download(dataset, d: dict) -> None:
    """``anomseg data check``'s quick form on the evaluated split (:func:`anomseg.data.check.check_split`): a missing
    file or a label of another size stops the run before anything is written; a frame count other than the official
    one is a warning (on stderr from rank 0), kept in report.json (``data_check``)."""
    from anomseg.data.check import check_split

    problems, warnings = check_split(dataset, d["name"], d["root"], options=d.get("options", {}))
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise DatasetError(f"{problems[0]}{more}; `anomseg data check {d['name']} {d['root']}` lists every problem")
    dataset.check_warnings = warnings  # said once, by rank 0 (run_evaluation); every rank stops on a problem


@dataclass
class _Run:
    """What one evaluation run works with, built once by :func:`_build`."""

    cfg: dict
    info: object  # DistInfo
    out: Path
    dataset: object
    models: dict  # {backbone key: (model, name)}
    methods: list  # [_Evaluated]
    recorder: EvaluationRecorder
    fingerprint: dict
    exporter: SmiycExporter | None
    overlay_ids: set
    evaluated: bool  # False: a split whose labels are hidden, scored and exported only
    instances: bool = False  # protocol instances: every score map is kept for the instance pass
    recorded: int = 0  # images recorded by this process in this run (the state is saved every save_every)

    @property
    def state_path(self) -> Path:
        return _state_path(self.out, self.info.rank)

    def save_state(self) -> None:
        self.recorder.save(self.state_path, self.fingerprint)


def _build(cfg: dict, info, out: Path, dataset, progress: bool) -> _Run:
    """Backbones, methods (fitted), the recorder (resumed from this rank's state file when there is one)."""
    track = cfg["component_track"]
    if track == "auto":  # the dataset's own SegEval sizes (obstacle track: 50 / 10 px)
        track = getattr(dataset, "component_track", None) or "anomaly"
    torch.manual_seed(cfg["seed"])
    models = _backbones(cfg, dataset.num_classes or 1, info.device)
    _check_classes(dataset, models, cfg)
    if info.is_main and not cfg["resume"]:  # start over: nothing of an earlier run is reused
        for sub in ("state", "fitted", "anomaly_p", "instances"):
            shutil.rmtree(out / sub, ignore_errors=True)
    barrier()
    fingerprint = _fingerprint(cfg, models, info.world)
    state_path = _state_path(out, info.rank)
    saved = None
    if state_path.is_file():  # resume: a data-only file, checked against what this run would make
        saved = EvaluationRecorder.read(state_path)
        check_fingerprint(state_path, saved["fingerprint"], fingerprint,
                          "set resume: false (or choose a new out) to evaluate from scratch")
    if info.is_main:
        save_config(cfg, out / "config.yaml")
    methods = _methods(cfg, models, out, info, progress)
    recorder = EvaluationRecorder([m.name for m in methods], protocols(cfg), num_classes=dataset.num_classes,
                                  components=cfg["components"], component_track=track,
                                  spill_root=out / "state" / "spill", rank=info.rank)
    if saved is not None:
        recorder.load_state_dict(saved)
    evaluated = not dataset.labels_hidden
    return _Run(cfg, info, out, dataset, models, methods, recorder, fingerprint,
                SmiycExporter(out) if cfg["export"] == "smiyc" else None,
                set(range(min(cfg["overlays"]["images"], len(dataset)))) if evaluated else set(), evaluated,
                evaluated and instance_eval.enabled(cfg))


class _Pending(NamedTuple):
    """One scored image on its way from the loop to :func:`_record`."""

    index: int
    target: torch.Tensor  # uint8 (1, H, W) anomaly labels, on the device
    scores: dict  # {method: float32 (1, H, W)} on the device
    host_maps: dict  # {method: float32 (1, H, W)} copied to the host (exported or cached for overlays)
    measured: dict  # {method: [Measured]} (empty: labels hidden)
    image_conf: torch.Tensor | None  # int64 (K, K) on the host
    ready: object  # a CUDA event behind the asynchronous copies, or None
    image_size: tuple


def _record(run: _Run, item: _Pending) -> None:
    """Host side of one image, in the background: score files, the recorder, overlay caches, the state file."""
    if item.ready is not None:
        item.ready.synchronize()  # the asynchronous copies to the host have landed
    i, ds = item.index, run.dataset
    if run.exporter is not None:  # first: a map the metrics refuse is not half-recorded
        for name in item.scores:
            run.exporter.write(name, ds.group(i), ds.records[i].name, item.host_maps[name][0].numpy(), item.image_size)
    run.recorder.record(i, item.scores, item.target, item.measured, item.image_conf)
    if run.instances:
        instance_eval.keep_maps(run.out, i, {name: m[0].numpy() for name, m in item.host_maps.items()})
    if run.evaluated and i in run.overlay_ids:
        for name, m in item.host_maps.items():
            cache = run.out / "state" / "overlays" / f"{i}_{viz.safe_name(name)}.npy"
            write_with(cache, lambda tmp, m=m[0].numpy().astype(np.float16): _save_npy(tmp, m))
    run.recorded += 1
    if run.recorded % run.cfg["save_every"] == 0:
        run.save_state()


def _loop(run: _Run, progress: bool) -> None:
    """Score this rank's images not yet recorded: one backbone pass each, every method, every metric measured
    on the device; the host side (:func:`_record`) overlapped in the background. ``timing.json`` says where the
    time went."""
    cfg, info, dataset, models, recorder = run.cfg, run.info, run.dataset, run.models, run.recorder
    todo = [i for i in range(len(dataset)) if i % info.world == info.rank and i not in recorder.done]
    inf, k = cfg["inference"], dataset.num_classes
    main_key = _backbone_key(cfg["backbone"])
    cuda = info.device.type == "cuda"
    taps = {key: method_taps(run.methods, key, mdl) for key, (mdl, _) in models.items()}  # one pass serves every method
    started = time.perf_counter()
    loader = sample_loader(dataset, todo, workers=cfg["workers"], device=info.device)
    batches = iter(loader)  # the decoding processes start before the background thread does
    bar = tqdm(batches, total=len(todo), desc=f"evaluate {dataset.split}", disable=not (progress and info.is_main))
    clock = StageClock()  # where the loop's time goes (timing.json)
    with Background(functools.partial(_record, run), depth=2, name="anomseg-evaluation",
                    threaded=spare_cores(info.device) > 0) as background:
        for s in bar:
            clock.lap("reading")
            images = s["image"].to(info.device, non_blocking=True)
            size = s["anomaly"].shape
            outputs = {key: predict_with(mdl, images, size, inf, taps[key]) for key, (mdl, _) in models.items()}
            image_conf = None
            if k:
                semantic = torch.from_numpy(s["semantic"])[None].to(info.device, non_blocking=True)
                image_conf = confusion_matrix(outputs[main_key].logits[:, :k].max(1).indices, semantic, k)  # max: 5x argmax on CPU
                image_conf = image_conf.to("cpu", non_blocking=cuda)
            clock.lap("inference")
            scores = {}
            for m in run.methods:
                scores[m.name] = m.method.score(Observation(outputs[m.backbone_key], images, models[m.backbone_key][0],
                                                            size, inf["amp"]))
                clock.lap(f"score {m.name}")
            # every method's per-image metrics in one batched call on the device; what the host records (metric
            # values, confusion counts, the few maps exported or cached for overlays) copied asynchronously on CUDA,
            # one event behind all of it: one synchronisation per image, in the background worker
            target = torch.from_numpy(s["anomaly"])[None].to(info.device, non_blocking=True)
            measured = recorder.measure(scores, target, s["index"], host_anomaly=s["anomaly"][None]) if run.evaluated else {}
            host_maps = {n: v.to("cpu", non_blocking=cuda) for n, v in scores.items()
                         if run.exporter is not None or run.instances or s["index"] in run.overlay_ids}
            ready = None
            if cuda:
                ready = torch.cuda.Event()
                ready.record()
            clock.lap("metrics")
            background.put(_Pending(s["index"], target, scores, host_maps, measured, image_conf, ready,
                                    tuple(s["image"].shape[1:3])))
            clock.lap("recording")
    run.save_state()
    if info.is_main:  # the steady-state throughput of this run (images read, scored and recorded)
        write_timing(run.out / "timing.json", "evaluation", len(todo), time.perf_counter() - started, clock.seconds)


def _write_outputs(run: _Run, progress: bool = True) -> dict:
    """Rank 0, after the ranks are merged: the score files' zips, report.json / .md, per_image.csv, the plots,
    overlays, worst-image panels and report.html."""
    cfg, out, dataset, names = run.cfg, run.out, run.dataset, run.recorder.names
    backbone_name = run.models[_backbone_key(cfg["backbone"])][1]
    if run.exporter is not None:
        for n in names:
            run.exporter.zip(n)
    if not run.evaluated:
        return _write_export_report(cfg, out, dataset, backbone_name, names, run.exporter)
    if run.recorder.anomaly_pixels() == 0:
        raise DatasetError(f"{cfg['data']['root']}: no pixel of the {len(dataset)} evaluated images is an anomaly (label "
                           f"value 1); 255 means void (excluded): if your masks mark anomalies with 255, map them to 1 "
                           f"(0 inlier, 1 anomaly, 255 void)")
    inst = None
    if run.instances:
        inst = instance_eval.run_pass(cfg, out, dataset, names, run.recorder.hists, run.info.device,
                                      run.recorder.component_track, run.overlay_ids, progress=progress)
    report = _write_report(cfg, out, dataset, backbone_name, run.recorder, run.exporter, inst)
    hists = run.recorder.hists
    _write_overlays(cfg, out, dataset, names, hists)
    worst = worst_images(read_per_image(out / "per_image.csv"), names)  # the page's rule, from the CSV just written
    _write_worst(cfg, out, dataset, run.models, run.methods, hists, worst)
    write_html_report(out, worst)
    return report


def method_taps(methods: list, key: str, model) -> list:
    """The modules of backbone ``key`` whose inputs its methods read from the inference pass (:meth:`Method.taps`)."""
    return [mod for m in methods if m.backbone_key == key for mod in m.method.taps(model)]


def _score_images(dataset, indices, models: dict, methods: list, inf: dict, which=None):
    """Yield (index, sample, {method: float32 (H, W) score map}) for chosen images of a split; ``which(i)``
    (default: all) names the methods wanted on image i, and only their backbones run."""
    for i in indices:
        s = dataset[i]
        chosen = [m for m in methods if which is None or m.name in which(i)]
        model0 = next(iter(models.values()))[0]
        images = torch.from_numpy(np.array(s["image"]))[None].to(next(model0.parameters()).device)
        size = s["anomaly"].shape
        outputs = {key: predict_with(mdl, images, size, inf, method_taps(chosen, key, mdl))
                   for key, (mdl, _) in models.items() if any(m.backbone_key == key for m in chosen)}
        maps = {m.name: m.method.score(Observation(outputs[m.backbone_key], images, models[m.backbone_key][0], size,
                                                   inf["amp"]))[0].float().cpu().numpy() for m in chosen}
        yield i, s, maps


def _write_worst(cfg, out, dataset, models, methods, hists, worst: dict[str, list[int]]) -> None:
    """``worst/<method>_<i>.png``: each method's panel on the images where it does worst."""
    shutil.rmtree(out / "worst", ignore_errors=True)  # only this run's panels
    wanted = sorted({i for ids in worst.values() for i in ids})
    which = lambda i: {name for name, ids in worst.items() if i in ids}  # noqa: E731  (only what a panel shows)
    for i, s, maps in _score_images(dataset, wanted, models, methods, cfg["inference"], which):
        for name in which(i):
            t, label = viz.resolve_threshold(cfg["overlays"]["threshold"], hists[name], maps[name])
            panel = viz.overlay_panel(np.array(s["image"]), s["anomaly"], {name: maps[name]}, {name: t}, label)
            viz.save_png(out / "worst" / f"{viz.safe_name(name)}_{i}.png", panel)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)


def _json_safe(x):
    """NaN / inf (e.g. a metric over nothing) become null: report.json stays valid JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return _json_safe(x.item())
    return x


def _export_summary(exporter, names) -> dict | None:
    if exporter is None:
        return None
    return {"format": "smiyc", "root": str(exporter.root / "anomaly_p"),
            "files": {n: len(exporter.files(n)) for n in names},
            "zips": {n: str(exporter.root / f"smiyc_{n}.zip") for n in names}}


def _write_export_report(cfg, out, dataset, backbone_name, names, exporter) -> dict:
    """The report of a split whose labels are hidden: what was exported, no metric."""
    report = _json_safe({
        "protocol": None, "dataset": cfg["data"]["name"], "split": dataset.split, "images": len(dataset),
        "methods": {n: {"exported": len(exporter.files(n))} for n in names}, "evaluated": False,
        "reason": f"labels hidden ({dataset.hidden_labels_note})", "export": _export_summary(exporter, names),
        "checkpoint": cfg["backbone"].get("checkpoint"), "backbone": backbone_name,
        "anomseg_version": anomseg.__version__, "config": cfg,
    })
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", markdown_table(report) + "\n")
    return report


def _write_report(cfg, out, dataset, backbone_name, recorder: EvaluationRecorder, exporter=None,
                  instances: dict | None = None) -> dict:
    results = recorder.results()
    if instances is not None:
        for n, r in instances["methods"].items():
            results[n]["instances"] = r
    report = _json_safe({
        "protocol": cfg["protocol"], "dataset": cfg["data"]["name"], "split": dataset.split,
        "images": len(dataset), "methods": results,
        **({"instances": {"settings": instances["settings"], "arithmetic": instances["arithmetic"]}}
           if instances is not None else {}),
        "miou": recorder.miou(), "data_check": getattr(dataset, "check_warnings", []),
        "checkpoint": cfg["backbone"].get("checkpoint"), "backbone": backbone_name,
        "anomseg_version": anomseg.__version__, "config": cfg,
        **({"export": _export_summary(exporter, recorder.names)} if exporter is not None else {}),
    })
    write_json_atomic(out / "report.json", report)
    rows = [["image", "name", "method", "auroc", "aupr", "fpr95", "anomaly_px", "inlier_px"]]
    rows += recorder.per_image_rows(lambda i: dataset.records[i].name)
    buf = io.StringIO()
    csv.writer(buf).writerows([[csv_cell(v) for v in row] for row in rows])
    write_text_atomic(out / "per_image.csv", buf.getvalue())
    write_text_atomic(out / "report.md", markdown_table(report) + "\n")
    viz.plot_curves(recorder.hists, out)
    viz.plot_histograms(recorder.hists, out)
    return report


def markdown_table(report: dict) -> str:
    """The report's methods as a Markdown table (percentages); one column group per protocol asked for."""
    if report.get("evaluated") is False:
        lines = [f"{report['dataset']} / {report['split']}: {report['images']} frames scored, not evaluated: "
                 f"{report['reason']}", "", "| method | score files |", "|---|---:|"]
        lines += [f"| {n} | {r['exported']} |" for n, r in report["methods"].items()]
        return "\n".join(lines + ["", f"Score files under {report['export']['root']}; one zip per method beside it."])
    first = next(iter(report["methods"].values()), {})
    names = list(first.get("protocols", {})) or pixel_protocols(report["protocol"])
    head = (f"{report['dataset']} / {report['split'] or 'all'}, protocol `{'`, `'.join(names)}`, {report['images']} images"
            + (f", closed-set mIoU {100 * report['miou']:.1f}" if report.get("miou") is not None else ""))
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731
    below = [name for name, r in report["methods"].items() if r.get("auroc") is not None and r["auroc"] < 0.5]
    note = ([""] + [f"Below chance (AUROC < 50: these scores rank the anomalies as more normal than the inliers): "
                    f"{', '.join(below)}."]) if below else []
    inst = "instances" in report  # OoDIS AP50 / AP (and the instances' component F1) beside the pixel columns
    i_head = " AP50 | AP | comp. F1 |" if inst else ""
    i_rule = "---:|" * 3 if inst else ""

    def i_cells(r):
        if not inst:
            return ""
        i = r.get("instances") or {}
        return f" {pct(i.get('AP50'))} | {pct(i.get('AP'))} | {pct((i.get('components') or {}).get('mean_F1'))} |"
    i_note = ([f"- instances ({_instance_summary(report['instances']['settings'])}): {report['instances']['arithmetic']}"]
              if inst else [])
    if len(names) == 1:
        lines = [head, "", f"| method | AUROC | AUPR | FPR95 |{i_head}", f"|---|---:|---:|---:|{i_rule}"]
        for name, r in report["methods"].items():
            lines.append(f"| {name} | {pct(r['auroc'])} | {pct(r['aupr'])} | {pct(r['fpr95'])} |{i_cells(r)}")
        return "\n".join(lines + ([""] + i_note if i_note else []) + note)
    cols = " | ".join(f"{p} {m}" for p in names for m in ("AUROC", "AUPR", "FPR95"))
    lines = [head, "", f"| method | {cols} |{i_head}", "|---|" + "---:|" * (3 * len(names)) + i_rule]
    for name, r in report["methods"].items():
        cells = " | ".join(pct(r["protocols"][p][m]) for p in names for m in ("auroc", "aupr", "fpr95"))
        lines.append(f"| {name} | {cells} |{i_cells(r)}")
    lines.append("")
    for p in names:
        lines.append(f"- `{p}`: {first['protocols'][p]['arithmetic']}")
    return "\n".join(lines + i_note + note)


def _instance_summary(settings: dict) -> str:
    refine = "SAM " + settings["sam"]["prompts"] + " prompts" if settings.get("refine") == "sam" else "no refinement"
    return (f"threshold {settings['threshold']}, components >= {settings['min_size']} px, confidence "
            f"{settings['confidence']}, {refine}")


def _write_overlays(cfg, out, dataset, names, hists) -> None:
    spec = cfg["overlays"]
    for i in range(min(spec["images"], len(dataset))):
        s = dataset[i]
        maps, thresholds, label, inst = {}, {}, "", {}
        for n in names:
            cache = out / "state" / "overlays" / f"{i}_{viz.safe_name(n)}.npy"
            if not cache.is_file():
                continue
            maps[n] = np.load(cache).astype(np.float32)
            thresholds[n], label = viz.resolve_threshold(spec["threshold"], hists[n], maps[n])
            found = instance_eval.load_overlay_instances(instance_eval.overlay_path(out, i, n))
            if found is not None:
                inst[n] = found
        if maps:
            panel = viz.overlay_panel(np.array(s["image"]), s["anomaly"], maps, thresholds, label, inst)
            viz.save_png(out / "overlays" / f"{i:04d}_{dataset.records[i].name.replace('/', '_')}.png", panel)


def render_overlays(eval_dir: str | Path, indices, threshold="best_f1", out_dir: str | Path | None = None,
                    progress: bool = True) -> list[Path]:
    """Overlay panels for chosen images of a finished evaluation (``report.json`` in ``eval_dir``).

    Args:
        indices: image indices of the evaluated split.
        threshold: ``"best_f1"`` (each method's best-F1 pixel threshold on that split, from the report),
            ``"tpr95"`` (each method's TPR-95 threshold on that split), a
            number, or ``"topK%"`` (the K% highest-scoring pixels of each image).
        out_dir: where the PNGs go (default ``<eval_dir>/overlays``).
    Returns:
        the written PNG paths.
    """
    eval_dir = Path(eval_dir)
    report_path = eval_dir / "report.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"{report_path}: no evaluation report; run tools/eval_caos.py first")
    try:
        report = json.loads(report_path.read_text())
        cfg = merge(copy.deepcopy(DEFAULTS), report["config"])
        report["methods"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{report_path}: unreadable or truncated evaluation report ({type(exc).__name__}); run "
                          f"tools/eval_caos.py again to rewrite it") from None
    if report.get("evaluated") is False:
        raise ConfigError(f"{report_path}: this split was scored and exported, not evaluated (its labels are hidden); "
                          f"there is nothing to draw")
    d = cfg["data"]
    dataset = build_dataset(d["name"], d["root"], d["split"], **d.get("options", {}))
    models = _backbones(cfg, dataset.num_classes or 1, torch.device("cpu"))
    info = init_distributed("cpu")
    methods = _methods(cfg, models, eval_dir, info, progress)
    out_dir = Path(out_dir or eval_dir / "overlays")
    paths = []
    inf = cfg["inference"]
    indices = list(indices)
    for i in indices:
        if not 0 <= i < len(dataset):
            raise IndexError(f"image index {i} is outside the {len(dataset)} images of {d['split']}; give --images between "
                             f"0 and {len(dataset) - 1}")
    inst_spec = refiner = None
    if isinstance(report.get("instances"), dict):  # outline each method's instances as the evaluation found them
        inst_spec = instance_eval.settings({"instances": report["instances"].get("settings")})
        refiner = instances_lib.build_refiner(inst_spec)
    for i, s, maps in tqdm(_score_images(dataset, indices, models, methods, inf), total=len(indices), desc="overlays",
                           disable=not progress):
        thresholds, label, inst = {}, "", {}
        if inst_spec is not None:
            void = s["anomaly"] == 255
            for m in methods:
                t = (report["methods"][m.name].get("instances") or {}).get("threshold")
                if isinstance(t, (int, float)) and not isinstance(t, bool):
                    inst[m.name] = instances_lib.image_instances(maps[m.name], float(t), inst_spec, void=void,
                                                                 image=np.asarray(s["image"]), refiner=refiner)
        for m in methods:
            if threshold in ("tpr95", "best_f1"):
                saved = report["methods"][m.name].get("overlay_thresholds", {})
                if threshold not in saved and threshold == "tpr95":
                    saved = {"tpr95": report["methods"][m.name]["tpr95_threshold"]}
                if threshold not in saved:
                    raise ConfigError(f"{report_path}: records no {threshold} threshold of {m.name!r} (an older report); "
                                      f"evaluate again, or give --threshold tpr95 or a number")
                thresholds[m.name] = saved[threshold]
                label = "TPR95" if threshold == "tpr95" else "best-F1 threshold"
            else:
                thresholds[m.name], label = viz.resolve_threshold(threshold, None, maps[m.name])
        panel = viz.overlay_panel(np.array(s["image"]), s["anomaly"], maps, thresholds, label, inst)
        paths.append(viz.save_png(out_dir / f"{i:04d}_{dataset.records[i].name.replace('/', '_')}.png", panel))
    if out_dir == eval_dir / "overlays":  # the gallery changed: the page shows it
        write_html_report(eval_dir)
    return paths
