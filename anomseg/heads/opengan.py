"""OpenGAN-fea (Kong & Ramanan, ICCV 2021): a per-pixel discriminator trained against closed,
open and generated features.

Architecture as released (github.com/aimerykong/OpenGAN, demo_OpenSetSegmentation_training;
../shared/docs/FORMATS.md): 1x1 convolutions with bias, ndf = ngf = 64, nz = 64:

* D: D -> 512, LeakyReLU(0.2) -> 256, BN, LReLU -> 128, BN, LReLU -> 64, BN, LReLU -> 1 -> sigmoid
  (D outputs P(closed));
* G: z (64) -> 512 -> 256 -> 128 -> 256 (each BN + ReLU) -> D;
* DCGAN initialisation: conv weights N(0, 0.02), BN weight N(1, 0.02), BN bias 0.

The sigmoid is folded into the loss (BCE with logits, the same function computed stably); the
anomaly score is the negated logit, a monotone map of 1 - P(closed).
"""

from __future__ import annotations

import torch
from torch import nn

from anomseg.heads.base import Head
from anomseg.options import NonNegative, PositiveInt


def dcgan_init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Discriminator(nn.Module):
    """Per-pixel MLP as 1x1 convs; ``forward`` gives logits (N, 1, h, w), ``prob`` P(closed)."""

    def __init__(self, feat_dim: int, ndf: int = 64):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(feat_dim, ndf * 8, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 8, ndf * 4, 1), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 4, ndf * 2, 1), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf * 2, ndf, 1), nn.BatchNorm2d(ndf), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ndf, 1, 1),
        )

    def forward(self, x):
        return self.main(x)

    def prob(self, x):
        return torch.sigmoid(self.main(x))


class Generator(nn.Module):
    """z (N, nz, 1, 1) -> fake features (N, D, 1, 1)."""

    def __init__(self, feat_dim: int, nz: int = 64, ngf: int = 64):
        super().__init__()
        self.nz = nz
        self.main = nn.Sequential(
            nn.Conv2d(nz, ngf * 8, 1), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.Conv2d(ngf * 8, ngf * 4, 1), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.Conv2d(ngf * 4, ngf * 2, 1), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.Conv2d(ngf * 2, ngf * 4, 1), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.Conv2d(ngf * 4, feat_dim, 1),
        )

    def forward(self, z):
        return self.main(z)


def as_column(rows: torch.Tensor) -> torch.Tensor:
    """Rows (n, D) as one (1, D, n, 1) map: 1x1 convolutions then run as a single matrix product
    (a batch of n 1x1 images takes a far slower convolution path); batch norm statistics, taken over
    (N, H, W), are the same."""
    return rows.T[None, :, :, None]


class OpenGANHead(Head):
    """OpenGAN-fea / OpenGAN-0 / CLS-fea: the same discriminator, trained with different weights.

    Args:
        feat_dim: D.
        lambda_o: weight of real open pixels (0: OpenGAN-0).
        lambda_g: weight of generated pixels (0: CLS-fea, no generator is built).
        nz, ndf, ngf: sizes (published: 64).
    """

    def __init__(self, feat_dim: int, lambda_o: NonNegative = 1.0, lambda_g: NonNegative = 0.2, nz: PositiveInt = 64,
                 ndf: PositiveInt = 64, ngf: PositiveInt = 64):
        super().__init__()
        if lambda_o < 0 or lambda_g < 0 or (lambda_o == 0 and lambda_g == 0):
            raise ValueError(f"lambda_o={lambda_o}, lambda_g={lambda_g}: need lambda_o > 0 or lambda_g > 0 (both >= 0)")
        self.feat_dim, self.lambda_o, self.lambda_g = feat_dim, float(lambda_o), float(lambda_g)
        self.discriminator = Discriminator(feat_dim, ndf)
        self.generator = Generator(feat_dim, nz, ngf) if lambda_g > 0 else None
        self.apply(dcgan_init)

    def logits_rows(self, x: torch.Tensor) -> torch.Tensor:
        """D's logits for rows (n, D) -> (n,)."""
        return self.discriminator(as_column(x)).flatten()

    def fake_rows(self, n: int) -> torch.Tensor:
        """n generated features as a column (1, D, n, 1), on the head's device."""
        z = torch.randn(n, self.generator.nz, device=self.device)
        return self.generator(z.T[None, :, :, None])

    def row_bytes(self) -> int:  # input row plus D's activations (and their BN / LReLU copies)
        return 4 * (self.feat_dim + 3 * 15 * self.discriminator.main[0].out_channels // 8)

    def _score_chunk(self, x: torch.Tensor) -> torch.Tensor:
        return -self.logits_rows(x)
