"""Reading a split's images ahead of the backbone: one DataLoader for evaluation and bank extraction.

:func:`sample_loader` yields the chosen samples of a dataset in the given order, one image per
item (images of a split may differ in size), decoded by ``workers`` processes ahead of use,
in pinned memory when the device is CUDA, so that the backbone never waits for PNG decoding. Each
item is a dict: ``index`` (int, the dataset index), ``image`` uint8 tensor (1, H, W, 3),
``semantic`` int64 numpy (H, W), ``anomaly`` uint8 numpy (H, W), ``name`` (str).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from anomseg.config import ConfigError


class _Chosen(Dataset):
    """The samples ``indices`` of ``dataset``, each with its index and the image as a tensor."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, j):
        i = self.indices[j]
        s = self.dataset[i]
        return {"index": i, "image": torch.from_numpy(np.array(s["image"]))[None], "semantic": s["semantic"],
                "anomaly": s["anomaly"], "name": s.get("name", "")}


def spare_cores(device: str | torch.device) -> int:
    """CPU cores left over by the compute: on CUDA all but one; on the CPU those that torch's own
    threads do not use (0 on a 2-core machine, where extra processes and threads only slow the
    backbone down)."""
    cores = os.cpu_count() or 1
    if torch.device(device).type == "cuda":
        return max(0, cores - 1)
    return max(0, cores - torch.get_num_threads())


def resolve_workers(workers: int | str, device: str | torch.device) -> int:
    """``workers`` as given, or for ``"auto"`` up to 4 decoding processes on the spare cores."""
    if workers == "auto":
        return min(4, spare_cores(device))
    if not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers={workers!r}: give a number >= 0 or 'auto'")
    return workers


def _one(batch):
    return batch[0]


def sample_loader(dataset, indices, *, workers: int | str = "auto", device: str | torch.device = "cpu",
                  prefetch: int = 4) -> DataLoader:
    """A DataLoader over ``dataset[i] for i in indices`` (in that order; see the module docstring).

    Args:
        workers: decoding processes (0: in the calling process; ``"auto"``: :func:`resolve_workers`).
        device: the device the images go to; CUDA pins the host copies for asynchronous transfer.
        prefetch: items each worker prepares ahead.
    """
    workers = min(resolve_workers(workers, device), len(indices))
    return DataLoader(_Chosen(dataset, indices), batch_size=1, shuffle=False, num_workers=workers, collate_fn=_one,
                      pin_memory=torch.device(device).type == "cuda", prefetch_factor=prefetch if workers else None,
                      persistent_workers=False,
                      # its own generator: reading never draws from the global RNG, so what a run seeds after
                      # reading (e.g. head initialisation) does not depend on whether images went through here
                      generator=torch.Generator().manual_seed(0))
