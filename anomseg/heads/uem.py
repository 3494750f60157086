"""UEM (Nayal et al., IJCV 2025): a likelihood-ratio head on frozen features, fused with the segmenter's max logit.

Facts (../shared/docs/FORMATS.md "UEM"; NazirNayal8/UEM-likelihood-ratio @ 1d76b9d):

* projector (``configs/segmentation/ood/*.yaml`` OOD_PROJECTOR: mlp, HIDDEN_DIM 512, OUTPUT_DIM 256, NUM_LAYERS 3;
  ``modeling/modules/misc.py`` MLP): Linear D -> 512, ReLU, [Linear 512 -> 512, ReLU] x (layers - 2), Linear
  512 -> 256; the release builds the middle pair by list multiplication, so with more than 3 layers every
  middle position is the SAME Linear (one weight), as here;
* head (the ``d_d`` variant, OOD_HEAD LinearHead): Linear 256 -> 2, channel 0 inlier, 1 outlier;
* score (``modeling/ood_segmentation.py`` test_step and likelihood_ratio_loss): s = o_1 - max_c l_c - o_0 with
  l the segmenter's logits, raw (no softmax); at test time o and l are each upsampled to the label size first;
* loss: BCE-with-logits of s against 1 for outlier (pasted) pixels and 0 for every other labelled pixel (the
  CE term on o has weight 0 for the linear head);
* optimiser (``ood/base.yaml``, configure_optimizers): AdamW lr 5e-4, weight decay 0, linear warmup over 1500
  of the 4000 steps, then linear decay to 1e-7 (transformers' polynomial schedule, power 1). Here the warmup
  is the same share (1500 / 4000) of however many steps the head trains.

On the bank, a row's l is the ``logits`` column (the segmenter's logits at that feature position), so the
training batches are rows: closed rows (target 0) and open rows (target 1), OpenGAN's mixed batches. The
release trains on whole images where about one in five carries a pasted outlier; the per-batch balance
differs, the loss and the score do not.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from anomseg.heads.base import Head
from anomseg.options import Positive, PositiveInt, Range

WARMUP_SHARE = 1500 / 4000  # ood/base.yaml: NUM_WARMUP_STEPS 1500, MAX_STEPS 4000
LR_END = 1e-7


class Projector(nn.Module):
    """The release's MLP: rows (n, D) -> (n, out); ``layers`` >= 2 linear layers, middle ones one shared Linear."""

    def __init__(self, feat_dim: int, hidden: int, out: int, layers: int):
        super().__init__()
        self.first, self.last = nn.Linear(feat_dim, hidden), nn.Linear(hidden, out)
        self.middle = nn.Linear(hidden, hidden) if layers > 2 else None
        self.repeats = layers - 2

    def forward(self, x):
        x = F.relu(self.first(x))
        for _ in range(self.repeats):
            x = F.relu(self.middle(x))
        return self.last(x)


class UEMHead(Head):
    """The UEM head on D-dimensional features (see the module docstring).

    ``score_rows(x, logits)`` = o_1 - max_c logits_c - o_0 per row; :meth:`outputs` gives o on a feature map, for
    the method that fuses it with the logits at the label size.
    """

    uses_logits = True

    def __init__(self, feat_dim: int, num_classes: Annotated[int, Range(1)], hidden: PositiveInt = 512,
                 out: PositiveInt = 256, layers: Annotated[int, Range(2)] = 3, lr: Positive = 5e-4):
        super().__init__()
        self.feat_dim, self.num_classes, self.lr = feat_dim, num_classes, lr
        self.projector = Projector(feat_dim, hidden, out, layers)
        self.head = nn.Linear(out, 2)
        self.total_steps = 4000  # set by the trainer to its step count (the schedule's length)

    def row_bytes(self) -> int:
        return 4 * (self.feat_dim + 2 * self.projector.first.out_features + self.head.in_features + 4)

    def inlier_outlier(self, x: torch.Tensor) -> torch.Tensor:
        """Rows float32 (n, D) -> o float32 (n, 2) (inlier, outlier)."""
        return self.head(self.projector(x))

    def _score_chunk(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        o = self.inlier_outlier(x)
        return o[:, 1] - logits.to(o).max(1).values - o[:, 0]

    @torch.no_grad()
    def outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Features float (N, D, h, w) -> o float32 (N, 2, h, w) on the head's device, in row chunks."""
        n, d, h, w = features.shape
        rows = features.permute(0, 2, 3, 1).reshape(-1, d)
        step = self.chunk_rows()
        o = torch.cat([self.inlier_outlier(rows[i:i + step].to(self.device, torch.float32))
                       for i in range(0, len(rows), step)])
        return o.reshape(n, h, w, 2).permute(0, 3, 1, 2)

    def make_optimizers(self) -> dict:
        return {"opt": torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.0)}

    def lr_at(self, step: int) -> float:
        """The release's schedule at 0-based ``step``: linear warmup, then linear decay to 1e-7."""
        warmup = max(1, round(WARMUP_SHARE * self.total_steps))
        if step < warmup:
            return self.lr * step / warmup
        left = max(0.0, 1.0 - (step - warmup) / max(1, self.total_steps - warmup))
        return (self.lr - LR_END) * left + LR_END

    def train_step(self, batch: dict, optimizers: dict, n_fake: int = 0) -> dict:
        """One AdamW step of the likelihood-ratio BCE on a mixed batch with logits (closed -> 0, open -> 1)."""
        opt = optimizers["opt"]
        state = next(iter(opt.state.values()), {})
        step = int(state.get("step", 0))
        for group in opt.param_groups:
            group["lr"] = self.lr_at(step)
        x = torch.cat([batch["closed"], batch["open"]])
        logits = torch.cat([batch["closed_logits"], batch["open_logits"]])
        target = torch.cat([torch.zeros(len(batch["closed"]), device=x.device),
                            torch.ones(len(batch["open"]), device=x.device)])
        loss = F.binary_cross_entropy_with_logits(self._score_chunk(x, logits), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}
