"""Statistical heads fitted on the bank's closed pixels: Gaussian (Mahalanobis), GMM, kNN.

All are ``nn.Module``s whose fitted statistics are buffers, so they save and load like any
weights, fit and score on the device they sit on, and keep every intermediate under the head's
``memory_budget`` (rows are processed in chunks whose size follows from it; see
:class:`~anomseg.heads.base.Head`). Options of the statistical pipeline: L2 normalisation of
features, PCA to ``pca_dim`` dimensions (fitted on a bounded sample).

* ``gaussian``: class-conditional means with one shared covariance (Lee et al., NeurIPS 2018);
  score = min over classes of the Mahalanobis distance. Fitted streaming in two passes; scored
  in whitened coordinates (y = z L with L L^T = precision), so one row costs O(D + C), not O(C D).
* ``gmm``: a Gaussian mixture with diagonal covariances, fitted by EM streaming over the sample in
  chunks (k-means initialisation on a bounded subsample, as scikit-learn's default);
  score = -log likelihood, again without a (rows, components, D) intermediate.
* ``knn``: distance to the k-th nearest closed feature (Sun et al., ICML 2022, with L2 normalisation
  by default): every closed row of the bank in a faiss index (exact or inverted lists), or brute
  force in torch on a bounded sample.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
import torch

from anomseg.heads.base import Head
from anomseg.options import NonEmpty, NonNegative, Positive, PositiveInt


class _Projected(Head):
    """L2 normalisation and optional PCA in front of a statistical model."""

    def __init__(self, feat_dim: int, l2_normalize: bool, pca_dim: int | None):
        super().__init__()
        self.feat_dim, self.l2_normalize, self.pca_dim = feat_dim, l2_normalize, pca_dim
        out = pca_dim or feat_dim
        self.register_buffer("pca_mean", torch.zeros(feat_dim))
        self.register_buffer("pca_basis", torch.eye(feat_dim)[:, :out].clone())
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def dim(self) -> int:
        return self.pca_dim or self.feat_dim

    def project(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.pca_mean.device, torch.float32)
        if self.l2_normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        if self.pca_dim:
            x = (x - self.pca_mean) @ self.pca_basis
        return x

    def fit_pca(self, sample: torch.Tensor) -> None:
        if not self.pca_dim:
            return
        sample = sample.to(self.pca_mean.device, torch.float32)
        if self.l2_normalize:
            sample = torch.nn.functional.normalize(sample, dim=1)
        mean = sample.double().mean(0)
        _, _, vh = torch.linalg.svd(sample.double() - mean, full_matrices=False)
        self.pca_mean.copy_(mean.float())
        self.pca_basis.copy_(vh[: self.pca_dim].T.float())

    def _check_fitted(self):
        if not bool(self.fitted):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(bank) first")

    def fit_chunk_rows(self) -> int:
        """Rows per chunk while fitting: input, projection and float64 copies of a row under the budget."""
        return max(1, int(self.memory_budget // (4 * self.feat_dim + 24 * self.dim)))

    def _chunks(self, x: torch.Tensor):
        step = self.fit_chunk_rows()
        for i in range(0, len(x), step):
            yield self.project(x[i:i + step])


class GaussianHead(_Projected):
    """Class-conditional Gaussians with a shared covariance; score = min_c Mahalanobis distance."""

    def __init__(self, feat_dim: int, num_classes: PositiveInt, l2_normalize: bool = False,
                 pca_dim: PositiveInt | None = None, shrinkage: NonNegative = 1e-6):
        super().__init__(feat_dim, l2_normalize, pca_dim)
        d = pca_dim or feat_dim
        self.num_classes, self.shrinkage = num_classes, shrinkage
        self.register_buffer("means", torch.zeros(num_classes, d))
        self.register_buffer("precision", torch.eye(d))
        self.register_buffer("present", torch.zeros(num_classes, dtype=torch.bool))
        self._whitened = None  # (L, nu, |nu|^2) cached from the buffers

    def fit(self, chunks_factory, pca_sample: torch.Tensor | None = None) -> "GaussianHead":
        """Fit from ``chunks_factory()``, an iterable of (features float (n, D), labels (n,)); called twice.

        Chunks are re-split to :meth:`fit_chunk_rows` rows; sums are float64 on the head's device."""
        if self.pca_dim:
            self.fit_pca(pca_sample)
        dev, d, step = self.means.device, self.dim, self.fit_chunk_rows()

        def rows():
            for x, y in chunks_factory():
                for i in range(0, len(x), step):
                    yield self.project(x[i:i + step]).double(), y[i:i + step].to(dev, torch.int64)

        count = torch.zeros(self.num_classes, dtype=torch.float64, device=dev)
        total = torch.zeros(self.num_classes, d, dtype=torch.float64, device=dev)
        for z, y in rows():
            count += torch.bincount(y, minlength=self.num_classes).double()
            total.index_add_(0, y, z)
        means = total / count.clamp(min=1)[:, None]
        scatter, n = torch.zeros(d, d, dtype=torch.float64, device=dev), 0.0
        for z, y in rows():
            r = z - means[y]
            scatter += r.T @ r
            n += len(y)
        cov = scatter / max(n - 1, 1.0)
        cov += self.shrinkage * torch.eye(d, dtype=torch.float64, device=dev) * max(float(cov.diagonal().mean()), 1e-12)
        self.means.copy_(means.float())
        self.precision.copy_(torch.linalg.inv(cov).float())
        self.present.copy_(count > 0)
        self.fitted.fill_(True)
        self._whitened = None
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self._whitened = None
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):  # .to(device) etc.: the cache follows the buffers
        self._whitened = None
        return super()._apply(fn, *args, **kwargs)

    def whitening(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float64 L (d, d) with L L^T = precision, the whitened class means nu = mu L (C', d) of the
        classes present, and |nu|^2 (C',)."""
        if self._whitened is None:
            p = self.precision.double()
            p = (p + p.T) / 2
            chol, bad = torch.linalg.cholesky_ex(p)
            if int(bad):  # float32 rounding left it not quite positive definite
                w, v = torch.linalg.eigh(p)
                chol = v * w.clamp(min=0).sqrt()
            nu = self.means[self.present].double() @ chol
            self._whitened = (chol, nu, (nu * nu).sum(1))
        return self._whitened

    def row_bytes(self) -> int:
        return 4 * self.feat_dim + 24 * self.dim + 16 * self.num_classes

    def _score_chunk(self, x):
        self._check_fitted()
        chol, nu, nu2 = self.whitening()
        y = self.project(x).double() @ chol
        # |y - nu_c|^2 = |y|^2 - 2 y.nu_c + |nu_c|^2 in float64: (n, C') without an (n, C, d) difference
        m = (y * y).sum(1, keepdim=True) - 2 * (y @ nu.T) + nu2[None]
        return m.amin(1).clamp(min=0).sqrt().float()


class GMMHead(_Projected):
    """A diagonal Gaussian mixture on a bounded sample of closed features; score = -log likelihood.

    EM runs on the head's device in chunks of :meth:`fit_chunk_rows` rows (float64 sufficient
    statistics), initialised from k-means on at most ``init_samples`` rows; ``reg_covar`` is added to
    every variance, and EM stops when the mean log-likelihood gains less than ``tol`` (scikit-learn's
    defaults: 1e-6, 1e-3, 100 iterations).
    """

    def __init__(self, feat_dim: int, n_components: PositiveInt = 16, covariance: Literal["diag"] = "diag",
                 l2_normalize: bool = False, pca_dim: PositiveInt | None = None, seed: int = 0,
                 max_iter: PositiveInt = 100, tol: Positive = 1e-3, reg_covar: NonNegative = 1e-5,
                 init_samples: PositiveInt = 20000):
        super().__init__(feat_dim, l2_normalize, pca_dim)
        if covariance != "diag":
            raise ValueError("only covariance='diag' is supported (full covariances at D = 720 do not fit streaming)")
        d = pca_dim or feat_dim
        self.n_components, self.seed = n_components, seed
        self.max_iter, self.tol, self.reg_covar, self.init_samples = max_iter, tol, reg_covar, init_samples
        self.register_buffer("weights", torch.ones(n_components) / n_components)
        self.register_buffer("means", torch.zeros(n_components, d))
        self.register_buffer("variances", torch.ones(n_components, d))

    def _log_joint(self, z: torch.Tensor, weights, means, variances) -> torch.Tensor:
        """log w_k + log N(z | mu_k, diag var_k) for rows z float64 (n, d) -> (n, K), by matrix products."""
        prec = 1.0 / variances
        quad = (z * z) @ prec.T - 2 * z @ (means * prec).T + (means * means * prec).sum(1)[None]
        const = variances.log().sum(1) + z.shape[1] * math.log(2 * math.pi)
        return -0.5 * (quad + const[None]) + weights.log()[None]

    def _m_step(self, z_chunks, resp_fn):
        """Sufficient statistics over all chunks -> (weights, means, variances), float64."""
        k, d, dev = self.n_components, self.dim, self.means.device
        nk = torch.zeros(k, dtype=torch.float64, device=dev)
        sx = torch.zeros(k, d, dtype=torch.float64, device=dev)
        sxx = torch.zeros(k, d, dtype=torch.float64, device=dev)
        ll, n = 0.0, 0
        for z in z_chunks():
            resp, chunk_ll = resp_fn(z)
            nk += resp.sum(0)
            sx += resp.T @ z
            sxx += resp.T @ (z * z)
            ll, n = ll + chunk_ll, n + len(z)
        nk = nk + 10 * torch.finfo(torch.float64).eps
        means = sx / nk[:, None]
        variances = (sxx / nk[:, None] - means * means).clamp(min=0) + self.reg_covar
        return nk / nk.sum(), means, variances, ll / max(n, 1)

    def fit(self, sample: torch.Tensor) -> "GMMHead":
        from sklearn.cluster import KMeans

        sample = sample.to(self.means.device)
        self.fit_pca(sample)
        z_chunks = lambda: (z.double() for z in self._chunks(sample))  # noqa: E731
        rng = np.random.default_rng(self.seed)
        sub = rng.choice(len(sample), size=min(len(sample), self.init_samples), replace=False)
        init = self.project(sample[torch.from_numpy(np.sort(sub)).to(sample.device)]).cpu().numpy()
        centers = KMeans(self.n_components, n_init=1, random_state=self.seed).fit(init).cluster_centers_
        centers = torch.from_numpy(centers).to(self.means.device, torch.float64)

        def hard(z):  # initial responsibilities: each row to its nearest k-means centre
            lab = torch.cdist(z, centers).argmin(1)
            return torch.nn.functional.one_hot(lab, self.n_components).double(), 0.0

        weights, means, variances, _ = self._m_step(z_chunks, hard)
        previous = -math.inf
        for _ in range(self.max_iter):
            def soft(z, w=weights, m=means, v=variances):
                lj = self._log_joint(z, w, m, v)
                norm = torch.logsumexp(lj, dim=1, keepdim=True)
                return (lj - norm).exp(), float(norm.sum())
            new = self._m_step(z_chunks, soft)
            ll = new[3]  # mean log-likelihood under the parameters before this M-step
            weights, means, variances = new[:3]
            if abs(ll - previous) < self.tol:
                break
            previous = ll
        self.weights.copy_(weights.float())
        self.means.copy_(means.float())
        self.variances.copy_(variances.float())
        self.fitted.fill_(True)
        return self

    def row_bytes(self) -> int:
        return 4 * self.feat_dim + 32 * self.dim + 24 * self.n_components

    def _score_chunk(self, x):
        self._check_fitted()
        lj = self._log_joint(self.project(x).double(), self.weights.double(), self.means.double(),
                             self.variances.double())
        return -torch.logsumexp(lj, dim=1).float()


class KNNHead(_Projected):
    """Distance to the k-th nearest closed feature (Sun et al., ICML 2022; L2 normalisation by default).

    Two backends, chosen by ``backend``:

    * ``"faiss"`` (default): every closed row of the bank goes into a faiss index, streamed chunk by
      chunk (the bank is never held in memory as float32 besides the index itself). ``index`` is a
      faiss factory string (``"Flat"``: exact; ``"IVF1024,Flat"``: inverted lists searched with
      ``nprobe`` lists; ``"IVF1024,SQ8"``: 8-bit codes, a quarter of the memory) or ``"auto"``:
      ``"Flat"`` up to ``flat_max_rows`` rows, beyond that ``"IVF<nlist>,SQ8"`` with nlist the power of
      two nearest sqrt(rows) (at least 39 training rows per list, faiss's own floor). Measured on
      200,000 x 720 clustered rows, 10,000 queries, nlist 512, nprobe 16 (tools/bench/bench_knn.py's data):
      mean relative error of the k-th distance 0.0015 (Flat lists) / 0.0017 (SQ8), 1,200 / 2,000
      queries/s on 2 cores, against 0.025 at nprobe 4. Inverted lists
      are trained on the bounded sample the trainer passes. On a CUDA head with a GPU build of faiss
      the index is searched on the GPU; with faiss-cpu it is searched on the host and the scores moved
      to the head's device. The index is saved in the head's state (faiss's own serialisation, a
      uint8 tensor; no pickle).
    * ``"torch"``: exact brute force against a bounded sample of ``max_samples`` rows kept as a
      buffer (the toolkit's first kNN; needs no faiss; ``max_samples`` defaults to 50,000).

    Scores are Euclidean distances (faiss returns squared ones; the root is taken), float32 (n,).
    """

    memory_block = 8192  # torch backend: memory rows compared at once
    flat_max_rows = 200_000

    def __init__(self, feat_dim: int, k: PositiveInt = 10, backend: Literal["faiss", "torch"] = "faiss",
                 index: Annotated[str, NonEmpty()] = "auto", nprobe: PositiveInt = 16,
                 max_samples: PositiveInt | None = None, l2_normalize: bool = True, pca_dim: PositiveInt | None = None):
        super().__init__(feat_dim, l2_normalize, pca_dim)
        if backend not in ("faiss", "torch"):
            raise ValueError(f"backend must be 'faiss' or 'torch', got {backend!r}")
        if k < 1 or nprobe < 1:
            raise ValueError(f"k and nprobe must be >= 1, got k={k}, nprobe={nprobe}")
        self.k, self.backend, self.index_spec, self.nprobe = k, backend, index, nprobe
        self.max_samples = max_samples if max_samples is not None else (None if backend == "faiss" else 50000)
        self.register_buffer("memory", torch.zeros(0, pca_dim or feat_dim))
        self._index = None  # faiss index on the host (faiss backend)
        self._search = None  # the index searched: the host one, or its GPU copy

    # -- fitting -------------------------------------------------------------------------------------

    def fit(self, chunks_factory, sample: torch.Tensor | None = None, rows: int | None = None) -> "KNNHead":
        """Fit on closed features.

        ``chunks_factory()`` yields float (n, D) tensors (or (features, labels) pairs) covering every
        row to index; ``sample`` float (m, D) is the bounded sample for PCA and for training inverted
        lists (and the memory of the torch backend); ``rows`` the number of rows the chunks hold (for
        ``index="auto"``). A plain tensor may be passed instead of ``chunks_factory``."""
        if isinstance(chunks_factory, torch.Tensor):
            data = chunks_factory
            chunks_factory, sample, rows = (lambda: iter([data])), (data if sample is None else sample), len(data)
        if sample is None:
            raise ValueError("KNNHead.fit needs a sample for PCA / index training")
        sample = sample.to(self.pca_mean.device)
        self.fit_pca(sample)
        if self.backend == "torch":
            kept = sample[: self.max_samples]
            self.memory = torch.cat(list(self._chunks(kept))).contiguous()
            if len(self.memory) < self.k:
                raise ValueError(f"kNN with k={self.k} needs at least {self.k} samples, got {len(self.memory)}")
            self.fitted.fill_(True)
            return self
        faiss = _faiss()
        spec = self.resolve_index(rows if rows is not None else len(sample), len(sample))
        index = faiss.index_factory(self.dim, spec, faiss.METRIC_L2)
        if not index.is_trained:
            index.train(_host(torch.cat(list(self._chunks(sample)))))
        added, cap = 0, self.max_samples
        for chunk in chunks_factory():
            x = chunk[0] if isinstance(chunk, (tuple, list)) else chunk
            if cap is not None:
                x = x[: max(0, cap - added)]
            for z in self._chunks(x):
                index.add(_host(z))
            added += len(x)
        if index.ntotal < self.k:
            raise ValueError(f"kNN with k={self.k} needs at least {self.k} rows, got {index.ntotal}")
        self._set_index(index)
        self.fitted.fill_(True)
        return self

    def resolve_index(self, rows: int, sample_rows: int) -> str:
        """The faiss factory string used for ``rows`` indexed rows and ``sample_rows`` training rows."""
        if self.index_spec != "auto":
            return self.index_spec
        if rows <= self.flat_max_rows:
            return "Flat"
        nlist = 2 ** round(math.log2(math.sqrt(rows)))
        while nlist > 16 and 39 * nlist > sample_rows:
            nlist //= 2
        return f"IVF{nlist},SQ8"

    @property
    def ntotal(self) -> int:
        """Rows the kNN searches."""
        return int(self._index.ntotal) if self._index is not None else len(self.memory)

    def _set_index(self, index) -> None:
        self._index, self._search = index, None
        self._set_nprobe(index)

    def _set_nprobe(self, index) -> None:
        ivf = _faiss().try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = self.nprobe

    def _searcher(self):
        if self._search is None:
            self._search = self._index
            faiss = _faiss()
            dev = self.pca_mean.device
            if dev.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
                self._gpu_resources = faiss.StandardGpuResources()
                self._search = faiss.index_cpu_to_gpu(self._gpu_resources, dev.index or 0, self._index)
                self._set_nprobe(self._search)
        return self._search

    # -- state: the faiss index travels as extra state (faiss's serialisation, uint8) ------------------

    def get_extra_state(self):
        if self._index is None:
            return torch.zeros(0, dtype=torch.uint8)
        return torch.from_numpy(_faiss().serialize_index(self._index))

    def set_extra_state(self, state):
        if isinstance(state, torch.Tensor) and state.numel():
            faiss = _faiss()
            try:
                index = faiss.deserialize_index(state.cpu().numpy())
            except Exception as exc:  # faiss's C++ reader: truncated or corrupted bytes
                first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"the kNN head's faiss index cannot be read ({first})") from None
            dim = self.pca_dim or self.feat_dim
            if index.d != dim or index.ntotal < self.k:
                raise ValueError(f"the kNN head's faiss index holds {index.ntotal} rows of {index.d}-d, the head needs "
                                 f">= k = {self.k} rows of {dim}-d")
            self._set_index(index)
        else:
            self._index, self._search = None, None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "memory"
        if key in state_dict:
            self.memory = torch.empty_like(state_dict[key], device=self.memory.device)
        state_dict.setdefault(prefix + "_extra_state", torch.zeros(0, dtype=torch.uint8))  # files before faiss
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, *args, **kwargs):  # a move drops the GPU copy; it is rebuilt on the next search
        self._search = None
        return super()._apply(fn, *args, **kwargs)

    # -- scoring -------------------------------------------------------------------------------------

    def row_bytes(self) -> int:
        if self.backend == "faiss":  # input, projection, its host copy, k distances and ids
            return 4 * self.feat_dim + 8 * self.dim + 12 * self.k
        # a row of distances to one memory block, its candidates, the projection
        return 4 * (2 * (self.memory_block + self.k) + self.feat_dim + self.dim)

    def _score_chunk(self, x):
        self._check_fitted()
        z = self.project(x)
        if self.backend == "faiss":
            if self._index is None:
                raise RuntimeError("KNNHead (faiss) has no index: fit it again (tools/train_head.py)")
            dist, _ = self._searcher().search(_host(z), self.k)
            kth = torch.from_numpy(dist[:, -1]).clamp(min=0).sqrt()
            return kth.to(z.device, non_blocking=True)
        best = None
        for i in range(0, len(self.memory), self.memory_block):
            d = torch.cdist(z, self.memory[i:i + self.memory_block])
            cand = d if best is None else torch.cat([best, d], 1)
            best = cand.topk(min(self.k, cand.shape[1]), dim=1, largest=False).values
        return best[:, -1]


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("the kNN head's faiss backend needs faiss: pip install faiss-cpu (or anomseg[knn]; "
                          "faiss-gpu for GPU indexes), or set the head option backend: torch") from None
    return faiss


def _host(z: torch.Tensor) -> np.ndarray:
    """float32 C-contiguous host array, as faiss takes."""
    return np.ascontiguousarray(z.detach().to("cpu", torch.float32).numpy())
