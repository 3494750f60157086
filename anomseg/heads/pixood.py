"""PixOOD (Vojir et al., ECCV 2024): per-class prototypes by condensation and a Neyman-Pearson test per class on
(logit, prototype similarity), with no outlier data.

Facts (../shared/docs/FORMATS.md "PixOOD"; vojirt/PixOOD @ c52fdb0, ``code/net/models/grood.py`` fit_nm_model,
``code/helpers/kmeans.py`` DiffKMeansMultiClassv2, ``code/helpers/neyman_pearson.py``, ``parameters.yaml``):

* **Condensation** (per class c, K = ``prototypes`` (MAX_K 1000)): features whitened by the per-dimension median
  and unbiased std of the initialisation rows (each class's first > 10000 rows, pooled); prototypes start as
  K distinct random whitened rows of c (fewer rows: drawn with replacement + 0.1 (U - 0.5) noise);
  sim = -||x - mu|| 100 / sqrt(D), invalid prototypes -1e12; r = softmax(T sim) over c's K with T(e) = 0.5 +
  1.5 (1 - cos(pi e / E)) / 2; tau = 100 sigmoid(theta / 2) + 0.01, theta from tau0 = ``init_tau`` (10);
  log p = sim / tau - ln tau; loss = sum_c mean_{rows of c} [-sum_k r log p]; AdamW (lr 0.1, wd 0) on the
  prototypes and theta, cosine annealing over the E epochs (stepped per epoch). Running soft-assignment counts
  A and class batch sizes B are exponential averages with rate 0.001 / (1 - 0.999^t); threshold 0.5 B / K; from
  epoch 1 to 0.9 E, every int(batches / 2) iterations, prototypes below it restart at random rows of the batch
  (+ 1e-6 / sqrt(D) U[0, 1)). Valid = above threshold, and then (a pass over the rows, hard assignment among
  the valid ones) assigned at least once. Stored de-whitened.
* **Statistics**: l_c = the segmenter's logit of class c, s_c = 1 / (1 + 0.5 d_c), d_c = the smallest
  Euclidean distance of the row to c's valid prototypes (raw feature space).
* **Neyman-Pearson** per class: N(m_c, S_c) = mean and np.cov of (l_c, s_c) over rows of class c; the
  alternative, shared: mean 0, covariance diag((mean_c Q0.9(l_c | c) / 4)^2, (mean_c Q0.9(s_c | c) / 8)^2)
  (the release uses np.cov of 10000 random draws with these standard deviations: a random estimate of this
  matrix, not reproducible; the expectation is used here). R = p_c / p_alt on a ``grid`` x ``grid`` grid (l in
  linspace(-L - 5, L + 5), L = the largest training logit; s in linspace(0, 1)), sorted; for each adjacent
  pair of different R the threshold is their midpoint and the cumulative mass grows by p_c of the upper
  point; normalised by sum p_c; F_c interpolates (0, 0), (thresholds, cumulative) linearly and stays at the
  last value beyond. score_c = F_c(R_c(x)) in [0, 1], high = inlier; anomaly = 1 - max over ``eval_labels``.
  The CDF is kept at ``cdf_knots`` points chosen evenly in its value (the full grid has up to grid^2 knots):
  the interpolation is then within 1 / cdf_knots of the release's; ``cdf_knots=0`` keeps every knot.
* ``eval_labels``: the release's default is [0, 1] (Cityscapes road and sidewalk: the road-obstacle mode); an
  empty list there means all 19 classes. Here None (the default) means every class with a fitted test: the
  class-agnostic mode; the configs for RoadObstacle21 set [0, 1]. The test is fitted for every class with 10
  rows and a valid prototype, so the ``pixood`` method's own ``eval_labels`` option picks another subset at
  scoring time without refitting. ``proto_channels``: the prototypes and distances use only the last
  this many feature channels (PixOOD: the last 1024 of its 4 x 1024 concatenated blocks, i.e. block 23).
* ``scale_factor`` f (``eval_scale_factor``, default 1): features and logits bilinearly upsampled by f before
  the statistics (the paper used 7).
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from anomseg.heads.base import Head
from anomseg.options import NonNegative, Positive, PositiveInt, Range

SIM_SLOPE = 0.5  # neyman_pearson.py dist2sim_: 1 / (1 + slope * d)
TAU_MAX, TAU_SIG = 100.0, 2.0  # kmeans.py: exp_distr_sigmoid_max_value, exp_distr_sigmoid_temp
DECAY = 0.001  # kmeans.py decay_assign
RESET_SHARE = 0.5  # kmeans.py reset_assignment_thr default (parameters.yaml's 1.0 is never passed)
MIN_ROWS = 10  # ours: a class with fewer training rows gets no test (the release needs a covariance of its rows)


class PixOODHead(Head):
    """PixOOD on D-dimensional features with the segmenter's K logits per row (see the module docstring)."""

    uses_logits = True

    def __init__(self, feat_dim: int, num_classes: Annotated[int, Range(1)], prototypes: PositiveInt = 1000,
                 proto_channels: PositiveInt | None = None, epochs: PositiveInt = 100, lr: Positive = 0.1,
                 batch_rows: PositiveInt = 32768, max_rows: PositiveInt = 200000, init_rows: PositiveInt = 10000,
                 init_tau: Annotated[float, Range(0.0, 100.0, lo_open=True, hi_open=True)] = 10.0,
                 reset: bool = True, grid: Annotated[int, Range(2)] = 2000, cdf_knots: NonNegative = 20000,
                 eval_labels: list[int] | None = None, scale_factor: PositiveInt = 1):
        super().__init__()
        self.feat_dim, self.num_classes = feat_dim, num_classes
        self.dim = proto_channels or feat_dim
        if self.dim > feat_dim:
            raise ValueError(f"pixood proto_channels {proto_channels} > the {feat_dim} feature channels")
        bad = [c for c in (eval_labels or []) if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"pixood eval_labels {bad} are not classes 0..{num_classes - 1}; list closed-set train ids "
                             f"of this backbone (options.eval_labels) or leave it unset for all")
        self.settings = dict(prototypes=prototypes, epochs=epochs, lr=lr, batch_rows=batch_rows, max_rows=max_rows,
                             init_rows=init_rows, init_tau=init_tau, reset=reset, grid=grid, cdf_knots=int(cdf_knots))
        self.requested = list(eval_labels) if eval_labels else None
        self.scale_factor = scale_factor
        k = prototypes
        self.register_buffer("prototypes", torch.zeros(num_classes, k, self.dim))
        self.register_buffer("valid", torch.zeros(num_classes, k, dtype=torch.bool))
        self.register_buffer("class_mean", torch.zeros(num_classes, 2, dtype=torch.float64))
        self.register_buffer("class_cov", torch.eye(2, dtype=torch.float64).repeat(num_classes, 1, 1))
        self.register_buffer("alt_cov", torch.eye(2, dtype=torch.float64))
        self.register_buffer("knots_x", torch.zeros(num_classes, 1, dtype=torch.float64))
        self.register_buffer("knots_y", torch.zeros(num_classes, 1, dtype=torch.float64))
        self.register_buffer("tested", torch.zeros(num_classes, dtype=torch.bool))  # the classes with a fitted test
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def tested_classes(self) -> list[int]:
        """The classes whose Neyman-Pearson test was fitted (enough rows and a valid prototype)."""
        return self.tested.nonzero().flatten().tolist()

    @property
    def eval_labels(self) -> list[int]:
        """The classes whose score_c enters the anomaly score: the ``eval_labels`` option, else every tested class."""
        return list(self.requested) if self.requested is not None else self.tested_classes

    def check_labels(self, labels: list[int]) -> list[int]:
        """``labels`` if every one has a fitted test, else ValueError naming the others."""
        missing = [c for c in labels if c not in self.tested_classes]
        if missing or not labels:
            raise ValueError(f"pixood eval_labels {labels}: classes {missing or '(none given)'} have no fitted test "
                             f"(fitted: {self.tested_classes}; a class needs {MIN_ROWS} training rows and a valid "
                             f"prototype)")
        return list(labels)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("knots_x", "knots_y"):  # their length is the fitted CDF's
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=self.prototypes.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def row_bytes(self) -> int:
        return 8 * (self.feat_dim + self.prototypes.shape[1] * 2 + 16)

    # -- statistics -----------------------------------------------------------------------------------------
    def distances(self, x: torch.Tensor, classes: list[int]) -> torch.Tensor:
        """Rows float32 (n, D) -> float32 (n, len(classes)): the smallest distance to each class's valid
        prototypes (inf for a class without any)."""
        x = x[:, -self.dim:]
        out = torch.full((len(x), len(classes)), float("inf"), device=x.device)
        for j, c in enumerate(classes):
            mu = self.prototypes[c][self.valid[c]]
            if len(mu):
                out[:, j] = torch.cdist(x[None], mu[None].to(x))[0].min(1).values
        return out

    def _log_ratio(self, logit: torch.Tensor, sim: torch.Tensor, c: int) -> torch.Tensor:
        """log p_c - log p_alt of 2-D points (float64), both Gaussians in closed form."""
        pts = torch.stack([logit.double(), sim.double()], -1)
        return _log_gauss(pts, self.class_mean[c], self.class_cov[c]) - _log_gauss(pts, torch.zeros_like(
            self.class_mean[c]), self.alt_cov)

    def class_scores_rows(self, x: torch.Tensor, logits: torch.Tensor, classes: list[int] | None = None) -> torch.Tensor:
        """Rows (n, D) and logits (n, K) -> float32 (n, len(classes)) score_c = F_c(R_c) in [0, 1]
        (``classes``: default ``eval_labels``)."""
        if not bool(self.fitted):
            raise RuntimeError("PixOODHead is not fitted: train it with tools/train_head.py (head pixood)")
        classes = self.eval_labels if classes is None else classes
        sims = 1.0 / (1.0 + SIM_SLOPE * self.distances(x.float(), classes))
        return self.scores_from(logits[:, classes], sims, classes)

    def scores_from(self, logits: torch.Tensor, sims: torch.Tensor, classes: list[int]) -> torch.Tensor:
        """(l_c, s_c) pairs (n, len(classes)) each -> float32 F_c(R_c) (n, len(classes))."""
        out = [_interp(self._log_ratio(logits[:, j], sims[:, j], c).exp(), self.knots_x[c], self.knots_y[c])
               for j, c in enumerate(classes)]
        return torch.stack(out, 1).float()

    def _score_chunk(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.class_scores_rows(x, logits).max(1).values

    @torch.no_grad()
    def class_scores(self, features: torch.Tensor, logits: torch.Tensor, classes: list[int] | None = None) -> torch.Tensor:
        """Features (N, D, h, w) and logits (N, K, h, w) on one grid -> float32 (N, len(classes), f h, f w)
        (``classes``: default ``eval_labels``; f = ``scale_factor``: both upsampled bilinearly first), in row chunks
        under the memory budget."""
        classes = self.eval_labels if classes is None else self.check_labels(list(classes))
        if self.scale_factor > 1:
            size = (features.shape[-2] * self.scale_factor, features.shape[-1] * self.scale_factor)
            features = F.interpolate(features.float(), size=size, mode="bilinear", align_corners=False)
            logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        n, d, h, w = features.shape
        rows = features.permute(0, 2, 3, 1).reshape(-1, d)
        lrows = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
        step = self.chunk_rows()
        out = torch.cat([self.class_scores_rows(rows[i:i + step].to(self.device, torch.float32),
                                                lrows[i:i + step].to(self.device, torch.float32), classes)
                         for i in range(0, len(rows), step)])
        return out.reshape(n, h, w, -1).permute(0, 3, 1, 2)

    # -- fitting ------------------------------------------------------------------------------------------
    def fit_bank(self, bank, *, seed: int = 0, progress: bool = True) -> dict:
        """Condense, then fit the Neyman-Pearson stage, on up to ``max_rows`` closed rows of ``bank``. Classes with
        fewer than 10 rows (or no valid prototype) get no test and leave the default eval_labels."""
        bank.require("logits", "pixood")
        rng = np.random.default_rng(seed)
        n = min(self.settings["max_rows"], bank.counts["closed"])
        rows = bank.sample("closed", n, rng, block=16, fields=("features", "labels", "logits"))
        x = torch.from_numpy(rows["features"].astype(np.float32)).to(self.device)
        labels = torch.from_numpy(rows["labels"].astype(np.int64)).to(self.device)
        logits = torch.from_numpy(rows["logits"].astype(np.float32)).to(self.device)
        torch.manual_seed(seed)
        info = self.condense(x, labels, rng, progress=progress)
        self.fit_neyman_pearson(x, labels, logits)
        self.fitted.fill_(True)
        return {**info, "tested_classes": self.tested_classes, "eval_labels": self.eval_labels}

    def condense(self, x: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator, progress: bool = True) -> dict:
        """The condensation of the module docstring on rows ``x`` (n, D) with class ``labels`` (n,)."""
        s, dev = self.settings, x.device
        xs = x[:, -self.dim:]
        c_n, k = self.num_classes, s["prototypes"]
        order = torch.from_numpy(rng.permutation(len(xs))).to(dev)
        init = torch.cat([order[labels[order] == c][: s["init_rows"] + 1] for c in range(c_n)])
        med, std = xs[init].median(0).values, xs[init].std(0).clamp_min(1e-12)
        white = (xs - med) / std
        mu = torch.rand(c_n, k, self.dim, device=dev) - 0.5
        for c in range(c_n):
            own = white[init[labels[init] == c]]
            if len(own) > k:
                mu[c] = own[torch.from_numpy(rng.choice(len(own), k, replace=False)).to(dev)]
            elif len(own):
                mu[c] = own[torch.from_numpy(rng.choice(len(own), k)).to(dev)] + 0.1 * (torch.rand(k, self.dim, device=dev) - 0.5)
        state = Condensation(mu, s["init_tau"])
        opt = torch.optim.AdamW(state.parameters(), lr=s["lr"], weight_decay=0.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, s["epochs"])
        n_batches = max(1, -(-len(white) // s["batch_rows"]))
        every = max(1, int(0.5 * n_batches))
        iteration, losses = 0, []
        for epoch in tqdm(range(s["epochs"]), desc="pixood condensation", disable=not progress):
            temp = condensation_temperature(epoch, s["epochs"])
            perm = torch.from_numpy(rng.permutation(len(white))).to(dev)
            for b in range(n_batches):
                idx = perm[b * s["batch_rows"]:(b + 1) * s["batch_rows"]]
                loss = state.loss(white[idx], labels[idx], temp)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                iteration += 1
                if s["reset"] and epoch >= 1 and iteration % every == 0 and epoch < 0.9 * s["epochs"]:
                    state.reset(white[idx], labels[idx], rng)
            sched.step()
        with torch.no_grad():
            valid = state.valid()
            hits = torch.zeros(c_n, k, device=dev)
            for c in labels.unique().tolist():
                v = valid[c].nonzero().flatten()
                if len(v):
                    nearest = torch.cdist(white[labels == c][None], state.mu[c, v][None])[0].argmin(1)
                    hits[c, v] += torch.bincount(nearest, minlength=len(v)).float()
            self.valid.copy_(valid & (hits > 0))
            self.prototypes.copy_(state.mu.detach() * std + med)
        return {"loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
                "valid_prototypes": [int(v) for v in self.valid.sum(1).tolist()]}

    def fit_neyman_pearson(self, x: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> None:
        """The per-class Gaussians, the shared alternative and the CDFs F_c (module docstring), from rows of
        features, labels and logits."""
        counts = torch.bincount(labels, minlength=self.num_classes)
        present = [c for c in range(self.num_classes) if counts[c] >= MIN_ROWS and self.valid[c].any()]
        if not present:
            raise ValueError(f"pixood: no class has {MIN_ROWS} training rows and a valid prototype; use a larger bank")
        self.tested.zero_()
        self.tested[present] = True
        if self.requested is not None:
            self.check_labels(self.requested)
        lab = labels.cpu().numpy()
        own_logit = logits.gather(1, labels[:, None])[:, 0].double().cpu().numpy()
        own_sim = np.zeros(len(x))
        for c in present:
            m = labels == c
            own_sim[lab == c] = (1.0 / (1.0 + SIM_SLOPE * self.distances(x[m].float(), [c])[:, 0])).double().cpu().numpy()
        l_all = logits.double().cpu().numpy()
        stats = neyman_pearson(own_logit, own_sim, lab, present, float(l_all.max()), self.settings["grid"],
                               self.settings["cdf_knots"])
        self.alt_cov.copy_(torch.from_numpy(stats["alt_cov"]))
        width = max(len(kx) for kx, _ in stats["cdf"].values())
        kx = torch.full((self.num_classes, width), float("inf"), dtype=torch.float64)
        ky = torch.zeros((self.num_classes, width), dtype=torch.float64)
        for c, (xs, ys) in stats["cdf"].items():
            kx[c, :len(xs)], ky[c, :len(ys)], ky[c, len(ys):] = torch.from_numpy(xs), torch.from_numpy(ys), ys[-1]
            self.class_mean[c] = torch.from_numpy(stats["mean"][c])
            self.class_cov[c] = torch.from_numpy(stats["cov"][c])
        self.knots_x = kx.to(self.prototypes.device)
        self.knots_y = ky.to(self.prototypes.device)


def condensation_temperature(epoch: int, epochs: int) -> float:
    """The softmax temperature of an epoch: 0.5 -> 2 on a half cosine (grood.py temperature_scheduler)."""
    return 0.5 + (2.0 - 0.5) * 0.5 * (1.0 - math.cos(math.pi * epoch / epochs))


class Condensation(torch.nn.Module):
    """The trainable state of the condensation on WHITENED rows: prototypes mu (C, K, D), tau logits theta (C, K),
    and the running soft-assignment counts / class batch sizes that decide validity and resets (module docstring;
    kmeans.py DiffKMeansMultiClassv2 forward, update_stats, reset_clusters, mu_valid)."""

    def __init__(self, mu: torch.Tensor, init_tau: float = 10.0):
        super().__init__()
        c, k, _ = mu.shape
        self.mu = torch.nn.Parameter(mu.clone())
        self.theta = torch.nn.Parameter(torch.full((c, k), -TAU_SIG * math.log((1 - init_tau / TAU_MAX) / (init_tau / TAU_MAX)),
                                                   device=mu.device, dtype=mu.dtype))
        self.register_buffer("assign", torch.ones(c, k, device=mu.device, dtype=mu.dtype))
        self.register_buffer("batch", torch.ones(c, device=mu.device, dtype=mu.dtype))
        self.t = [0] * c

    def threshold(self) -> torch.Tensor:
        return RESET_SHARE * self.batch / self.mu.shape[1]

    def valid(self) -> torch.Tensor:
        return self.assign > self.threshold()[:, None]

    def tau(self) -> torch.Tensor:
        return torch.sigmoid(self.theta / TAU_SIG) * TAU_MAX + 1.0 / TAU_MAX

    def loss(self, white: torch.Tensor, labels: torch.Tensor, temp: float) -> torch.Tensor:
        """The batch's loss sum_c mean_i [-sum_k r log p]; the running statistics are updated first (as the release
        does, with the validity of the previous state masking the similarities)."""
        k, dim = self.mu.shape[1], self.mu.shape[2]
        valid, tau = self.valid(), self.tau()
        c_n = self.mu.shape[0]
        # one distance matrix to every prototype of every class, as the release computes it (kmeans.py sim_fnc): the
        # same operation gives the same rounding (rows that coincide with a prototype have a rounding-level distance
        # whose gradient direction depends on it)
        dist = -torch.cdist(white[None], self.mu.reshape(c_n * k, dim)[None])[0] * (100.0 / math.sqrt(dim))
        dist = dist.masked_fill(~valid.reshape(-1), -1e12).reshape(len(white), c_n, k)
        loss = white.new_zeros(())
        for c in labels.unique().tolist():
            xc = white[labels == c]
            sim = dist[labels == c, c]
            r = torch.softmax(temp * sim, 1)
            with torch.no_grad():
                self.t[c] += 1
                # the release computes this rate in float32 (torch.pow of a float and a long tensor)
                q = DECAY / (1 - torch.pow(1 - DECAY, torch.tensor(self.t[c])))
                self.assign[c] = (1 - q) * self.assign[c] + q * r.sum(0)
                self.batch[c] = (1 - q) * self.batch[c] + q * len(xc)
            loss = loss - ((sim / tau[c] - tau[c].log()) * r).sum(1).mean()
        return loss

    @torch.no_grad()
    def reset(self, white: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator) -> None:
        """Prototypes under the threshold restart at random rows of their class in the batch."""
        dim, thr = self.mu.shape[2], self.threshold()
        for c in labels.unique().tolist():
            dead = (self.assign[c] < thr[c]).nonzero().flatten()
            if len(dead):
                pool = white[labels == c]
                pick = torch.from_numpy(rng.choice(len(pool), len(dead))).to(white.device)
                self.mu[c, dead] = pool[pick] + (1e-6 / math.sqrt(dim)) * torch.rand(len(dead), dim, device=white.device,
                                                                                    dtype=white.dtype)
                self.assign[c, dead] = 1.1 * thr[c]


def _log_gauss(pts: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """log N(pts; mean, cov) of 2-D points (n, 2), float64."""
    d = pts - mean.to(pts)
    cov = cov.to(pts)
    det = cov[0, 0] * cov[1, 1] - cov[0, 1] * cov[1, 0]
    inv = torch.stack([torch.stack([cov[1, 1], -cov[0, 1]]), torch.stack([-cov[1, 0], cov[0, 0]])]) / det
    maha = (d @ inv * d).sum(-1)
    return -math.log(2 * math.pi) - 0.5 * torch.log(det) - 0.5 * maha


def _interp(r: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The piecewise-linear CDF through (0, 0), (xs, ys) (xs padded with inf), flat beyond the last knot."""
    xs = torch.cat([xs.new_zeros(1), xs])
    ys = torch.cat([ys.new_zeros(1), ys])
    i = torch.searchsorted(xs, r.contiguous(), right=True).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    t = torch.where(torch.isfinite(x1), (r - x0) / (x1 - x0), torch.zeros_like(r))
    return torch.where(r >= xs[-1], ys[-1], y0 + t.clamp(0, 1) * (y1 - y0))


def neyman_pearson(own_logit: np.ndarray, own_sim: np.ndarray, labels: np.ndarray, classes: list[int],
                   logit_max: float, grid: int, knots: int, alt_cov: np.ndarray | None = None) -> dict:
    """The Neyman-Pearson stage on float64 arrays: per class c the mean / covariance of (l_c, s_c) over rows of
    c, the shared alternative covariance (``alt_cov``, default its expectation), and the CDF knots (xs, ys) of F_c
    (thinned to ``knots`` points evenly spaced in value; 0 keeps all)."""
    from scipy.stats import multivariate_normal

    q_l = [np.quantile(own_logit[labels == c], 0.9) for c in classes]
    q_s = [np.quantile(own_sim[labels == c], 0.9) for c in classes]
    alt = np.diag([(np.mean(q_l) / 4.0) ** 2, (np.mean(q_s) / 8.0) ** 2]) if alt_cov is None else np.asarray(alt_cov)
    ls, ss = np.meshgrid(np.linspace(-logit_max - 5, logit_max + 5, num=grid), np.linspace(0.0, 1.0, num=grid))
    pts = np.stack([ls, ss], -1).reshape(-1, 2)
    p_alt = multivariate_normal.pdf(pts, mean=np.zeros(2), cov=alt, allow_singular=True)
    out = {"alt_cov": alt, "mean": {}, "cov": {}, "cdf": {}}
    for c in classes:
        pts_c = np.stack([own_logit[labels == c], own_sim[labels == c]], 1)
        out["mean"][c], out["cov"][c] = pts_c.mean(0), np.cov(pts_c.T)
        p_c = multivariate_normal.pdf(pts, mean=out["mean"][c], cov=out["cov"][c], allow_singular=True)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = p_c / p_alt
        out["cdf"][c] = np_cdf(p_c, ratio, knots)
    return out


def np_cdf(p_c: np.ndarray, ratio: np.ndarray, knots: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds and cumulative masses of the Neyman-Pearson CDF: sort the ratio; at each adjacent pair of
    different values the threshold is the midpoint and the mass grows by p_c of the upper point; / sum p_c."""
    order = np.argsort(ratio)
    r, p = ratio[order], p_c[order]
    change = r[1:] != r[:-1]
    with np.errstate(over="ignore", invalid="ignore"):
        xs = (0.5 * (r[1:] + r[:-1]))[change]
    ys = np.cumsum(p[1:][change]) / np.sum(p_c)
    # grid points where both densities underflow (ratio nan) or only p_alt does (inf) give no finite threshold; the
    # release's interp1d stays flat beyond its last finite one, as this does without them
    finite = np.isfinite(xs)
    xs, ys = xs[finite], ys[finite]
    if not len(xs):  # one ratio value over the whole grid: no threshold, F = 0 everywhere (never an inlier)
        return np.array([np.inf]), np.array([0.0])
    if knots and len(xs) > knots:
        keep = np.unique(np.append(np.searchsorted(ys, np.linspace(0.0, ys[-1], knots)).clip(0, len(ys) - 1),
                                   len(ys) - 1))
        xs, ys = xs[keep], ys[keep]
    return xs, ys
