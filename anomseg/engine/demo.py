"""The demo pipeline: synthetic data -> segmenter -> feature bank + heads -> evaluation.

Each stage is the library function behind one tool (``generate_synthetic``, ``train_segmentation``,
``run_head_training``, ``run_evaluation``) and is skipped when its output already exists AND was made
with the same resolved config (saved beside it); output made with another config is an error that
says what changed, never reused. Every stage is seeded, so a seed gives the same table.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path


from anomseg.config import NONE, ConfigError, merge, save_config, read_yaml
from anomseg.data import generate_synthetic
from anomseg.engine.evaluate import DEFAULTS as EVAL_DEFAULTS
from anomseg.engine.evaluate import SCHEMA as EVAL_SCHEMA
from anomseg.engine.evaluate import markdown_table, run_evaluation
from anomseg.files import check_fingerprint, write_json_atomic
from anomseg.engine.train_heads import DEFAULTS as HEAD_DEFAULTS
from anomseg.engine.train_heads import SCHEMA as HEAD_SCHEMA
from anomseg.engine.train_heads import run_head_training
from anomseg.engine.train_seg import DEFAULTS as SEG_DEFAULTS, SCHEMA as SEG_SCHEMA, train_segmentation

_EVAL = copy.deepcopy(EVAL_SCHEMA)
_EVAL["methods"][0]["head"] = (str, bool, NONE)  # head: true = the head the heads stage trained
_EVAL["methods"][0]["backbone"] = (str, dict)  # backbone: <name> = the checkpoint of segmenter stage <name>
_SEGMENTER = copy.deepcopy(SEG_SCHEMA)
_SEGMENTER["init"] = str  # init: <name> = start from the checkpoint of segmenter stage <name>
_SEGMENTER["init_encoder"] = str  # init_encoder: seg = start the encoder from the demo's segmenter's
_SEGMENTER["data"]["paste"] = (bool, dict, NONE)  # paste: true = the synthetic outlier pool
SCHEMA = {"data": {"train": int, "val": int, "test": int, "outliers": int, "height": int, "width": int},
          "seg": SEG_SCHEMA, "segmenters": {"*": _SEGMENTER}, "heads": HEAD_SCHEMA, "eval": _EVAL,
          "pipeline": {"method": str, "head": bool, "split": str, "tpr": float}}


def stage_configs(demo: dict, out: Path, seed: int) -> dict[str, dict]:
    """Full configs of the three training / evaluation stages, paths under ``out``."""
    data_root = str(out / "data")
    seg = merge(copy.deepcopy(SEG_DEFAULTS), copy.deepcopy(demo["seg"]))
    seg.update(seed=seed, out=str(out / "seg"))
    seg["data"].update(name="streethazards", root=data_root)
    heads = merge(copy.deepcopy(HEAD_DEFAULTS), copy.deepcopy(demo["heads"]))
    heads.update(seed=seed, out=str(out / "heads"))
    heads["data"].update(name="streethazards", root=data_root, paste={"pool": str(out / "data" / "outliers"), "count": [1, 3]})
    heads["backbone"] = {"checkpoint": str(out / "seg" / "checkpoints" / "best.pth")}
    if "heads" in demo["heads"]:
        heads["heads"] = copy.deepcopy(demo["heads"]["heads"])
    ev = merge(copy.deepcopy(EVAL_DEFAULTS), copy.deepcopy(demo["eval"]))
    ev.update(seed=seed, out=str(out / "eval"))
    ev["data"].update(name="streethazards", root=data_root, split="test")
    ev["backbone"] = {"checkpoint": str(out / "seg" / "checkpoints" / "best.pth")}
    # a method with ``head: true`` is the head the heads stage trained under the method's name
    ev["methods"] = [dict(m, head=str(out / "heads" / "heads" / m["name"] / "best.pth")) if m.get("head") is True
                     else dict(m) for m in demo["eval"]["methods"]]
    segmenters = demo.get("segmenters") or {}
    for m in ev["methods"]:  # backbone: <segmenter stage> = that stage's best checkpoint
        if isinstance(m.get("backbone"), str):
            if m["backbone"] not in segmenters:
                raise ConfigError(f"eval method {m['name']!r}: backbone {m['backbone']!r} is not a segmenter stage "
                                  f"(segmenters: {', '.join(segmenters) or 'none'})")
            m["backbone"] = {"checkpoint": str(out / m["backbone"] / "checkpoints" / "best.pth")}
    stages = {}
    for i, (name, spec) in enumerate(segmenters.items()):  # more segmenters (the Mask2Former family), in order
        spec = copy.deepcopy(spec)
        init, init_encoder = spec.pop("init", None), spec.pop("init_encoder", None)
        if init is not None and init not in list(segmenters)[:i]:
            raise ConfigError(f"segmenters.{name}.init={init!r} is not a segmenter stage listed before it")
        if init_encoder is not None and init_encoder not in ["seg", *list(segmenters)[:i]]:
            raise ConfigError(f"segmenters.{name}.init_encoder={init_encoder!r}: give seg (the demo's segmenter) or a "
                              f"segmenter stage listed before it")
        paste = spec.get("data", {}).get("paste")
        cfg = merge(copy.deepcopy(SEG_DEFAULTS), spec)
        cfg.update(seed=seed, out=str(out / name))
        cfg["data"].update(name="streethazards", root=data_root)
        if paste is True:
            cfg["data"]["paste"] = {"pool": str(out / "data" / "outliers"), "count": [0, 1]}
        if init is not None:
            cfg["model"]["init"] = str(out / init / "checkpoints" / "best.pth")
        if init_encoder is not None:
            cfg["model"]["init_encoder"] = str(out / init_encoder / "checkpoints" / "best.pth")
        stages[name] = cfg
    # resolved as each stage's tool resolves (and saves) it: missing keys take the tool's defaults
    heads = merge(copy.deepcopy(HEAD_DEFAULTS), heads)
    ev = merge(copy.deepcopy(EVAL_DEFAULTS), ev)
    return {"seg": seg, **stages, "heads": heads, "eval": ev}


def run_demo(demo: dict, out: str | Path, seed: int = 0, workers: int | None = None, progress: bool = True) -> dict:
    """Run (or finish) every stage; returns the evaluation report."""
    out = Path(out)
    cfgs = stage_configs(demo, out, seed)
    timings = {}

    def stage(name, done: bool, fn, check=None):
        """Run ``fn`` unless ``done``; a done stage is first ``check``ed against this run's config."""
        t0 = time.perf_counter()
        if done:
            if check is not None:
                check()
            print(f"[{name}] output exists, skipped")
        else:
            print(f"[{name}] running")
            fn()
        timings[name] = round(time.perf_counter() - t0, 1)

    def same_config(key: str):
        def check():  # reuse only what the same resolved config made
            path = Path(cfgs[key]["out"]) / "config.yaml"
            saved = read_yaml(path.read_text(), str(path)) if path.is_file() else {}
            check_fingerprint(path.parent, saved, json.loads(json.dumps(cfgs[key])),
                              f"delete {path.parent} (or use a new --out) to rebuild it with this config")
        return check

    d = demo["data"]

    def make_data():  # writes nothing when a complete set of these settings exists; another set is an error
        generate_synthetic(out / "data", seed=seed, num_train=d["train"], num_val=d["val"], num_test=d["test"],
                           num_outliers=d.get("outliers", 200), height=d["height"], width=d["width"],
                           workers=workers, progress=progress)
    marker = out / "data" / "synthetic.json"
    stage("data", marker.is_file() and json.loads(marker.read_text()).get("complete"), make_data, make_data)
    def trained(key: str) -> bool:  # a segmenter stage is done when its log holds every epoch
        log = Path(cfgs[key]["out"]) / "log.jsonl"
        return log.is_file() and len(log.read_text().splitlines()) >= cfgs[key]["train"]["epochs"]

    for key, name in [("seg", "segmenter")] + [(n, n) for n in demo.get("segmenters") or {}]:
        stage(name, trained(key), lambda key=key: train_segmentation(cfgs[key], progress=progress), same_config(key))
    stage("heads", (out / "heads" / "summary.json").is_file(), lambda: run_head_training(cfgs["heads"], progress=progress),
          same_config("heads"))
    stage("evaluation", (out / "eval" / "report.json").is_file(), lambda: run_evaluation(cfgs["eval"], progress=progress),
          same_config("eval"))
    if demo.get("pipeline"):
        stage("pipeline", (out / "pipeline.pt").is_file(), lambda: save_pipeline(demo["pipeline"], out))
    report = json.loads((out / "eval" / "report.json").read_text())
    save_config({"seed": seed, "demo": demo, "stages": cfgs}, out / "config.yaml")
    write_json_atomic(out / "timings.json", timings)
    return report


def save_pipeline(spec: dict, out: Path) -> Path:
    """``<out>/pipeline.pt``: the segmenter with one method (a head the heads stage trained when ``head``), its
    operating point calibrated at TPR ``tpr`` on the synthetic ``split`` (what ``anomseg predict --pipeline`` runs)."""
    from anomseg.data import build_dataset
    from anomseg.segmenter import AnomalySegmenter

    name = spec.get("method", "opengan_fea")
    head = str(out / "heads" / "heads" / name / "best.pth") if spec.get("head", True) else None
    seg = AnomalySegmenter.from_files(checkpoint=str(out / "seg" / "checkpoints" / "best.pth"), method=name, head=head,
                                      device="cpu")
    split = spec.get("split", "val")
    seg.calibrate(build_dataset("streethazards", out / "data", split=split), tpr=spec.get("tpr", 0.95))
    path = seg.save(out / "pipeline.pt")
    print(f"  {path}: {name}, {seg.describe_operating_point()}")
    return path


def print_report(report: dict) -> None:
    print(markdown_table(report))
