"""Segmentation training: SGD + poly LR, augmentation, deep supervision, AMP, DDP, resume, mIoU.

The same function runs in one process or under ``torchrun --nproc_per_node=N``. Batches are
defined globally: step t of epoch e takes the global images ``perm_e[t*B:(t+1)*B]`` and rank r
processes every ``world``-th of them; the loss is the cross-entropy summed over a rank's valid
pixels divided by the valid pixels of the whole global batch (times ``world``, which DDP's gradient
averaging divides out). So N processes compute the gradient of the single-process loss on the
same global batch. Batch norm statistics are per process on CPU (gloo has no SyncBatchNorm); on GPU
``sync_bn`` converts them. ``freeze_bn`` keeps BN in eval mode (fine-tuning, and exact equality).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from anomseg.config import ANY, ConfigError, OPTIONAL_INT, OPTIONAL_STR, save_config, schema_from_defaults
from anomseg.data import build_dataset
from anomseg.metrics.segmentation import confusion_matrix, miou
from anomseg.distributed import DistInfo, all_reduce_sum, barrier, gather_objects, init_distributed
from anomseg.files import check_fingerprint, output_lock, write_text_atomic
from anomseg.models import ModelError, build_backbone, load_checkpoint, load_pretrained, save_checkpoint
from anomseg.models.checkpoints import init_encoder
from anomseg.models.base import resize_logits
from anomseg.data.paste import Paster
from anomseg.train.augment import SegAugment, sample_seed
from anomseg.train.losses import LOSSES, pixel_loss
from anomseg.train.mask_losses import MASK_LOSSES, check_mask_loss_options, mask_loss
from anomseg.options import NonEmpty, NonNegative, NonNegativeInt, Positive, PositiveInt, Range, check_options

log = logging.getLogger(__name__)

DEFAULTS = {
    "seed": 0,
    "out": "runs/seg",
    "device": None,
    "data": {"name": "streethazards", "root": "data/synthetic", "options": {}, "train_split": "train",
             "val_split": "val", "crop": [256, 256], "scale": [0.5, 2.0], "flip": True, "workers": 0,
             "paste": None},
    "model": {"backbone": "smp:Unet:resnet18", "options": {}, "init": None, "pretrained": None, "init_encoder": None},
    "train": {"epochs": 10, "batch_size": 8, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "poly_power": 0.9,
              "aux_weight": 0.4, "amp": True, "sync_bn": True, "freeze_bn": False, "max_steps_per_epoch": None,
              "val_batch_size": 4, "val_every": 1, "resume": True, "stop_after_epochs": None,
              "loss": {"name": "ce", "options": {}}, "finetune": "all", "optimizer": "sgd", "clip_grad_norm": None},
}

SCHEMA = schema_from_defaults(DEFAULTS, {
    "device": OPTIONAL_STR, "data.options": ANY, "data.paste": ANY, "data.val_split": OPTIONAL_STR,
    "model.options": ANY, "model.init": OPTIONAL_STR, "model.init_encoder": OPTIONAL_STR, "model.pretrained": OPTIONAL_STR,
    "train.max_steps_per_epoch": OPTIONAL_INT, "train.stop_after_epochs": OPTIONAL_INT, "train.clip_grad_norm": ANY,
    "train.loss": {"name": str, "options": ANY},
})


PASTE_STREAM = 1  # the pasting's generator: [sample seed, 1], apart from the augmentation's


class _TrainSet(Dataset):
    """Dataset items addressed by (index, seed): the seed (one per seed, epoch and image) fixes the pasted outliers
    (fresh every epoch, pasted before the augmentation) and the augmentation."""

    def __init__(self, dataset, augment: SegAugment, paster: Paster | None = None):
        self.dataset, self.augment, self.paster = dataset, augment, paster

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        sample = self.dataset[index]
        if self.paster is not None:
            sample = self.paster(sample, np.random.default_rng([seed, PASTE_STREAM]))
        s = self.augment(sample, seed)
        return (torch.from_numpy(np.ascontiguousarray(s["image"])), torch.from_numpy(np.ascontiguousarray(s["semantic"])),
                torch.from_numpy(np.ascontiguousarray(s["anomaly"])))


def global_batches(n: int, batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's global batches of image indices (a seeded permutation, last partial batch dropped)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return [perm[i * batch:(i + 1) * batch].tolist() for i in range(n // batch)]


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    return base * (1 - step / max(total, 1)) ** power


#: what training updates: every weight, the classifier only (RbA's fine-tuning), or all but the encoder
FINETUNE = ("all", "head", "decoder")


def _frozen_part(model, finetune: str, name: str):
    """The module ``finetune`` singles out: the classifier (``head``: only it trains), the encoder (``decoder``:
    all but it trains), or None (``all``)."""
    if finetune == "head":
        return model.classifier()
    if finetune == "decoder":
        encoder = getattr(model, "encoder", None)
        if isinstance(encoder, torch.nn.Module):  # a dinov2 backbone's ViT
            return encoder
        if not callable(encoder):
            raise ConfigError(f"train.finetune=decoder: backbone {name!r} names no encoder to freeze; use it with "
                              f"mask2former or dinov2, or finetune: all")
        return encoder()
    return None


def _freeze_bn(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def unused_parameters(model: torch.nn.Module, device: torch.device) -> list[str]:
    """Names of parameters that get no gradient in a training-mode forward pass (e.g. encoder stages
    beyond an smp ``encoder_depth``); DDP must be told about them. Buffers are restored afterwards."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    was = model.training
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = model(torch.zeros(2, 3, 64, 64, device=device))
    total = out.logits.float().sum() + (out.aux.float().sum() if out.aux is not None else 0)
    grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    model.train(was)
    return [n for (n, _), g in zip(named, grads) if g is None]


@torch.no_grad()
def evaluate_miou(model, dataset, dist_info: DistInfo, batch_size: int = 4, progress: bool = True) -> tuple[float, list[float]]:
    """mIoU of ``model`` on a dataset (images sharded over ranks, confusion matrices summed)."""
    was = model.training
    model.eval()
    k = dataset.num_classes
    conf = torch.zeros(k, k, dtype=torch.int64, device=dist_info.device)
    idx = list(range(dist_info.rank, len(dataset), dist_info.world))
    for start in tqdm(range(0, len(idx), batch_size), desc="val mIoU", disable=not (progress and dist_info.is_main), leave=False):
        samples = [dataset[i] for i in idx[start:start + batch_size]]
        images = torch.from_numpy(np.stack([s["image"] for s in samples])).to(dist_info.device)
        target = torch.from_numpy(np.stack([s["semantic"] for s in samples])).to(dist_info.device)
        logits = resize_logits(model(images).logits.float(), tuple(target.shape[-2:]))
        conf += confusion_matrix(logits[:, :k].max(1).indices, target, k)  # an extra background output is no class
    model.train(was)
    all_reduce_sum(conf)
    return miou(conf.cpu())


# what a resumed run may change without changing the result: where it writes, how it runs
_RUN_CONTROL = {"out", "device", "data.workers", "train.resume", "train.stop_after_epochs", "train.val_batch_size"}


def resume_fingerprint(cfg: dict) -> dict:
    """The config sections a checkpoint's training depends on (run-control keys left out)."""
    fp = {}
    for section in ("seed", "data", "model", "train"):
        value = cfg.get(section)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if f"{section}.{k}" not in _RUN_CONTROL}
        fp[section] = value
    return fp


def train_section(epochs: PositiveInt = 10, batch_size: Annotated[int, Range(1)] = 8, lr: NonNegative = 0.01,
                  momentum: Annotated[float, Range(0, 1, hi_open=True)] = 0.9, weight_decay: NonNegative = 5e-4,
                  poly_power: NonNegative = 0.9, aux_weight: NonNegative = 0.4, amp: bool = True, sync_bn: bool = True,
                  freeze_bn: bool = False, max_steps_per_epoch: PositiveInt | None = None, val_batch_size: PositiveInt = 4,
                  val_every: PositiveInt = 1,
                  resume: bool = True, stop_after_epochs: PositiveInt | None = None, loss: dict | None = None,
                  finetune: str = "all", optimizer: Literal["sgd", "adamw"] = "sgd",
                  clip_grad_norm: Positive | None = None) -> None:
    """The ``train`` section, declared (:mod:`anomseg.options`); ``loss`` and ``finetune`` are checked by name
    where they are used. ``optimizer``: SGD with ``momentum``, or AdamW (the Mask2Former recipe: lr 1e-4,
    weight decay 0.05, ``clip_grad_norm`` 0.01 over the whole model). ``val_every``: validate every this many
    epochs and after the last (only validated epochs compete for ``best.pth``). ``finetune``: ``all``, ``head``
    (the classifier only: RbA's fine-tuning) or ``decoder`` (all but the encoder, kept frozen with its BN
    statistics)."""


def data_section(name: str = "streethazards", root: str = "data/synthetic", options: dict | None = None,
                 train_split: str = "train", val_split: str | None = "val",
                 crop: Annotated[list[PositiveInt], NonEmpty()] = (256, 256),
                 scale: Annotated[list[Positive], NonEmpty()] = (0.5, 2.0), flip: bool = True,
                 workers: NonNegativeInt = 0, paste: dict | None = None) -> None:
    """The ``data`` section, declared (:mod:`anomseg.options`)."""


def _pixel_batch_loss(net, images, target, outlier, loss_name: str, loss_opts: dict, aux_weight: float, info) -> torch.Tensor:
    """A pixel loss summed over the rank's counted pixels, divided by the global batch's (see the module docstring)."""
    out = net(images)
    size = tuple(target.shape[-2:])
    loss_map, counted = pixel_loss(loss_name, resize_logits(out.logits.float(), size), target, outlier,
                                   features=out.features, **loss_opts)
    valid = all_reduce_sum(counted.sum().double().reshape(1)).item()  # on the device: NCCL-ready
    loss = (loss_map * counted).sum()
    if out.aux is not None and aux_weight:
        loss = loss + aux_weight * F.cross_entropy(resize_logits(out.aux.float(), size), target, ignore_index=255,
                                                   reduction="sum")
    return loss * info.world / max(valid, 1.0)


def rng_state(device) -> dict:
    """Every random stream a training step may draw from, as tensors and lists (``torch.load(weights_only=True)``
    reads them back): torch's CPU generator (and the device's on CUDA), NumPy's and Python's global ones. Data
    order, crops and pasting are seeded per (seed, epoch, image) and need no state."""
    import random

    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    """Restore :func:`rng_state`'s streams."""
    import random

    torch.set_rng_state(state["torch"])
    name, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_loss_fits(loss_name: str, model, backbone: str) -> None:
    """Mask losses train mask-classification backbones and only them; ``uno`` needs the negative class."""
    masked = getattr(model, "mask_classification", False)
    if masked and loss_name not in MASK_LOSSES:
        raise ConfigError(f"train.loss.name={loss_name!r} is a pixel loss on logits; backbone {backbone!r} outputs a "
                          f"semantic aggregate of mask queries: use one of {', '.join(MASK_LOSSES)}")
    if not masked and loss_name in MASK_LOSSES:
        raise ConfigError(f"train.loss.name={loss_name!r} trains mask queries; backbone {backbone!r} has none "
                          f"(use mask2former, or a pixel loss: {', '.join(LOSSES)})")
    if masked and (loss_name == "uno") != bool(getattr(model, "negative_class", False)):
        raise ConfigError(f"train.loss.name={loss_name!r} with model option negative_class="
                          f"{bool(getattr(model, 'negative_class', False))}: uno trains the negative class and needs "
                          f"negative_class: true; the other losses need negative_class: false")


def train_segmentation(cfg: dict, progress: bool = True) -> dict:
    """Train (or resume) a segmenter as ``cfg`` says; returns the last epoch's log entry.

    Writes to ``cfg["out"]``: ``config.yaml`` (resolved), ``checkpoints/last.pth`` and
    ``checkpoints/best.pth`` (anomseg format, with optimiser state), ``log.jsonl``.
    """
    check_options("train", train_section, cfg["train"])  # before any folder is made
    check_options("data", data_section, cfg["data"])
    for key, n in (("crop", 2), ("scale", 2)):
        if len(cfg["data"][key]) != n:
            raise ConfigError(f"data.{key}={cfg['data'][key]!r}: give {n} values")
    loss_name = (cfg["train"].get("loss") or {}).get("name")
    if loss_name in ("rba", "uno") and not cfg["data"].get("paste"):
        what = "its outlier term" if loss_name == "rba" else "the negative class"
        raise ConfigError(f"train.loss.name={loss_name!r} learns from outlier pixels ({what} acts only on them), but "
                          f"data.paste is not set: add data.paste: {{pool: <outlier folder>}} (the synthetic set's: "
                          f"<root>/outliers)")
    info = init_distributed(cfg.get("device"))
    out = Path(cfg["out"])
    with output_lock(out) if info.is_main else contextlib.nullcontext():  # one run per output folder
        return _train(cfg, info, out, progress)


def _train(cfg: dict, info: DistInfo, out: Path, progress: bool) -> dict:
    tc, dc, mc = cfg["train"], cfg["data"], cfg["model"]
    torch.manual_seed(cfg["seed"])
    train_set = build_dataset(dc["name"], dc["root"], dc["train_split"], **dc.get("options", {}))
    val_set = build_dataset(dc["name"], dc["root"], dc["val_split"], **dc.get("options", {})) if dc.get("val_split") else None
    loss_name, loss_opts = tc["loss"]["name"], tc["loss"].get("options", {})
    if loss_name not in LOSSES and loss_name not in MASK_LOSSES:
        raise ConfigError(f"train.loss.name={loss_name!r} is unknown; valid: {', '.join(LOSSES)} (pixel backbones), "
                          f"{', '.join(MASK_LOSSES)} (mask2former)")
    paster = None
    if dc.get("paste"):  # outlier pixels from pasted objects (outlier exposure), drawn anew every epoch
        p = dc["paste"]
        paster = Paster(pool_root=p["pool"], count=p.get("count", (1, 3)), height_range=p.get("height_range", (0.08, 0.3)))
    k = train_set.num_classes
    model = build_backbone(mc["backbone"], k + (loss_name == "background"), **mc.get("options", {}))
    if mc.get("pretrained"):  # ImageNet classification weights for the backbone part (the published recipes)
        load_pretrained(model, mc["backbone"], mc["pretrained"])
    if mc.get("init"):
        load_checkpoint(model, mc["init"])
    if mc.get("init_encoder"):  # the encoder of a trained segmenter (a Mask2Former on the demo's FPN encoder)
        init_encoder(model, mc["init_encoder"])
    _check_loss_fits(loss_name, model, mc["backbone"])
    if loss_name in MASK_LOSSES:
        loss_opts = check_mask_loss_options(loss_name, loss_opts)
    model.to(info.device)
    if tc["finetune"] not in FINETUNE:
        raise ConfigError(f"train.finetune={tc['finetune']!r}: choose one of {', '.join(FINETUNE)}")
    frozen = _frozen_part(model, tc["finetune"], mc["backbone"])
    if frozen is not None:
        kept = {id(p) for p in frozen.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) not in kept if tc["finetune"] == "decoder" else id(p) in kept)
    if info.enabled and info.device.type == "cuda" and tc["sync_bn"]:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if tc["batch_size"] < 1:
        raise ConfigError(f"train.batch_size={tc['batch_size']} must be at least 1")
    if tc["batch_size"] % info.world:
        raise ConfigError(f"train.batch_size={tc['batch_size']} must be divisible by the {info.world} processes")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if tc.get("optimizer", "sgd") == "adamw":
        opt = torch.optim.AdamW(trainable, lr=tc["lr"], weight_decay=tc["weight_decay"])
    else:
        opt = torch.optim.SGD(trainable, lr=tc["lr"], momentum=tc["momentum"], weight_decay=tc["weight_decay"])
    use_amp = bool(tc["amp"]) and info.device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    steps_per_epoch = len(train_set) // tc["batch_size"]
    if tc.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, tc["max_steps_per_epoch"])
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(train_set)} training images are fewer than train.batch_size={tc['batch_size']}; "
                          f"lower train.batch_size")
    total = steps_per_epoch * tc["epochs"]
    # best: validation mIoU, or minus the training loss without a validation split (any finite value
    # beats the start, so best.pth is always written)
    start_epoch, best, history = 0, float("-inf"), []
    last_path = out / "checkpoints" / "last.pth"
    if tc["resume"] and last_path.is_file():
        try:
            state = torch.load(last_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"{last_path}: cannot be read ({type(exc).__name__}); delete it or set train.resume=false "
                             f"to train from scratch") from None
        check_fingerprint(last_path, resume_fingerprint(state.get("config", {})), resume_fingerprint(cfg),
                          "set train.resume=false (or choose a new out) to train from scratch")
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        if "rng" in state:  # the random streams as the epoch ended: the set loss's points, drop path, workers
            streams = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
            if len(streams) != info.world:  # resumable still, but no longer the same random draws
                log.warning("%s: saved by %d processes, resumed by %d: each rank resumes rank 0's random streams, so "
                            "the run is not bitwise the uninterrupted one", last_path, len(streams), info.world)
            set_rng_state(streams[info.rank] if len(streams) == info.world else streams[0], info.device)
        start_epoch, best = state["epoch"] + 1, state.get("best_score", float("-inf"))
        history = json.loads(state.get("history", "[]"))
    net = model
    if info.enabled:
        unused = unused_parameters(model, info.device)
        net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=bool(unused))
    if info.is_main:
        save_config(cfg, out / "config.yaml")
    augment = SegAugment(tuple(dc["crop"]), tuple(dc["scale"]), dc["flip"])
    data = _TrainSet(train_set, augment, paster)
    entry = history[-1] if history else {}
    end_epoch = tc["epochs"]
    if tc.get("stop_after_epochs"):  # a time-sliced job: run this many epochs now, resume later
        end_epoch = min(end_epoch, start_epoch + tc["stop_after_epochs"])
    for epoch in range(start_epoch, end_epoch):
        batches = global_batches(len(train_set), tc["batch_size"], cfg["seed"], epoch)[:steps_per_epoch]
        local = [[(i, sample_seed(cfg["seed"], epoch, i)) for i in b[info.rank::info.world]] for b in batches]
        loader = DataLoader(data, batch_sampler=local, num_workers=dc["workers"])
        net.train()
        if tc["freeze_bn"]:
            _freeze_bn(net)
        if tc["finetune"] == "decoder":  # a frozen encoder keeps its BN statistics too
            frozen.eval()
        t0, loss_sum = time.time(), 0.0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tc['epochs']}", disable=not (progress and info.is_main))
        for step, (images, target, anomaly) in enumerate(bar):
            it = epoch * steps_per_epoch + step
            for g in opt.param_groups:
                g["lr"] = poly_lr(tc["lr"], it, total, tc["poly_power"])
            images, target, anomaly = images.to(info.device), target.to(info.device), anomaly.to(info.device)
            outlier = anomaly == 1
            with torch.autocast(info.device.type, dtype=amp_dtype, enabled=use_amp):
                if loss_name in MASK_LOSSES:  # a mean over the rank's batch: DDP averages the ranks' means
                    loss = mask_loss(loss_name, net, images, target, outlier, known=k, **loss_opts)
                else:
                    loss = _pixel_batch_loss(net, images, target, outlier, loss_name, loss_opts, tc["aux_weight"], info)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc.get("clip_grad_norm"):
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(trainable, tc["clip_grad_norm"])
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.item() / info.world
            bar.set_postfix(loss=f"{loss.item() / info.world:.3f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        train_loss = float(all_reduce_sum(torch.tensor([loss_sum], dtype=torch.float64, device=info.device)).item()) / steps_per_epoch
        entry = {"epoch": epoch + 1, "train_loss": train_loss, "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0}
        validated = val_set is not None and ((epoch + 1) % tc["val_every"] == 0 or epoch + 1 == tc["epochs"])
        if validated:  # every val_every epochs and after the last: only validated epochs can be best
            entry["val_miou"], _ = evaluate_miou(model, val_set, info, tc["val_batch_size"], progress)
        history.append(entry)
        streams = gather_objects(rng_state(info.device))  # every rank's: each resumes its own
        if info.is_main:
            score = entry.get("val_miou", -entry["train_loss"] if val_set is None else float("nan"))
            is_best = not math.isnan(score) and score > best
            best = max(best, score) if is_best else best
            selected_by = "val_miou" if val_set is not None else "-train_loss"
            extra = {"optimizer": opt.state_dict(), "epoch": epoch, "best_score": best, "selected_by": selected_by,
                     "history": json.dumps(history), "rng": streams}
            if is_best:
                save_checkpoint(out / "checkpoints" / "best.pth", model, cfg, epoch=epoch, best_score=best,
                                selected_by=selected_by)
            save_checkpoint(last_path, model, cfg, **extra)
            # the log is rewritten from the checkpointed history: a kill never leaves it short or doubled
            write_text_atomic(out / "log.jsonl", "".join(json.dumps(e) + "\n" for e in history))
            if progress:
                print(f"epoch {epoch + 1}: loss {train_loss:.4f}" + (f", val mIoU {entry['val_miou']:.4f}" if "val_miou" in entry else ""))
        barrier()
    return entry
