"""DIAS-fea: a difficulty-aware simulator (Moon et al., "Difficulty-Aware Simulator for Open Set
Recognition", ECCV 2022) as a per-pixel head on the feature bank, with no real outlier pixels.

A K-way classifier learns to lower its confidence on simulated unknowns of several difficulties:

* hard ones from a generator G trained against a discriminator D and pushed to be classified
  confidently: loss_G = BCE(D(G(z)), real) - beta * CE_smooth(C(G(z)), alpha=1);
* easier ones from a copycat network that imitates the classifier's intermediate features (L1 pull)
  while learning the K classes; its intermediate features are fed through the classifier's later layers;
* the classifier: CE on real pixels, + beta * CE_smooth(alpha=1) on G's fakes (GAN phase), + fake_ratio
  x the mean of CE_smooth on the copycat's fakes, alpha = 0.5 for the intermediate level and 1.0 for the
  last level (copycat phase). CE_smooth(alpha) is the cross-entropy to the target
  onehot(y) (1 - alpha) + alpha / K (alpha = 1: uniform).
* score = -max softmax(C(x) / temperature) (the maximum softmax with a temperature; negated so that
  higher = more anomalous).

Facts from the release (github.com/wjun0830/Difficulty-Aware-Simulator, osr.py): beta 0.1, fake_ratio
0.1, pull_ratio 1.0, smoothing 0.5 / 1.0, temperature 1.0, G / D Adam lr 2e-4 betas (0.5, 0.999); the
GAN phase (D, then G, then C on real + fakes from fresh noise) before the copycat phase (copycat, then C);
the L1 pull is the mean absolute difference; C's fake terms use the batch's labels (irrelevant at
alpha = 1).

Design choices the pixel setting forces (ours):

* **Layers.** The bank holds one layer of features (D channels per pixel), so C is built on it:
  x -> h1 = x + B1(x) -> h2 = h1 + B2(h1) -> fc(h2), with B_i = Linear(D, width) ReLU Linear(width, D),
  residual, their last Linear zero-initialised. h1 and h2 are the "intermediate features" the copycat
  imitates; the copycat has the same shape without the residual paths (h1' = B1'(x), h2' = B2'(h1'), fc'),
  randomly initialised, so its features start far from C's and approach them as the pull works (easy
  fakes first, harder later: the simulator's curriculum). Its fakes: C.fc(C.B2(h1')) (intermediate,
  alpha 0.5) and C.fc(h2') (last level, alpha 1.0): the release's three levels (two blocks + pooled
  features) become two.
* **Initialisation from the segmenter.** fc starts as the segmenter's own classifier (its pointwise
  layers: 1x1 convolutions as Linear, BatchNorm folded into the Linear before it; upsampling dropped),
  so before training C(x) equals the segmenter's logits at every pixel (B_i start at zero). A backbone
  whose classifier is not pointwise cannot be copied; the head then says so (option ``init="random"``).
* **No image-level pieces.** G and D are OpenGAN-fea's per-pixel networks (z of 64 -> D features; D an
  MLP on D features); the release's auxiliary batch norm (separate statistics for fakes) has no place in
  these BN-free blocks. C and the copycat use Adam (``lr`` 1e-4) since C starts trained (the release trains
  from scratch with SGD 0.1).
* **Batches.** Each step takes one mixed batch from the bank's sampler (``n_closed`` closed pixels with
  their labels, no open pixels, ``n_fake`` generated ones), runs the GAN phase then the copycat phase on it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from anomseg.config import ConfigError
from anomseg.heads.base import Head
from anomseg.options import Fraction, NonNegative, Positive, PositiveInt, Range
from anomseg.heads.opengan import Discriminator, Generator, as_column, dcgan_init


def smooth_ce(logits: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mean cross-entropy of logits (n, K) to onehot(labels) (1 - alpha) + alpha / K."""
    k = logits.shape[1]
    target = F.one_hot(labels, k).to(logits.dtype) * (1.0 - alpha) + alpha / k
    return -(target * logits.log_softmax(1)).sum(1).mean()


class _Block(nn.Sequential):
    def __init__(self, dim: int, width: int):
        super().__init__(nn.Linear(dim, width), nn.ReLU(inplace=True), nn.Linear(width, dim))


class PixelClassifier(nn.Module):
    """Rows float (n, D) -> (h1 (n, D), h2 (n, D), logits (n, K)); residual blocks for the classifier,
    plain ones for the copycat."""

    def __init__(self, feat_dim: int, num_classes: int, width: int, residual: bool):
        super().__init__()
        self.residual = residual
        self.b1, self.b2 = _Block(feat_dim, width), _Block(feat_dim, width)
        self.fc = nn.Sequential(nn.Linear(feat_dim, num_classes))
        if residual:  # the blocks start as the identity: C(x) = fc(x)
            for b in (self.b1, self.b2):
                nn.init.zeros_(b[2].weight)
                nn.init.zeros_(b[2].bias)

    def block(self, b: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x + b(x) if self.residual else b(x)

    def forward(self, x: torch.Tensor):
        h1 = self.block(self.b1, x)
        h2 = self.block(self.b2, h1)
        return h1, h2, self.fc(h2)

    def from_level(self, h: torch.Tensor, level: int) -> torch.Tensor:
        """Logits of features entering after block ``level`` (1: through b2 and fc; 2: through fc)."""
        return self.fc(self.block(self.b2, h)) if level == 1 else self.fc(h)


def pointwise_classifier(module: nn.Module, feat_dim: int, num_classes: int) -> nn.Sequential:
    """A segmenter's classifier (1x1 convs, BatchNorm, ReLU, upsampling, identity) as Linear layers on rows,
    BatchNorm folded into the Linear before it. Raises ConfigError for anything else."""
    layers: list[nn.Module] = []
    for m in module.modules():
        if list(m.children()):
            continue
        if isinstance(m, nn.Conv2d):
            if m.kernel_size != (1, 1) or m.groups != 1:
                raise ConfigError(f"dias_fea: the segmenter's classifier has a {m.kernel_size} convolution; only "
                                  f"pointwise classifiers can be copied per pixel: set the head option init: random")
            lin = nn.Linear(m.in_channels, m.out_channels)
            with torch.no_grad():
                lin.weight.copy_(m.weight[:, :, 0, 0].float())
                lin.bias.copy_(m.bias.float() if m.bias is not None else torch.zeros(m.out_channels))
            layers.append(lin)
        elif isinstance(m, nn.BatchNorm2d):
            if not layers or not isinstance(layers[-1], nn.Linear):
                raise ConfigError("dias_fea: a BatchNorm without a convolution before it cannot be folded; "
                                  "set the head option init: random")
            scale = m.weight.float() / (m.running_var.float() + m.eps).sqrt()
            with torch.no_grad():
                layers[-1].weight.mul_(scale[:, None])
                layers[-1].bias.copy_((layers[-1].bias - m.running_mean.float()) * scale + m.bias.float())
        elif isinstance(m, nn.ReLU):
            layers.append(nn.ReLU())
        elif isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Upsample, nn.UpsamplingBilinear2d)):
            continue  # pointwise no-ops on a pixel's features (upsampling commutes with 1x1 layers)
        else:
            raise ConfigError(f"dias_fea: cannot copy a {type(m).__name__} of the segmenter's classifier per pixel; "
                              f"set the head option init: random")
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    if not linears or linears[0].in_features != feat_dim or linears[-1].out_features != num_classes:
        raise ConfigError(f"dias_fea: the segmenter's classifier maps "
                          f"{linears[0].in_features if linears else '?'} -> {linears[-1].out_features if linears else '?'} "
                          f"channels; the bank has {feat_dim} features and {num_classes} classes")
    return nn.Sequential(*layers)


class DIASHead(Head):
    """Per-pixel DIAS (see the module docstring); ``score_rows`` = -max softmax(C(x) / temperature)."""

    def __init__(self, feat_dim: int, num_classes: Annotated[int, Range(2)], width: PositiveInt = 256,
                 temperature: Positive = 1.0, beta: NonNegative = 0.1, fake_ratio: NonNegative = 0.1,
                 pull_ratio: NonNegative = 1.0, smoothing: Fraction = 0.5, smoothing_last: Fraction = 1.0,
                 lr: Positive = 1e-4, gan_lr: Positive = 2e-4, nz: PositiveInt = 64, ndf: PositiveInt = 64,
                 ngf: PositiveInt = 64, init: Literal["segmenter", "random"] = "segmenter"):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"dias_fea needs the bank's number of classes (>= 2), got {num_classes}")
        if init not in ("segmenter", "random"):
            raise ValueError(f"init must be 'segmenter' or 'random', got {init!r}")
        self.feat_dim, self.num_classes, self.init = feat_dim, num_classes, init
        self.temperature, self.beta, self.fake_ratio, self.pull_ratio = temperature, beta, fake_ratio, pull_ratio
        self.smoothing, self.smoothing_last, self.lr, self.gan_lr = smoothing, smoothing_last, lr, gan_lr
        self.classifier = PixelClassifier(feat_dim, num_classes, width, residual=True)
        self.copycat = PixelClassifier(feat_dim, num_classes, width, residual=False)
        self.generator = Generator(feat_dim, nz, ngf)
        self.discriminator = Discriminator(feat_dim, ndf)
        self.generator.apply(dcgan_init)
        self.discriminator.apply(dcgan_init)

    def init_from_segmenter(self, classifier: nn.Module) -> None:
        """Make C's last layers a copy of the segmenter's (pointwise) classifier."""
        fc = pointwise_classifier(classifier, self.feat_dim, self.num_classes)
        self.classifier.fc = fc.to(self.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a classifier copied from the segmenter may have more layers than the default single Linear
        keys = sorted({k[len(prefix + "classifier.fc."):].split(".")[0] for k in state_dict
                       if k.startswith(prefix + "classifier.fc.")}, key=int)
        have = [str(i) for i, m in enumerate(self.classifier.fc) if isinstance(m, nn.Linear)]
        if keys and keys != have:
            self.classifier.fc = _sequential_like(state_dict, prefix + "classifier.fc.", keys).to(self.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def logits_rows(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)[2]

    def fake_rows(self, n: int) -> torch.Tensor:
        z = torch.randn(n, self.generator.nz, 1, 1, device=self.device)
        return self.generator(z).flatten(1)

    def row_bytes(self) -> int:
        width = self.classifier.b1[0].out_features
        return 8 * (3 * self.feat_dim + 2 * width + 2 * self.num_classes)

    def _score_chunk(self, x: torch.Tensor) -> torch.Tensor:
        return -(self.logits_rows(x) / self.temperature).softmax(1).amax(1)

    # -- the losses, one function each (tests check them against their formulas) --------------------

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """BCE(D(real), 1) + BCE(D(fake), 0), each a mean (the release's errD_real + errD_fake)."""
        d_real = self.discriminator(as_column(real)).flatten()
        d_fake = self.discriminator(as_column(fake)).flatten()
        return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))

    def generator_loss(self, fake: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE(D(fake), 1) - beta * CE_smooth(C(fake), alpha=smoothing_last)."""
        d_fake = self.discriminator(as_column(fake)).flatten()
        return (F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))
                - self.beta * smooth_ce(self.logits_rows(fake), labels, self.smoothing_last))

    def classifier_gan_loss(self, real, labels, fake, fake_labels) -> torch.Tensor:
        """CE(C(real), y) + beta * CE_smooth(C(fake), alpha=smoothing_last)."""
        return (F.cross_entropy(self.logits_rows(real), labels)
                + self.beta * smooth_ce(self.logits_rows(fake), fake_labels, self.smoothing_last))

    def copycat_loss(self, real, labels) -> torch.Tensor:
        """CE(copycat(real), y) + pull_ratio * mean of the L1 pulls of h1', h2' to C's (detached)."""
        with torch.no_grad():
            h1, h2, _ = self.classifier(real)
        c1, c2, logits = self.copycat(real)
        pull = (F.l1_loss(c1, h1) + F.l1_loss(c2, h2)) / 2
        return F.cross_entropy(logits, labels) + self.pull_ratio * pull

    def classifier_copycat_loss(self, real, labels) -> torch.Tensor:
        """CE(C(real), y) + fake_ratio * mean(CE_smooth(C.from_level(h1', 1), smoothing),
        CE_smooth(C.from_level(h2', 2), smoothing_last)), the copycat's features detached."""
        with torch.no_grad():
            c1, c2, _ = self.copycat(real)
        fakes = (smooth_ce(self.classifier.from_level(c1, 1), labels, self.smoothing)
                 + smooth_ce(self.classifier.from_level(c2, 2), labels, self.smoothing_last)) / 2
        return F.cross_entropy(self.logits_rows(real), labels) + self.fake_ratio * fakes

    # -- training ------------------------------------------------------------------------------------

    def make_optimizers(self) -> dict:
        """Adam for C and the copycat (``lr``), and for G and D as the release (``gan_lr``, betas (0.5, 0.999))."""
        gan = dict(lr=self.gan_lr, betas=(0.5, 0.999))
        return {"opt_c": torch.optim.Adam(self.classifier.parameters(), lr=self.lr),
                "opt_copy": torch.optim.Adam(self.copycat.parameters(), lr=self.lr),
                "opt_d": torch.optim.Adam(self.discriminator.parameters(), **gan),
                "opt_g": torch.optim.Adam(self.generator.parameters(), **gan)}

    def train_step(self, batch: dict, optimizers: dict, n_fake: int) -> dict:
        """One DIAS update on a mixed batch (``closed`` float (n, D), ``closed_labels`` int (n,)): the GAN
        phase (D, G, C on real + fresh fakes), then the copycat phase (copycat, C). Returns the losses."""
        real, labels = batch["closed"], batch["closed_labels"].long()
        fake_labels = labels[torch.arange(n_fake, device=labels.device) % len(labels)]

        def step(name, loss):
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()
            return loss.detach()

        fake = self.fake_rows(n_fake)
        loss_d = step("opt_d", self.discriminator_loss(real, fake.detach()))
        loss_g = step("opt_g", self.generator_loss(fake, fake_labels))
        loss_c_gan = step("opt_c", self.classifier_gan_loss(real, labels, self.fake_rows(n_fake).detach(),
                                                                  fake_labels))
        loss_copy = step("opt_copy", self.copycat_loss(real, labels))
        loss_c = step("opt_c", self.classifier_copycat_loss(real, labels))
        return {"loss_d": float(loss_d), "loss_g": float(loss_g), "loss_c_gan": float(loss_c_gan),
                "loss_copy": float(loss_copy), "loss_c": float(loss_c)}


def _sequential_like(state_dict: dict, prefix: str, keys: list[str]) -> nn.Sequential:
    """An empty Sequential with Linear layers where ``state_dict`` has weights and ReLU between them."""
    layers = []
    for i in range(int(keys[-1]) + 1):
        w = state_dict.get(f"{prefix}{i}.weight")
        layers.append(nn.Linear(w.shape[1], w.shape[0]) if w is not None else nn.ReLU())
    return nn.Sequential(*layers)
