"""The evaluation's instance pass (``protocol: [..., instances]``): OoDIS AP / AP50 of every method.

While the evaluation loop runs, every method's score map of each image is kept on disk
(``state/instances/maps/<i>.npz``, float32, one file per image: memory flat in the images);
after the loop the thresholds are known (``instances.threshold``: the split's TPR-95 or best-F1 pixel
threshold of each method, or a number) and this pass turns every map into instances
(:func:`~anomseg.instances.image_instances`: components, then SAM when ``refine: sam``), scores them
against the split's instance ids with :class:`~anomseg.instances.InstanceAP`, computes the SMIYC
component metrics of the instances' union, writes the exports asked for (``instances/<method>/oodis/``
the OoDIS submission files, ``instances/<method>/coco.json`` COCO RLE results) and keeps the overlay
images' instances for the panels (``state/instances/overlay/<i>_<method>.npz``). The pass is
deterministic and rewrites its outputs, so a resumed evaluation simply runs it again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from anomseg import viz
from anomseg.config import ConfigError
from anomseg.files import make_dirs, write_with
from anomseg.instances import InstanceAP, InstanceError, Instances, build_refiner, check_settings, image_instances
from anomseg.instances.oodis import MIN_REGION, coco_results, oodis_stem, write_coco, write_submission
from anomseg.metrics.components import TRACKS, ComponentStats, image_components
from anomseg.metrics.evaluator import INSTANCE_PROTOCOL

PROTOCOL = INSTANCE_PROTOCOL
ARITHMETIC = ("OoDIS (kumuji/anomaly-benchmark-suite scoring program): instances = connected components of score >= "
              "threshold (void removed, min_size px, confidence rule), optionally refined by SAM; AP over IoU 0.5:0.95 "
              "(strictly above), AP50 at 0.5, GT instances >= 10 px, pooled over images, the evaluator's PR integration")


def enabled(cfg: dict) -> bool:
    p = cfg["protocol"]
    return PROTOCOL in ([p] if isinstance(p, str) else list(p))


def settings(cfg: dict) -> dict:
    """The config's instance settings, checked (a ConfigError of one line)."""
    try:
        return check_settings(cfg.get("instances"))
    except InstanceError as exc:
        raise ConfigError(str(exc)) from None


def check_dataset(dataset, cfg: dict) -> None:
    if not getattr(dataset, "has_instances", False):
        raise ConfigError(f"protocol instances: {cfg['data']['name']}/{dataset.split} has no anomaly instance ids "
                          f"(only anomseg's synthetic set and the OoDIS sets carry them); remove 'instances' from protocol")


def maps_path(out: Path, index: int) -> Path:
    return out / "state" / "instances" / "maps" / f"{index}.npz"


def keep_maps(out: Path, index: int, maps: dict) -> None:
    """Keep every method's float32 (H, W) score map of image ``index`` for the pass (one file)."""
    path = maps_path(out, index)
    make_dirs(path.parent)
    arrays = {f"m{k}": np.asarray(v, np.float32) for k, v in enumerate(maps.values())}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, names=np.array(list(maps)), **arrays)
    write_with(path, write)


def load_maps(out: Path, index: int) -> dict:
    path = maps_path(out, index)
    if not path.is_file():
        raise ConfigError(f"{path}: the score maps of image {index} kept for the instance pass are missing; run the "
                          f"evaluation again with resume: false")
    with np.load(path) as z:
        return {str(n): z[f"m{k}"] for k, n in enumerate(z["names"])}


def overlay_path(out: Path, index: int, name: str) -> Path:
    return out / "state" / "instances" / "overlay" / f"{index}_{viz.safe_name(name)}.npz"


def save_overlay_instances(path: Path, inst: Instances) -> None:
    make_dirs(path.parent)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, masks=np.packbits(inst.masks, axis=-1), width=inst.size[1], scores=inst.scores)
    write_with(path, write)


def load_overlay_instances(path: Path) -> Instances | None:
    if not path.is_file():
        return None
    with np.load(path) as z:
        masks = np.unpackbits(z["masks"], axis=-1, count=int(z["width"])).astype(bool)
        return Instances(masks, z["scores"])


def run_pass(cfg: dict, out: Path, dataset, names: list[str], hists: dict, device, track: str,
             overlay_ids=(), progress: bool = True) -> dict:
    """The instance metrics of every method: {method: {AP, AP50, ..., components}} (see the module docstring)."""
    spec = settings(cfg)
    refiner = build_refiner(spec, device)
    thresholds = {n: float(viz.resolve_threshold(spec["threshold"], hists[n], None)[0]) for n in names}
    aps = {n: InstanceAP(MIN_REGION) for n in names}
    comps = {n: ComponentStats() for n in names}
    sizes = TRACKS[track]
    coco = {n: [] for n in names}
    inst_root = out / "instances"
    shutil.rmtree(inst_root, ignore_errors=True)  # only this run's exports
    laf = cfg["data"]["name"] in ("lost_and_found", "fishyscapes_laf", "oodis_lost_and_found")
    for i in tqdm(range(len(dataset)), desc="instances", disable=not progress):
        s = dataset[i]
        anomaly = s["anomaly"]
        void = anomaly == 255
        image = None
        if refiner is not None:
            image = np.asarray(s["image"])
            if image.shape[:2] != anomaly.shape:  # labels at a reduced scale: SAM sees the image at that size
                image = cv2.resize(image, (anomaly.shape[1], anomaly.shape[0]), interpolation=cv2.INTER_AREA)
        maps = load_maps(out, i)
        for n in names:
            score = maps[n]
            inst = image_instances(score, thresholds[n], spec, void=void, image=image, refiner=refiner)
            aps[n].add(inst, s["instances"], void, s.get("instance_other_labels", ()))
            comps[n].add(*image_components(inst.union().astype(np.float32), anomaly, 0.5, sizes["min_pred_size"],
                                           sizes["min_gt_size"]))
            name = dataset.records[i].name.replace("/", "_")
            if "oodis" in spec["export"]:
                write_submission(inst_root / viz.safe_name(n) / "oodis", oodis_stem(name, laf), inst)
            if "coco" in spec["export"]:
                coco[n] += coco_results(name, inst)
            if i in overlay_ids:
                save_overlay_instances(overlay_path(out, i, n), inst)
    results = {}
    for n in names:
        r = aps[n].compute()
        r["threshold"] = thresholds[n]
        r["components"] = comps[n].compute()
        if "coco" in spec["export"]:
            r["coco"] = str(write_coco(inst_root / viz.safe_name(n) / "coco.json", coco[n]))
        if "oodis" in spec["export"]:
            r["oodis"] = str(inst_root / viz.safe_name(n) / "oodis")
        results[n] = r
    return {"settings": spec, "arithmetic": ARITHMETIC, "methods": results}
