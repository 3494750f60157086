"""The pixel feature bank on disk: HDF5 parts, one per chunk of images, and a reader over all.

Layout of a bank folder::

    meta.json            what built it (backbone, weights hash, layer, stride, dataset, split, config)
    part-00000.h5        images [0, chunk) ; groups "closed" and "open", each with
    part-00001.h5        features (n, D) float16, logits (n, K) float16, labels (n,) int16, image (n,) int32,
    ...                  yx (n, 2) int16

``logits`` are the segmenter's class scores at the row's pixel (what UEM fuses and PixOOD tests); banks of
version 1 have none, and the heads that need them say so.

Closed rows carry their closed-set class id; open rows the open mark -1. Void pixels are never
stored. Every part is written to a temporary name and renamed when complete, so a killed
extraction leaves only whole parts, and a restart writes the missing ones. The same attributes
as ``meta.json`` are stored on every part.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from anomseg.errors import AnomsegError
from anomseg.files import write_with

OPEN = -1  #: label of open-set rows
KINDS = ("closed", "open")
FIELDS = ("features", "logits", "labels", "image", "yx")  #: per row (``logits`` from version 2)
META = "meta.json"


class BankError(AnomsegError, ValueError):
    """A feature bank is missing, incomplete, or does not fit what uses it."""


def part_name(index: int) -> str:
    return f"part-{index:05d}.h5"


def _attr(v):
    """How a ``meta.json`` value is stored as an HDF5 attribute."""
    return json.dumps(v) if v is None or isinstance(v, (dict, list)) else v


def write_part(path: Path, rows: dict[str, dict[str, np.ndarray]], attrs: dict) -> None:
    """Write one part atomically. ``rows[kind]`` holds features / labels / image / yx arrays."""
    def write(tmp):
        with h5py.File(tmp, "w") as f:
            for k, v in attrs.items():
                f.attrs[k] = _attr(v)
            for kind in KINDS:
                g = f.create_group(kind)
                r = rows[kind]
                n, d = r["features"].shape
                g.create_dataset("features", data=r["features"], chunks=(min(max(n, 1), 256), d) if n else None)
                for name in FIELDS[1:]:
                    if name in r:
                        g.create_dataset(name, data=r[name])

    write_with(path, write)


class FeatureBank:
    """Read-only view of a complete bank folder; never loads the whole bank into memory.

    Attributes:
        meta: the dict of ``meta.json``.
        feature_dim: D.
        counts: ``{"closed": n, "open": n}`` rows.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / META
        if not meta_path.is_file():
            raise BankError(f"{self.root}: no feature bank here ({META} missing); build it with anomseg.bank.extract_bank "
                            f"or tools/train_head.py")
        try:
            self.meta = json.loads(meta_path.read_text())
            n_parts = int(self.meta["parts"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise BankError(f"{meta_path}: unreadable or truncated bank description; delete {self.root} and extract the "
                            f"bank again") from None
        missing = [i for i in range(n_parts) if not (self.root / part_name(i)).is_file()]
        if missing or not self.meta.get("complete"):
            raise BankError(f"{self.root}: incomplete bank ({n_parts - len(missing)} of {n_parts} parts written); "
                            f"run the extraction again to finish it (it resumes)")
        self.feature_dim = int(self.meta["feature_dim"])
        self._files = [self._open_part(i) for i in range(n_parts)]
        # dataset handles cached per (kind, field): h5py name lookups dominate small random reads
        self.fields = tuple(f for f in FIELDS if all(f in fh[k] for fh in self._files for k in KINDS))
        self._ds = {k: {f: [fh[k][f] for fh in self._files] for f in self.fields} for k in KINDS}
        self._offsets = {k: np.cumsum([0] + [d.shape[0] for d in self._ds[k]["labels"]]) for k in KINDS}
        self.counts = {k: int(self._offsets[k][-1]) for k in KINDS}
        self._check_images()

    def _check_images(self) -> None:
        """Each part holds rows of its own images only (meta.json: part p = images [p * chunk, (p + 1) * chunk)):
        a part copied over another, or written for another bank layout, is refused with its path."""
        chunk, n = self.meta.get("chunk_images"), self.meta.get("images")
        if not isinstance(chunk, int) or not isinstance(n, int):
            return  # a hand-built bank records no layout
        for p in range(len(self._files)):
            lo, hi = p * chunk, min(n, (p + 1) * chunk)
            for kind in KINDS:
                images = self._ds[kind]["image"][p][()]
                if images.size and (images.min() < lo or images.max() >= hi):
                    span = lambda a, b: f"image {a}" if a == b else f"images {a}-{b}"  # noqa: E731
                    raise BankError(f"{self.root / part_name(p)}: holds {kind} rows of "
                                    f"{span(int(images.min()), int(images.max()))}, but part {p} of this bank holds "
                                    f"{span(lo, hi - 1)} (a copied or misplaced part); delete it and run the extraction "
                                    f"again")

    def _open_part(self, i: int):
        """Open part ``i`` and check it belongs to this bank (its attributes are ``meta.json``'s)."""
        path = self.root / part_name(i)
        try:
            f = h5py.File(path, "r")
            attrs = dict(f.attrs)
        except OSError:
            raise BankError(f"{path}: unreadable or truncated part; delete it and run the extraction again (it "
                            f"resumes with the missing parts)") from None
        for k, v in self.meta.items():  # every attribute the part records must be meta.json's
            if k == "complete" or k not in attrs:
                continue
            held = attrs[k].item() if hasattr(attrs[k], "item") else attrs[k]
            if _attr(v) != held:
                f.close()
                raise BankError(f"{path}: belongs to another bank ({k}: part {held!r} vs meta.json {_attr(v)!r}); "
                                f"delete it and run the extraction again")
        return f

    def __repr__(self):
        return (f"FeatureBank({self.root}, backbone={self.meta.get('backbone')}, D={self.feature_dim}, "
                f"closed={self.counts['closed']}, open={self.counts['open']})")

    def close(self) -> None:
        for f in self._files:
            f.close()

    def check_compatible(self, feature_dim: int | None = None, backbone: str | None = None) -> None:
        """Raise BankError if the bank was built for another feature size or backbone."""
        if feature_dim is not None and feature_dim != self.feature_dim:
            raise BankError(f"{self.root}: bank features are {self.feature_dim}-d but the head expects {feature_dim}-d; "
                            f"rebuild the bank with the head's backbone or build the head with feat_dim={self.feature_dim}")
        if backbone is not None and backbone != self.meta.get("backbone"):
            raise BankError(f"{self.root}: bank was built with backbone {self.meta.get('backbone')!r}, not {backbone!r}; "
                            f"use another bank folder or delete this one to rebuild it")

    def require(self, field: str, why: str) -> None:
        """Raise BankError unless the bank's rows carry ``field`` (``logits`` came with bank version 2)."""
        if field not in self.fields:
            raise BankError(f"{self.root}: this bank's rows carry no {field} (bank version {self.meta.get('version')}), "
                            f"which {why} needs; extract the bank again into a new folder")

    def read(self, kind: str, start: int, stop: int, fields=("features", "labels")) -> dict[str, np.ndarray]:
        """Rows [start, stop) of ``kind`` across parts, as arrays."""
        missing = [f for f in fields if f not in self.fields]
        if missing:
            self.require(missing[0], "this read")
        offs = self._offsets[kind]
        out = {f: [] for f in fields}
        first = int(np.searchsorted(offs, start, side="right") - 1)
        p = max(first, 0)
        while p < len(self._files) and offs[p] < stop:
            lo, hi = max(start, offs[p]) - offs[p], min(stop, offs[p + 1]) - offs[p]
            if hi > lo:
                for f in fields:
                    out[f].append(self._ds[kind][f][p][lo:hi])
                if "features" in fields:
                    bad = ~np.isfinite(out["features"][-1]).all(axis=1)
                    if bad.any():
                        raise BankError(f"{self.root / part_name(p)}: {int(bad.sum())} {kind} rows (e.g. row "
                                        f"{lo + int(np.flatnonzero(bad)[0])}) hold NaN or infinite features; nothing "
                                        f"trains or fits on them: delete the part and run the extraction again")
            p += 1
        return {f: (np.concatenate(v) if v else np.zeros((0,) + self._ds[kind][f][0].shape[1:], self._ds[kind][f][0].dtype))
                for f, v in out.items()}

    def check_finite(self) -> None:
        """Read every row once (features, and logits where stored) and raise BankError naming the first part with a
        NaN or infinite value: rows a sampler would never draw are checked too (one pass, chunk by chunk)."""
        fields = tuple(f for f in ("features", "logits") if f in self.fields)
        for kind in KINDS:
            for c in self.iter_chunks(kind, fields=fields):
                if "logits" in c and not np.isfinite(c["logits"]).all():
                    raise BankError(f"{self.root}: {int((~np.isfinite(c['logits']).all(1)).sum())} {kind} rows hold NaN "
                                    f"or infinite logits; delete the bank's parts and extract it again")

    def iter_chunks(self, kind: str, chunk: int = 65536, fields=("features", "labels")):
        """Iterate over all rows of ``kind`` in order, ``chunk`` rows at a time."""
        for start in range(0, self.counts[kind], chunk):
            yield self.read(kind, start, min(start + chunk, self.counts[kind]), fields)

    def sample(self, kind: str, n: int, rng: np.random.Generator, block: int = 64,
               fields=("features", "labels")) -> dict[str, np.ndarray]:
        """``n`` random rows of ``kind``, read as ``ceil(n / block)`` random contiguous blocks.

        Blocks keep reads sequential (fast on a bank larger than memory); rows of a block come from
        neighbouring pixels of one image, so keep ``block`` small relative to ``n``.
        """
        total = self.counts[kind]
        if total == 0:
            raise BankError(f"{self.root}: the bank holds no {kind} pixels")
        block = max(1, min(block, total))
        starts = np.sort(rng.integers(0, total - block + 1, -(-n // block)))
        parts = [self.read(kind, int(s), int(s) + block, fields) for s in starts]
        out = {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}
        return out
