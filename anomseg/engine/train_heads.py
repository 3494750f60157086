"""The head pipeline behind ``tools/train_head.py``: backbone -> banks -> heads -> selection."""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import Literal

import torch

from anomseg.bank import extract_bank
from anomseg.config import (ANY, BACKBONE_SCHEMA, OPTIONAL_INT, OPTIONAL_STR, ConfigError, merge, save_config,
                            schema_from_defaults)
from anomseg.data import build_dataset
from anomseg.data.paste import PastedDataset
from anomseg.distributed import init_distributed
from anomseg.files import output_lock, write_json_atomic
from anomseg.heads import check_head_options
from anomseg.heads.train import train_head
from anomseg.options import NonNegativeInt, Positive, PositiveInt, check_options
from anomseg.models.checkpoints import backbone_from_config

DEFAULTS = {
    "seed": 0,
    "out": "runs/heads",
    "device": None,
    "workers": "auto",  # image-decoding processes ahead of the backbone during extraction (0: none)
    "data": {"name": "streethazards", "root": "data/synthetic", "options": {}, "train_split": "train",
             "val_split": "val", "paste": None},
    "backbone": {"name": None, "options": {}, "checkpoint": None},
    "bank": {"dir": None, "closed_per_image": 5000, "open_per_image": None, "chunk_images": 16, "val_closed_per_image": None,
             "amp": "none"},
    "heads": [{"name": "opengan_fea", "options": {"lambda_g": 0.2}}, {"name": "cls_fea", "options": {}}],
    "train": {"steps": 2000, "eval_every": 100, "n_closed": 5000, "n_open": 2500, "n_fake": 2500,
              "lr_d": 1e-4 / 1.5, "lr_g": 1e-4, "max_samples": 100000, "closed_source": "bank"},
}

SCHEMA = schema_from_defaults(DEFAULTS, {
    "device": OPTIONAL_STR, "workers": (int, str), "data.options": ANY, "data.paste": ANY, "backbone": BACKBONE_SCHEMA, "bank.dir": OPTIONAL_STR,
    "bank.open_per_image": OPTIONAL_INT, "bank.val_closed_per_image": OPTIONAL_INT,
    "heads": [{"name": str, "options": ANY, "train": ANY}],
})


def bank_section(dir: str | None = None, closed_per_image: PositiveInt | None = 5000,
                 open_per_image: PositiveInt | None = None, chunk_images: PositiveInt = 16,
                 val_closed_per_image: PositiveInt | None = None, amp: Literal["none", "bf16", "fp16"] = "none") -> None:
    """The ``bank`` section, declared (:mod:`anomseg.options`)."""


def train_section(steps: PositiveInt = 2000, eval_every: PositiveInt = 100, n_closed: PositiveInt = 5000,
                  n_open: NonNegativeInt = 2500, n_fake: NonNegativeInt = 2500, lr_d: Positive = 1e-4 / 1.5,
                  lr_g: Positive = 1e-4, max_samples: PositiveInt = 100000,
                  closed_source: Literal["bank", "image"] = "bank") -> None:
    """The ``train`` section, declared (:mod:`anomseg.options`)."""


def check_settings(cfg: dict) -> None:
    """Every check that needs only the config: heads and their options, the bank and train sections."""
    check_options("bank", bank_section, cfg["bank"])
    check_options("train", train_section, cfg["train"])
    names = [h["name"] for h in cfg["heads"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"heads: names must be unique, got {names}")
    for h in cfg["heads"]:
        check_head_options(h["name"], h.get("options", {}))
        if h.get("train") is not None:  # a head's own training settings over the shared section
            if not isinstance(h["train"], dict):
                raise ConfigError(f"heads.{h['name']}.train={h['train']!r}: give a mapping of train settings")
            check_options(f"heads.{h['name']}.train", train_section, {**cfg["train"], **h["train"]})


def build_banks(cfg: dict, progress: bool = True):
    """Extract (or reuse) the training and validation banks; returns (train_bank, val_bank, model, name).

    Keys ``cfg`` leaves out take their :data:`DEFAULTS`."""
    cfg = merge(copy.deepcopy(DEFAULTS), copy.deepcopy(cfg))
    info = init_distributed(cfg.get("device"))
    d = cfg["data"]
    train_set = build_dataset(d["name"], d["root"], d["train_split"], **d.get("options", {}))
    if d.get("paste"):
        p = d["paste"]
        train_set = PastedDataset(train_set, p["pool"], count=p.get("count", (1, 3)),
                                  height_range=p.get("height_range", (0.08, 0.3)), seed=cfg["seed"])
    val_set = build_dataset(d["name"], d["root"], d["val_split"], **d.get("options", {}))
    torch.manual_seed(cfg["seed"])  # a backbone without a checkpoint is still reproducible
    model, name = backbone_from_config(cfg["backbone"], train_set.num_classes)
    model.to(info.device)
    bank_dir = Path(cfg["bank"]["dir"] or Path(cfg["out"]) / "bank")
    bc = cfg["bank"]
    common = dict(backbone=name, open_per_image=bc["open_per_image"], chunk_images=bc["chunk_images"],
                  seed=cfg["seed"], dist=info, progress=progress, workers=cfg["workers"], amp=bc["amp"])
    train_bank = extract_bank(model, train_set, bank_dir / "train", closed_per_image=bc["closed_per_image"],
                              config={"data": d, "backbone": cfg["backbone"]}, **common)
    val_bank = extract_bank(model, val_set, bank_dir / "val", closed_per_image=bc["val_closed_per_image"],
                            config={"data": d, "backbone": cfg["backbone"]}, **common)
    return train_bank, val_bank, model, name, train_set


def run_head_training(cfg: dict, progress: bool = True) -> dict:
    """Build or reuse the banks, then train / fit and select every head of ``cfg["heads"]``.

    Writes ``<out>/bank/{train,val}``, ``<out>/heads/<name>/{best.pth,log.jsonl,...}``
    ``<out>/summary.json`` and the resolved ``<out>/config.yaml``. Under torchrun the banks are extracted by all ranks (sharded) and the
    heads are trained once, by rank 0; the other ranks return None once the banks are complete.
    """
    cfg = merge(copy.deepcopy(DEFAULTS), copy.deepcopy(cfg))
    check_settings(cfg)
    out = Path(cfg["out"])
    dist_info = init_distributed(cfg.get("device"))
    with output_lock(out) if dist_info.is_main else contextlib.nullcontext():
        train_bank, val_bank, model, name, train_set = build_banks(cfg, progress)
        if not dist_info.is_main:
            return None
        summary = _train_heads(cfg, out, train_bank, val_bank, model, name, train_set, progress, dist_info.device)
        save_config(cfg, out / "config.yaml")  # once every check passed: it describes what is there
        return summary


def _train_heads(cfg, out, train_bank, val_bank, model, name, train_set, progress, device) -> dict:
    tc = cfg["train"]
    sampler_kwargs = {}
    if tc.get("closed_source", "bank") == "image":
        sampler_kwargs = {"closed_source": "image", "model": model, "dataset": train_set}
    summary, seconds = {}, {}
    for h in cfg["heads"]:
        head_out = out / "heads" / h["name"]
        info = {"backbone": name, "bank": str(train_bank.root), "weights": train_bank.meta["weights"],
                "stride": train_bank.meta["stride"]}
        started = time.perf_counter()
        summary[h["name"]] = train_head(h["name"], dict(h.get("options", {})), train_bank, val_bank, out=head_out,
                                        train={**tc, **(h.get("train") or {})}, seed=cfg["seed"], progress=progress, info=info,
                                        sampler_kwargs=sampler_kwargs, device=device,
                                        classifier=model.classifier() if model is not None else None)
        seconds[h["name"]] = round(time.perf_counter() - started, 1)  # this run's share (resumed: less)
        if progress:
            print(f"{h['name']}: best validation AUROC {summary[h['name']]['best_auroc']:.4f}")
    write_json_atomic(out / "summary.json", summary)
    write_json_atomic(out / "timing.json", {"stage": "heads", "seconds": seconds})
    return summary
