"""Heads on synthetic banks with known structure."""

import json

import numpy as np
import pytest
import torch

from anomseg.bank import BankError, FeatureBank, MixedBatchSampler
from anomseg.bank.store import META, part_name, write_part
from anomseg.heads import build_head
from anomseg.heads.train import fit_statistical, train_head, train_opengan, validation_auroc
from anomseg.heads.io import load_head

D, K = 32, 4


def make_bank(root, rng, n_closed=4000, n_open=1000, parts=3, open_shift=4.0, feat_dim=D):
    """A bank of Gaussian classes (unit covariance) and open pixels shifted away from all of them."""
    means = rng.normal(0, 3, (K, feat_dim))
    open_mean = rng.normal(0, 3, feat_dim) + open_shift
    labels = rng.integers(0, K, n_closed)
    closed = means[labels] + rng.normal(size=(n_closed, feat_dim))
    opened = open_mean + rng.normal(size=(n_open, feat_dim))
    attrs = {"backbone": "synthetic", "feature_dim": feat_dim, "num_classes": K, "weights": "none", "stride": 1}
    cs, os_ = np.array_split(np.arange(n_closed), parts), np.array_split(np.arange(n_open), parts)
    root.mkdir(parents=True, exist_ok=True)
    for p in range(parts):
        rows = {}
        for kind, idx, feats, lab in (("closed", cs[p], closed, labels), ("open", os_[p], opened, None)):
            rows[kind] = {"features": feats[idx].astype(np.float16),
                          "labels": (lab[idx] if lab is not None else np.full(len(idx), -1)).astype(np.int16),
                          "image": np.full(len(idx), p, np.int32), "yx": np.zeros((len(idx), 2), np.int16)}
        write_part(root / part_name(p), rows, attrs)
    (root / META).write_text(json.dumps({**attrs, "parts": parts, "complete": True}))
    return FeatureBank(root)


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("banks")
    # the same class means for train and val: build both from one generator state
    state = rng.bit_generator.state
    train = make_bank(root / "train", rng)
    rng.bit_generator.state = state
    val = make_bank(root / "val", rng, n_closed=2000, n_open=500)
    return train, val


def test_published_parameter_counts_for_720_d():
    h = build_head("opengan_fea", 720)
    # D: 720*512+512 + 512*256+256 + 2*256 + 256*128+128 + 2*128 + 128*64+64 + 2*64 + 64*1+1
    assert sum(p.numel() for p in h.discriminator.parameters()) == 542593
    # G: 64*512+512 + 2*512 + 512*256+256 + 2*256 + 256*128+128 + 2*128 + 128*256+256 + 2*256 + 256*720+720
    assert sum(p.numel() for p in h.generator.parameters()) == 417872
    assert build_head("cls_fea", 720).generator is None
    assert build_head("opengan0_fea", 720).lambda_o == 0.0
    convs = [m.weight for m in h.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m.weight for m in h.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert abs(torch.cat([w.flatten() for w in convs]).std().item() - 0.02) < 0.002
    assert abs(torch.cat(bns).mean().item() - 1.0) < 0.01
    with pytest.raises(ValueError, match="fixes lambda_o"):
        build_head("opengan0_fea", 720, lambda_o=1.0)


@pytest.mark.parametrize("name", ["cls_fea", "opengan_fea"])
def test_discriminators_separate_separable_open_features(banks, tmp_path, name):
    train, val = banks
    summary = train_head(name, {}, train, val, out=tmp_path / name, seed=0, progress=False,
                         train={"steps": 150, "eval_every": 50, "n_closed": 500, "n_open": 250, "n_fake": 250, "lr_d": 1e-3, "lr_g": 1e-3})
    assert summary["best_auroc"] > 0.99
    head, info = load_head(tmp_path / name / "best.pth")
    assert abs(validation_auroc(head, val) - info["val_auroc"]) < 1e-9
    scores = head.score_map(torch.randn(2, D, 5, 7), size=(10, 14))
    assert scores.shape == (2, 10, 14) and scores.dtype == torch.float32


@pytest.mark.parametrize("name,options", [("gaussian", {"num_classes": K}), ("gaussian", {"num_classes": K, "pca_dim": 16}),
                                          ("gmm", {"n_components": K}), ("knn", {"k": 5})])
def test_statistical_heads(banks, name, options):
    train, val = banks
    head = build_head(name, D, **options)
    fit_statistical(head, train, max_samples=3000)
    assert validation_auroc(head, val) > 0.99
    clone = build_head(name, D, **options)
    clone.load_state_dict(head.state_dict())
    x = torch.randn(5, D)
    torch.testing.assert_close(clone.score_rows(x), head.score_rows(x))


def test_gaussian_head_is_the_mahalanobis_distance(banks):
    train, _ = banks
    head = build_head("gaussian", D, num_classes=K)
    fit_statistical(head, train)
    x = np.concatenate([c["features"].astype(np.float64) for c in train.iter_chunks("closed")])
    y = np.concatenate([c["labels"] for c in train.iter_chunks("closed")]).astype(int)
    mu = np.stack([x[y == k].mean(0) for k in range(K)])
    cov = np.cov((x - mu[y]).T)
    prec = np.linalg.inv(cov)
    q = np.random.default_rng(1).normal(size=(6, D))
    ref = np.min([np.sqrt(np.einsum("nd,de,ne->n", q - m, prec, q - m)) for m in mu], axis=0)
    np.testing.assert_allclose(head.score_rows(torch.tensor(q, dtype=torch.float32)).numpy(), ref, rtol=1e-3)


def test_batch_composition(banks):
    train, _ = banks
    sampler = MixedBatchSampler(train, n_closed=500, n_open=250, seed=3)
    b = sampler.next()
    assert b["closed"].shape == (500, D) and b["open"].shape == (250, D)
    assert b["closed_labels"].min() >= 0 and b["closed_labels"].max() < K
    # the discriminator sees the real pixels (closed + open) and n_fake generated ones per step
    head = build_head("opengan_fea", D)
    seen = []
    head.discriminator.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[2]))  # (1, D, n, 1)
    train_opengan(head, sampler, train, out=train.root.parent / "comp", steps=1, eval_every=10, n_fake=250, progress=False)
    assert seen[:3] == [750, 250, 250]  # D step on real, on fake; G step on fake
    assert MixedBatchSampler(train, n_closed=10, n_open=0).next()["open"].shape == (0, D)


def test_loss_is_a_mean_over_pixels(banks):
    """At initialisation D's logits are near 0, so every BCE term is ln 2: loss_D = ln 2 (1 + lambda_G)."""
    from anomseg.heads.train import make_optimizers, opengan_step

    train, _ = banks
    torch.manual_seed(0)
    head = build_head("opengan_fea", D, lambda_g=0.5)
    opt_d, opt_g = make_optimizers(head)
    loss_d, loss_g = opengan_step(head, MixedBatchSampler(train, n_closed=400, n_open=200).next(), opt_d, opt_g, 200)
    assert abs(loss_d - np.log(2) * 1.5) < 0.05 and abs(loss_g - np.log(2)) < 0.05


def test_opengan_resumes_after_a_kill(banks, tmp_path):
    train, val = banks

    def run(out, crash_at=None):
        torch.manual_seed(0)
        head = build_head("opengan_fea", D)
        sampler = MixedBatchSampler(train, n_closed=200, n_open=100, seed=1)
        if crash_at is not None:
            calls = {"n": 0}
            original = sampler.next

            def crashing():
                calls["n"] += 1
                if calls["n"] == crash_at:
                    raise KeyboardInterrupt("killed")
                return original()
            sampler.next = crashing
        train_opengan(head, sampler, val, out=out, steps=30, eval_every=10, n_fake=100, progress=False)
        return head

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", crash_at=25)  # dies after the step-20 checkpoint
    resumed = run(tmp_path / "b")
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 3


def test_bank_mismatch_errors(banks, tmp_path):
    train, val = banks
    with pytest.raises(BankError, match="bank features are 32-d but the head expects 720-d"):
        train_opengan(build_head("opengan_fea", 720), MixedBatchSampler(train, n_closed=10, n_open=10), val,
                      out=tmp_path, steps=1, progress=False)
    empty = make_bank(tmp_path / "no_open", np.random.default_rng(2), n_open=0)
    with pytest.raises(BankError, match="no open pixels but the head needs"):
        MixedBatchSampler(empty, n_closed=10, n_open=5)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / META).write_text(json.dumps({"parts": 2, "complete": False, "feature_dim": D}))
    with pytest.raises(BankError, match=r"incomplete bank \(0 of 2 parts written\)"):
        FeatureBank(tmp_path / "half")


def test_gmm_em_matches_scikit_learn(banks):
    """The streaming EM against scikit-learn's GaussianMixture on the same rows and the same k-means
    initialisation (scikit-learn runs KMeans(n_init=1, random_state) on the rows itself)."""
    from sklearn.mixture import GaussianMixture

    train, _ = banks
    rows = train.sample("closed", 3000, np.random.default_rng(0), block=16)["features"].astype(np.float32)
    head = build_head("gmm", D, n_components=K, init_samples=len(rows))
    head.memory_budget = 64 * 1024  # many chunks: the streaming sums must not change the fit
    head.fit(torch.from_numpy(rows))
    assert head.fit_chunk_rows() < len(rows)
    ref = GaussianMixture(K, covariance_type="diag", random_state=0, reg_covar=1e-5).fit(rows.astype(np.float64))
    order = [int(np.argmin(((ref.means_ - m) ** 2).sum(1))) for m in head.means.double().numpy()]
    assert sorted(order) == list(range(K))
    np.testing.assert_allclose(head.means.numpy(), ref.means_[order], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(head.variances.numpy(), ref.covariances_[order], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(head.weights.numpy(), ref.weights_[order], rtol=1e-3)
    q = np.random.default_rng(2).normal(0, 3, (50, D))
    np.testing.assert_allclose(head.score_rows(torch.tensor(q, dtype=torch.float32)).numpy(), -ref.score_samples(q),
                               rtol=1e-4)


def test_memory_budget_bounds_the_chunks_at_720_d():
    """At D = 720 with 19 classes, one chunk of intermediates stays within the budget, and a small budget
    (many chunks) gives the same scores as one chunk; references: float64 numpy formulas."""
    rng = np.random.default_rng(0)
    d, c = 720, 19
    gauss = build_head("gaussian", d, num_classes=c)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    prec = a @ a.T + np.eye(d)
    gauss.means.copy_(torch.from_numpy(rng.normal(size=(c, d))))
    gauss.precision.copy_(torch.from_numpy(prec))
    gauss.present.fill_(True)
    gauss.fitted.fill_(True)
    gmm = build_head("gmm", d, n_components=16)
    gmm.means.copy_(torch.from_numpy(rng.normal(size=(16, d))))
    gmm.variances.copy_(torch.from_numpy(rng.uniform(0.5, 2, (16, d))))
    gmm.fitted.fill_(True)
    x = torch.from_numpy(rng.normal(size=(300, d)).astype(np.float32))
    xd = x.double().numpy()
    mu, p32 = gauss.means.double().numpy(), gauss.precision.double().numpy()
    ref_gauss = np.sqrt(np.min([np.einsum("nd,de,ne->n", xd - m, p32, xd - m) for m in mu], axis=0))
    var, mg, w = gmm.variances.double().numpy(), gmm.means.double().numpy(), gmm.weights.double().numpy()
    log_comp = -0.5 * (((xd[:, None] - mg[None]) ** 2 / var[None]).sum(-1) + np.log(var).sum(-1) + d * np.log(2 * np.pi))
    ref_gmm = -np.logaddexp.reduce(log_comp + np.log(w), axis=1)
    for head, ref in ((gauss, ref_gauss), (gmm, ref_gmm)):
        assert head.chunk_rows() * head.row_bytes() <= head.memory_budget
        whole = head.score_rows(x)
        head.memory_budget = 50 * head.row_bytes()  # 6 chunks
        np.testing.assert_allclose(head.score_rows(x).numpy(), whole.numpy(), rtol=1e-6)
        np.testing.assert_allclose(whole.numpy(), ref, rtol=1e-4)


# -- kNN: every closed row through faiss, checked against scikit-learn's exact neighbours ------------------

def _sklearn_kth(memory: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Independent reference: scikit-learn's brute-force k-th neighbour distance on L2-normalised rows."""
    from sklearn.neighbors import NearestNeighbors

    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(unit(memory.astype(np.float64)))
    return nn.kneighbors(unit(queries.astype(np.float64)))[0][:, -1]


@pytest.mark.parametrize("backend,index", [("faiss", "Flat"), ("faiss", "IVF8,Flat"), ("torch", None)])
def test_knn_equals_exact_neighbours(backend, index):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    memory, queries = rng.normal(size=(3000, D)).astype(np.float32), rng.normal(size=(200, D)).astype(np.float32)
    options = {"k": 7, "backend": backend, **({"index": index, "nprobe": 8} if index else {"max_samples": 3000})}
    head = build_head("knn", D, **options)
    head.memory_budget = 50 * head.row_bytes()  # several chunks
    head.fit(torch.from_numpy(memory))
    assert head.ntotal == 3000
    got = head.score_rows(torch.from_numpy(queries)).numpy()
    # IVF searched with nprobe = nlist visits every list: exact as well
    np.testing.assert_allclose(got, _sklearn_kth(memory, queries, 7), rtol=1e-4, atol=1e-5)


def test_knn_indexes_the_whole_bank_and_round_trips(banks, tmp_path):
    pytest.importorskip("faiss")
    from anomseg.heads.io import make_head, save_head

    train, val = banks
    head = make_head("knn", D, k=5)
    fit_statistical(head, train, max_samples=500)  # the sample trains the index; every row goes in
    assert head.ntotal == train.counts["closed"] == 4000
    assert validation_auroc(head, val) > 0.99
    bounded = make_head("knn", D, k=5, backend="torch", max_samples=300)
    fit_statistical(bounded, train, max_samples=500)
    assert bounded.ntotal == 300
    save_head(tmp_path / "knn.pth", head, {})
    loaded, _ = load_head(tmp_path / "knn.pth")  # weights_only load: the index is a uint8 tensor
    x = torch.randn(9, D)
    torch.testing.assert_close(loaded.score_rows(x), head.score_rows(x))
    # the full bank in memory, exact: the same k-th distances
    closed = np.concatenate([c["features"].astype(np.float32) for c in train.iter_chunks("closed")])
    np.testing.assert_allclose(head.score_rows(x).numpy(), _sklearn_kth(closed, x.numpy(), 5), rtol=1e-4, atol=1e-5)


def test_knn_auto_index_goes_to_inverted_lists_beyond_flat_max_rows():
    head = build_head("knn", D)
    assert head.resolve_index(150_000, 100_000) == "Flat"
    assert head.resolve_index(1_000_000, 100_000) == "IVF1024,SQ8"
    assert head.resolve_index(1_000_000, 19_000) == "IVF256,SQ8"  # >= 39 training rows per list: 39 * 512 > 19000
    assert build_head("knn", D, index="IVF64,SQ8").resolve_index(10, 10) == "IVF64,SQ8"


def test_knn_without_faiss_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)
    head = build_head("knn", D)
    with pytest.raises(ImportError, match="pip install faiss-cpu.*backend: torch"):
        head.fit(torch.randn(50, D))
    build_head("knn", D, backend="torch").fit(torch.randn(50, D))  # no faiss needed
