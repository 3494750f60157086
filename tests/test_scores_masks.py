"""Mask-classification scores against numpy formulas written here from FORMATS.md, on random query outputs;
the bilinear upsampling (align_corners=False) written out from its definition."""

import numpy as np
import pytest
import torch

from anomseg.scores.masks import eam, max_aggregate, rba, semantic_aggregate, uno


def upsample(m, H, W):
    """Bilinear, align_corners=False: source coordinate (y + 0.5) * h / H - 0.5, clamped at the borders."""
    h, w = m.shape[-2:]
    def axis(n_out, n_in):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo
    y0, y1, fy = axis(H, h)
    x0, x1, fx = axis(W, w)
    top = m[..., y0, :][..., x0] * (1 - fx) + m[..., y0, :][..., x1] * fx
    bot = m[..., y1, :][..., x0] * (1 - fx) + m[..., y1, :][..., x1] * fx
    return top * (1 - fy)[:, None] + bot * fy[:, None]


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.fixture
def queries():
    rng = np.random.default_rng(0)
    N, Q, K, h, w = 2, 7, 5, 6, 8
    z = rng.normal(size=(N, Q, K + 1)) * 2
    m = rng.normal(size=(N, Q, h, w)) * 3
    return z, m, K, (12, 20)


def test_semantic_aggregate_in_detectron2_order(queries):
    z, m, K, (H, W) = queries
    mp = sigmoid(upsample(m, H, W))  # upsample the LOGITS, then sigmoid
    want = np.einsum("nqc,nqhw->nchw", softmax(z)[..., :K], mp)
    got = semantic_aggregate(torch.tensor(z), torch.tensor(m), (H, W))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # sigmoid before the upsampling is another number (the order matters)
    other = np.einsum("nqc,nqhw->nchw", softmax(z)[..., :K], upsample(sigmoid(m), H, W))
    assert np.abs(other - want).max() > 1e-3


def test_rba_eam_max_aggregate_against_their_formulas(queries):
    z, m, K, (H, W) = queries
    p, mp = softmax(z), sigmoid(upsample(m, H, W))
    S = np.einsum("nqc,nqhw->nchw", p[..., :K], mp)
    zt, mt = torch.tensor(z), torch.tensor(m)
    np.testing.assert_allclose(rba(zt, mt, (H, W)).numpy(), -np.tanh(S).sum(1), rtol=1e-5, atol=1e-5)
    eam_ref = 1 - np.einsum("nq,nqhw->nhw", p[..., :K].max(-1), mp)
    np.testing.assert_allclose(eam(zt, mt, (H, W)).numpy(), eam_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(max_aggregate(zt, mt, (H, W)).numpy(), 1 - S.max(1), rtol=1e-5, atol=1e-5)
    assert rba(zt, mt, (H, W)).dtype == torch.float32 and rba(zt, mt, (H, W)).shape == (2, H, W)


def test_uno_on_a_head_with_a_negative_class():
    rng = np.random.default_rng(1)
    N, Q, K, h, w, H, W = 1, 5, 4, 4, 4, 8, 8
    z = rng.normal(size=(N, Q, K + 2))
    m = rng.normal(size=(N, Q, h, w))
    p, mp = softmax(z), sigmoid(upsample(m, H, W))
    want = np.einsum("nq,nqhw->nhw", p[..., K] - p[..., :K].max(-1), mp)
    np.testing.assert_allclose(uno(torch.tensor(z), torch.tensor(m), (H, W)).numpy(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="uno needs K \\+ 2"):
        uno(torch.tensor(z), torch.tensor(m), (H, W), known=K - 1)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="must share N and Q"):
        rba(torch.zeros(1, 3, 4), torch.zeros(1, 2, 4, 4), (8, 8))
