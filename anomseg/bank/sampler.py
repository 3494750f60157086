"""Mixed batches for the heads: closed pixels, open pixels (and room for generated ones)."""

from __future__ import annotations

import numpy as np
import torch

from anomseg.bank.extract import image_rows
from anomseg.bank.store import BankError, FeatureBank
from anomseg.distributed import to_device


class MixedBatchSampler:
    """Draws the closed / open parts of a mixed batch (OpenGAN-fea: 5000 / 2500, plus 2500 from G).

    Args:
        bank: the training bank (open pixels always come from it; closed too with ``closed_source="bank"``).
        n_closed, n_open: pixels per batch (``n_open=0`` for OpenGAN-0).
        closed_source: ``"bank"``, or ``"image"``: one random training image run through ``model`` per
            batch, as the paper does (then ``model`` and ``dataset`` are required).
        block: contiguous rows per random read from the bank (see :meth:`FeatureBank.sample`).
        seed: the sampler's random stream (batches are reproducible).
        device: where the batches' tensors are put (pinned host memory and an asynchronous copy on CUDA).
    """

    def __init__(self, bank: FeatureBank, *, n_closed: int = 5000, n_open: int = 2500, closed_source: str = "bank",
                 model=None, dataset=None, block: int = 64, seed: int = 0,
                 device: str | torch.device = "cpu"):
        if closed_source not in ("bank", "image"):
            raise ValueError(f"closed_source={closed_source!r}: choose 'bank' or 'image'")
        if closed_source == "image" and (model is None or dataset is None):
            raise ValueError("closed_source='image' needs the backbone (model) and the training dataset")
        if n_open > 0 and bank.counts["open"] == 0:
            raise BankError(f"{bank.root}: the bank holds no open pixels but the head needs {n_open} per batch "
                            f"(lambda_o > 0); use OpenGAN-0 (lambda_o = 0, no open pixels) or a split with open pixels")
        if closed_source == "bank" and bank.counts["closed"] == 0:
            raise BankError(f"{bank.root}: the bank holds no closed pixels")
        self.bank, self.n_closed, self.n_open = bank, n_closed, n_open
        self.closed_source, self.model, self.dataset, self.block = closed_source, model, dataset, block
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.device = torch.device(device)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def _closed_from_image(self) -> dict[str, np.ndarray]:
        i = int(self.rng.integers(len(self.dataset)))
        device = next(self.model.parameters()).device
        was = self.model.training
        self.model.eval()
        rows = image_rows(self.model, self.dataset[i], i, seed=int(self.rng.integers(2**31)),
                          closed_per_image=self.n_closed, open_per_image=0, device=device)["closed"]
        self.model.train(was)
        return rows

    def next(self) -> dict[str, torch.Tensor]:
        """``{"closed": float32 (n_closed, D), "closed_labels": int64 (n_closed,), "open": float32 (n_open, D)}``,
        on the sampler's device."""
        if self.closed_source == "bank":
            c = self.bank.sample("closed", self.n_closed, self.rng, self.block)
        else:
            c = self._closed_from_image()
        batch = {"closed": c["features"].astype(np.float32), "closed_labels": c["labels"].astype(np.int64)}
        if self.n_open > 0:
            batch["open"] = self.bank.sample("open", self.n_open, self.rng, self.block)["features"].astype(np.float32)
        else:
            batch["open"] = np.zeros((0, self.bank.feature_dim), np.float32)
        return {k: to_device(v, self.device) for k, v in batch.items()}
