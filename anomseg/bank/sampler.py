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
        logits: the batches also carry the rows' segmenter logits (``closed_logits``, ``open_logits``; a bank of
            version 2 or later).
    """

    def __init__(self, bank: FeatureBank, *, n_closed: int = 5000, n_open: int = 2500, closed_source: str = "bank",
                 model=None, dataset=None, block: int = 64, seed: int = 0,
                 device: str | torch.device = "cpu", logits: bool = False):
        if closed_source not in ("bank", "image"):
            raise ValueError(f"closed_source={closed_source!r}: choose 'bank' or 'image'")
        if closed_source == "image" and (model is None or dataset is None):
            raise ValueError("closed_source='image' needs the backbone (model) and the training dataset")
        if n_open > 0 and bank.counts["open"] == 0:
            hint = ("; its rows are ViT patches, open only where outliers cover label_agreement "
                    f"({bank.meta.get('labels')}) of a patch: paste larger outliers or lower the backbone's "
                    "label_agreement" if str(bank.meta.get("labels", "")).startswith("majority") else "")
            raise BankError(f"{bank.root}: the bank holds no open pixels but the head needs {n_open} per batch (OpenGAN-fea, "
                            f"CLS-fea and UEM train on them; OpenGAN-0 needs none){hint}")
        if closed_source == "bank" and bank.counts["closed"] == 0:
            raise BankError(f"{bank.root}: the bank holds no closed pixels")
        if logits:
            bank.require("logits", "a head fused with the segmenter's logits")
            if closed_source == "image":
                raise ValueError("closed_source='image' cannot give the segmenter's logits; use closed_source='bank'")
        self.bank, self.n_closed, self.n_open, self.logits = bank, n_closed, n_open, logits
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
        """``{"closed": float32 (n_closed, D), "closed_labels": int64 (n_closed,), "open": float32 (n_open, D)}``
        (+ ``closed_logits`` / ``open_logits`` float32 (n, K) with ``logits``), on the sampler's device."""
        fields = ("features", "labels", "logits") if self.logits else ("features", "labels")
        if self.closed_source == "bank":
            c = self.bank.sample("closed", self.n_closed, self.rng, self.block, fields)
        else:
            c = self._closed_from_image()
        batch = {"closed": c["features"].astype(np.float32), "closed_labels": c["labels"].astype(np.int64)}
        if self.n_open > 0:
            o = self.bank.sample("open", self.n_open, self.rng, self.block, fields)
            batch["open"] = o["features"].astype(np.float32)
        else:
            o = {"logits": np.zeros((0, c["logits"].shape[1] if self.logits else 0), np.float16)}
            batch["open"] = np.zeros((0, self.bank.feature_dim), np.float32)
        if self.logits:
            batch["closed_logits"], batch["open_logits"] = c["logits"].astype(np.float32), o["logits"].astype(np.float32)
        return {k: to_device(v, self.device) for k, v in batch.items()}
