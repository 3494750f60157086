"""Statistical heads fitted on the bank's closed pixels: Gaussian (Mahalanobis), GMM, kNN.

All are ``nn.Module``s whose fitted statistics are buffers, so they save and load like any
weights. Options of the statistical pipeline: L2 normalisation of features, PCA to ``pca_dim``
dimensions (fitted on a bounded sample).

* ``gaussian``: class-conditional means with one shared covariance (Lee et al., NeurIPS 2018);
  score = min over classes of the Mahalanobis distance. Fitted streaming in two passes.
* ``gmm``: a Gaussian mixture (scikit-learn, diagonal covariances by default) on a bounded sample;
  score = -log likelihood.
* ``knn``: distance to the k-th nearest closed feature of a bounded sample (Sun et al., ICML 2022,
  with L2 normalisation by default).
"""

from __future__ import annotations

import numpy as np
import torch

from anomseg.heads.base import Head


class _Projected(Head):
    """L2 normalisation and optional PCA in front of a statistical model."""

    def __init__(self, feat_dim: int, l2_normalize: bool, pca_dim: int | None):
        super().__init__()
        self.feat_dim, self.l2_normalize, self.pca_dim = feat_dim, l2_normalize, pca_dim
        out = pca_dim or feat_dim
        self.register_buffer("pca_mean", torch.zeros(feat_dim))
        self.register_buffer("pca_basis", torch.eye(feat_dim)[:, :out].clone())
        self.register_buffer("fitted", torch.tensor(False))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.l2_normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        if self.pca_dim:
            x = (x - self.pca_mean) @ self.pca_basis
        return x

    def fit_pca(self, sample: torch.Tensor) -> None:
        if not self.pca_dim:
            return
        if self.l2_normalize:
            sample = torch.nn.functional.normalize(sample.float(), dim=1)
        mean = sample.double().mean(0)
        _, _, vh = torch.linalg.svd(sample.double() - mean, full_matrices=False)
        self.pca_mean.copy_(mean.float())
        self.pca_basis.copy_(vh[: self.pca_dim].T.float())

    def _check_fitted(self):
        if not bool(self.fitted):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(bank) first")


class GaussianHead(_Projected):
    """Class-conditional Gaussians with a shared covariance; score = min_c Mahalanobis distance."""

    def __init__(self, feat_dim: int, num_classes: int, l2_normalize: bool = False, pca_dim: int | None = None,
                 shrinkage: float = 1e-6):
        super().__init__(feat_dim, l2_normalize, pca_dim)
        d = pca_dim or feat_dim
        self.num_classes, self.shrinkage = num_classes, shrinkage
        self.register_buffer("means", torch.zeros(num_classes, d))
        self.register_buffer("precision", torch.eye(d))
        self.register_buffer("present", torch.zeros(num_classes, dtype=torch.bool))

    def fit(self, chunks_factory, pca_sample: torch.Tensor | None = None) -> "GaussianHead":
        """Fit from ``chunks_factory()``, an iterable of (features float (n, D), labels (n,)); called twice."""
        if self.pca_dim:
            self.fit_pca(pca_sample)
        d = self.means.shape[1]
        count = torch.zeros(self.num_classes, dtype=torch.float64)
        total = torch.zeros(self.num_classes, d, dtype=torch.float64)
        for x, y in chunks_factory():
            z = self.project(x).double()
            count += torch.bincount(y, minlength=self.num_classes).double()
            total.index_add_(0, y, z)
        means = total / count.clamp(min=1)[:, None]
        scatter, n = torch.zeros(d, d, dtype=torch.float64), 0.0
        for x, y in chunks_factory():
            r = self.project(x).double() - means[y]
            scatter += r.T @ r
            n += len(y)
        cov = scatter / max(n - 1, 1.0)
        cov += self.shrinkage * torch.eye(d, dtype=torch.float64) * max(float(cov.diagonal().mean()), 1e-12)
        self.means.copy_(means.float())
        self.precision.copy_(torch.linalg.inv(cov).float())
        self.present.copy_(count > 0)
        self.fitted.fill_(True)
        return self

    def score_rows(self, x):
        self._check_fitted()
        z = self.project(x)
        mu = self.means[self.present]
        diff = z[:, None, :] - mu[None]  # (n, C, d)
        m = torch.einsum("ncd,de,nce->nc", diff, self.precision, diff)
        return m.amin(1).clamp(min=0).sqrt()


class GMMHead(_Projected):
    """A Gaussian mixture on a bounded sample of closed features; score = -log likelihood."""

    def __init__(self, feat_dim: int, n_components: int = 16, covariance: str = "diag", l2_normalize: bool = False,
                 pca_dim: int | None = None, seed: int = 0):
        super().__init__(feat_dim, l2_normalize, pca_dim)
        if covariance != "diag":
            raise ValueError("only covariance='diag' is supported (full covariances at D = 720 do not fit streaming)")
        d = pca_dim or feat_dim
        self.n_components, self.seed = n_components, seed
        self.register_buffer("weights", torch.ones(n_components) / n_components)
        self.register_buffer("means", torch.zeros(n_components, d))
        self.register_buffer("variances", torch.ones(n_components, d))

    def fit(self, sample: torch.Tensor) -> "GMMHead":
        from sklearn.mixture import GaussianMixture

        self.fit_pca(sample)
        z = self.project(sample).double().numpy()
        gmm = GaussianMixture(self.n_components, covariance_type="diag", random_state=self.seed, reg_covar=1e-5).fit(z)
        self.weights.copy_(torch.from_numpy(gmm.weights_).float())
        self.means.copy_(torch.from_numpy(gmm.means_).float())
        self.variances.copy_(torch.from_numpy(gmm.covariances_).float())
        self.fitted.fill_(True)
        return self

    def score_rows(self, x):
        self._check_fitted()
        z = self.project(x).double()[:, None, :]
        var, mu = self.variances.double()[None], self.means.double()[None]
        log_comp = -0.5 * (((z - mu) ** 2 / var).sum(-1) + var.log().sum(-1) + z.shape[-1] * np.log(2 * np.pi))
        return -torch.logsumexp(log_comp + self.weights.double().log()[None], dim=1).float()


class KNNHead(_Projected):
    """Distance to the k-th nearest closed feature of a bounded sample."""

    def __init__(self, feat_dim: int, k: int = 10, max_samples: int = 50000, l2_normalize: bool = True,
                 pca_dim: int | None = None):
        super().__init__(feat_dim, l2_normalize, pca_dim)
        self.k, self.max_samples = k, max_samples
        self.register_buffer("memory", torch.zeros(0, pca_dim or feat_dim))

    def fit(self, sample: torch.Tensor) -> "KNNHead":
        self.fit_pca(sample)
        self.memory = self.project(sample[: self.max_samples]).contiguous()
        if len(self.memory) < self.k:
            raise ValueError(f"kNN with k={self.k} needs at least {self.k} samples, got {len(self.memory)}")
        self.fitted.fill_(True)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "memory"
        if key in state_dict:
            self.memory = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def score_rows(self, x):
        self._check_fitted()
        z = self.project(x)
        best = None
        for i in range(0, len(self.memory), 8192):  # chunks keep the distance matrix small
            d = torch.cdist(z, self.memory[i:i + 8192])
            cand = d if best is None else torch.cat([best, d], 1)
            best = cand.topk(min(self.k, cand.shape[1]), dim=1, largest=False).values
        return best[:, -1]
