"""Extracting a backbone's per-pixel features over a dataset split into a bank folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from anomseg.background import Background
from anomseg.bank.store import FIELDS, KINDS, META, OPEN, BankError, FeatureBank, part_name, write_part
from anomseg.data.base import majority_labels, resize_nearest
from anomseg.data.loader import sample_loader, spare_cores
from anomseg.distributed import DistInfo, barrier
from anomseg.files import make_dirs, write_json_atomic, write_timing
from anomseg.models.identity import weights_hash
from anomseg.models.inference import AMP, autocast

BANK_VERSION = 2  # 2: rows carry the segmenter's logits; ViT patches their majority label
_BEFORE = {"amp": "none", "labels": "nearest"}  # attributes added later, as banks made before them had them


def _select(rng: np.random.Generator, idx: np.ndarray, cap: int | None) -> np.ndarray:
    if cap is None or len(idx) <= cap:
        return idx
    return np.sort(rng.choice(idx, size=cap, replace=False))


@torch.no_grad()
def image_rows(model, sample: dict, image_index: int, *, seed: int, closed_per_image: int | None,
               open_per_image: int | None, device=None, amp: str = "none") -> dict[str, dict[str, np.ndarray]]:
    """The bank rows of one image: features at the backbone's resolution, with the segmenter's logits there
    (bilinearly resized to the feature grid when they are at another resolution) and the labels of the grid:
    nearest-downsampled, or, for a backbone with a ``label_agreement`` (a ViT's patches), the majority label of
    each patch (:func:`~anomseg.data.base.majority_labels`; a patch without agreement is void).

    ``sample["image"]`` is the dataset's uint8 (H, W, 3) or a (1, H, W, 3) tensor; the backbone runs on
    ``device`` (default: the model's) under ``amp``; only the selected rows are copied to the host.
    """
    return batch_rows(model, [sample], [image_index], seed=seed, closed_per_image=closed_per_image,
                      open_per_image=open_per_image, device=device, amp=amp)[0]


@torch.no_grad()
def batch_rows(model, samples: list[dict], image_indices: list[int], *, seed: int, closed_per_image: int | None,
               open_per_image: int | None, device=None, amp: str = "none") -> list[dict[str, dict[str, np.ndarray]]]:
    """:func:`image_rows` of several images, the backbone run once on each run of equally sized ones (the rows are
    the same as one image at a time, up to the backbone's own batched arithmetic)."""
    device = device if device is not None else next(model.parameters()).device
    images = []
    for s in samples:
        image = s["image"]
        images.append(image if torch.is_tensor(image) else torch.from_numpy(np.array(image))[None])  # writable copy
    out_rows, start = [], 0
    while start < len(images):
        stop = start + 1
        while stop < len(images) and images[stop].shape == images[start].shape:
            stop += 1
        with autocast(device, amp):
            out = model(torch.cat(images[start:stop]).to(device, non_blocking=True))
        grid = out.grid_logits()
        for j in range(stop - start):
            out_rows.append(_rows(model, samples[start + j], image_indices[start + j], out.features[j], grid[j],
                                  seed, closed_per_image, open_per_image))
        start = stop
    return out_rows


def _rows(model, sample, image_index, feat, logits, seed, closed_per_image, open_per_image):
    d, h, w = feat.shape  # on the device; logits (K, h, w) on the same grid
    logits = logits.reshape(logits.shape[0], -1)
    sem, anom = grid_labels(model, sample["semantic"], sample["anomaly"], (h, w))
    rng = np.random.default_rng([seed, image_index])
    closed = _select(rng, np.flatnonzero(((anom == 0) & (sem != 255)).ravel()), closed_per_image)
    opened = _select(rng, np.flatnonzero((anom == 1).ravel()), open_per_image)
    flat = feat.reshape(d, -1)
    chosen = torch.from_numpy(np.concatenate([closed, opened])).to(flat.device)
    # gathered on the device, rounded to float16 there (the stored precision), then copied
    rows_host = flat.index_select(1, chosen).T.float().half().contiguous().cpu().numpy()
    logits_host = logits.index_select(1, chosen).T.half().contiguous().cpu().numpy()
    bad = ~(np.isfinite(rows_host).all(1) & np.isfinite(logits_host).all(1))
    if bad.any():  # checked when written: a bank never holds a row no head can use
        raise BankError(f"image {image_index} ({sample.get('name', '?')}): the backbone gave {int(bad.sum())} NaN or "
                        f"infinite feature / logit rows (of {len(bad)}; float16 holds up to 65504); nothing was written "
                        f"for its part: check the checkpoint's weights, or extract without amp")
    rows = {}
    for kind, idx, sl in (("closed", closed, slice(0, len(closed))), ("open", opened, slice(len(closed), None))):
        ys, xs = np.divmod(idx, w)
        rows[kind] = {
            "features": rows_host[sl],
            "logits": logits_host[sl],
            "labels": (sem.ravel()[idx] if kind == "closed" else np.full(len(idx), OPEN)).astype(np.int16),
            "image": np.full(len(idx), image_index, np.int32),
            "yx": np.stack([ys, xs], 1).astype(np.int16),
        }
    return rows


def grid_labels(model, semantic: np.ndarray, anomaly: np.ndarray, size: tuple[int, int]):
    """(semantic, anomaly) (H, W) maps on the backbone's feature grid ``size``: nearest-downsampled, or for a backbone
    with a ``label_agreement`` the majority of each cell over the joint label (class, open or void), void where
    no label reaches the agreement."""
    agreement = getattr(model, "label_agreement", None)
    if agreement is None:
        return resize_nearest(semantic, size), resize_nearest(anomaly, size)
    joint = np.where(anomaly == 1, 256, np.where((anomaly == 0) & (semantic != 255), semantic.astype(np.int32), -1))
    major = majority_labels(joint.astype(np.int32), size, agreement, void=-1)
    sem = np.where((major >= 0) & (major < 256), major, 255).astype(semantic.dtype)
    anom = np.where(major == 256, 1, np.where(major < 0, 255, 0)).astype(anomaly.dtype)
    return sem, anom


def _concat(parts: list[dict]) -> dict:
    out = {}
    for kind in KINDS:
        out[kind] = {f: np.concatenate([p[kind][f] for p in parts]) for f in FIELDS}
    return out


def extract_bank(model, dataset, out: str | Path, *, backbone: str, layer: str = "penultimate",
                 closed_per_image: int | None = 5000, open_per_image: int | None = None, chunk_images: int = 16,
                 seed: int = 0, config: dict | None = None, dist: DistInfo | None = None,
                 progress: bool = True, workers: int | str = "auto", amp: str = "none",
                 batch_images: int = 8) -> FeatureBank:
    """Build (or finish, or reuse) the feature bank of ``dataset`` under ``out``.

    Args:
        model: a backbone returning :class:`~anomseg.models.SegOutput`; run in eval mode.
        dataset: a dataset of the sample contract.
        backbone: the backbone's name, recorded (and checked when the bank is reused).
        closed_per_image: closed pixels kept per image (random, seeded per image); None = all.
        open_per_image: cap on open pixels per image; None = all (the default: they are rare).
        chunk_images: images per part file (the unit of resume and of sharding over ranks).
        seed: sampling seed; the bank is a pure function of the model, data and these settings.
        dist: under torchrun, each rank writes the parts ``rank, rank + world, ...``.
        workers: image-decoding processes ahead of the backbone (0: none, ``"auto"``: on the spare
            cores); where a core is spare, parts are written by a background thread while the backbone
            runs on the next images.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"``: the backbone under autocast (recorded in the bank).
        batch_images: images of equal size the backbone runs on at once (within a part; 8 halves the per-image
            forward time of the demo's FPN on 2 CPU cores against 1). Not part of the bank's identity.
    Returns:
        the :class:`FeatureBank` once every part exists.
    """
    out = Path(out)
    if amp not in AMP:
        raise BankError(f"amp {amp!r}: choose one of {', '.join(AMP)}")
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    device = dist.device if dist is not None else next(model.parameters()).device
    n = len(dataset)
    attrs = {
        "version": BANK_VERSION, "backbone": backbone, "weights": weights_hash(model), "layer": layer,
        "stride": int(getattr(model, "stride", 0)), "feature_dim": int(getattr(model, "feature_dim", 0)),
        "dataset": type(dataset).__name__, "split": getattr(dataset, "split", ""), "images": n,
        "num_classes": int(getattr(dataset, "num_classes", 0)), "closed_per_image": closed_per_image,
        "open_per_image": open_per_image, "chunk_images": chunk_images, "seed": seed, "config": config or {},
        "parts": -(-n // chunk_images), "amp": amp,
        "labels": ("nearest" if getattr(model, "label_agreement", None) is None
                   else f"majority >= {model.label_agreement:g}"),
    }
    meta_path = out / META
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise BankError(f"{meta_path}: unreadable or truncated; delete {out} and extract the bank again") from None
        diff = [k for k in attrs if old.get(k, _BEFORE.get(k)) != attrs[k]]
        if diff:
            raise BankError(f"{out}: an existing bank was built with other settings ({', '.join(diff)}: "
                            f"{old.get(diff[0])!r} vs {attrs[diff[0]]!r}); use another folder or delete it")
        if old.get("complete"):
            return FeatureBank(out)
    make_dirs(out)
    if rank == 0:
        write_json_atomic(meta_path, {**attrs, "complete": False})
    was = model.training
    model.eval()
    todo = [p for p in range(attrs["parts"]) if p % world == rank and not (out / part_name(p)).is_file()]
    bar = tqdm(total=sum(min(chunk_images, n - p * chunk_images) for p in todo), desc=f"feature bank {attrs['split']}",
               disable=not (progress and rank == 0))
    started = time.perf_counter()
    images = [i for p in todo for i in range(p * chunk_images, min(n, (p + 1) * chunk_images))]
    batches = iter(sample_loader(dataset, images, workers=workers, device=device))  # workers start first
    try:
        with Background(lambda part: write_part(*part), depth=2, name="anomseg-bank-writer",
                        threaded=spare_cores(device) > 0) as writer:
            rows, pending = [], []
            for s in batches:
                i = s["index"]
                pending.append(s)
                p = i // chunk_images
                last = i == min(n, (p + 1) * chunk_images) - 1
                if len(pending) >= max(1, batch_images) or last:
                    rows += batch_rows(model, pending, [t["index"] for t in pending], seed=seed,
                                       closed_per_image=closed_per_image, open_per_image=open_per_image, device=device,
                                       amp=amp)
                    bar.update(len(pending))
                    pending = []
                if last:  # the part's last image: written in the background
                    writer.put((out / part_name(p), _concat(rows), attrs))
                    rows = []
    finally:
        bar.close()
        model.train(was)
    if rank == 0:
        write_timing(out / "timing.json", "extraction", len(images), time.perf_counter() - started)
    barrier()
    if rank == 0:
        missing = [p for p in range(attrs["parts"]) if not (out / part_name(p)).is_file()]
        if missing:
            raise BankError(f"{out}: parts {missing[:5]} were not written; run the extraction again")
        write_json_atomic(meta_path, {**attrs, "complete": True})
    barrier()
    return FeatureBank(out)
