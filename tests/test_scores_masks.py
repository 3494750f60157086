"""Mask-classification scores against numpy formulas written here from FORMATS.md, on random query outputs;
the bilinear upsampling (align_corners=False) written out from its definition."""

import numpy as np
import pytest
import torch

from anomseg.models.base import MaskQueries
from anomseg.scores.masks import eam, mask2anomaly, max_aggregate, rba, semantic_aggregate, uno


def Q(z, m, K, size):
    """Queries of an unpadded input of ``size`` (mask logits at 1/4)."""
    return MaskQueries(torch.tensor(z), torch.tensor(m), tuple(size), tuple(size), K)


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
    N, Qn, K, h, w = 2, 7, 5, 6, 8
    z = rng.normal(size=(N, Qn, K + 1)) * 2
    m = rng.normal(size=(N, Qn, h, w)) * 3
    return z, m, K, (24, 32)


def test_semantic_aggregate_in_detectron2_order(queries):
    z, m, K, (H, W) = queries
    mp = sigmoid(upsample(m, H, W))  # upsample the LOGITS, then sigmoid
    want = np.einsum("nqc,nqhw->nchw", softmax(z)[..., :K], mp)
    got = semantic_aggregate(Q(z, m, K, (H, W)), (H, W))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # sigmoid before the upsampling is another number (the order matters)
    other = np.einsum("nqc,nqhw->nchw", softmax(z)[..., :K], upsample(sigmoid(m), H, W))
    assert np.abs(other - want).max() > 1e-3


def test_rba_eam_max_aggregate_against_their_formulas(queries):
    z, m, K, (H, W) = queries
    p, mp = softmax(z), sigmoid(upsample(m, H, W))
    S = np.einsum("nqc,nqhw->nchw", p[..., :K], mp)
    q = Q(z, m, K, (H, W))
    np.testing.assert_allclose(rba(q, (H, W)).numpy(), -np.tanh(S).sum(1), rtol=1e-5, atol=1e-5)
    eam_ref = 1 - np.einsum("nq,nqhw->nhw", p[..., :K].max(-1), mp)
    np.testing.assert_allclose(eam(q, (H, W)).numpy(), eam_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(max_aggregate(q, (H, W)).numpy(), 1 - S.max(1), rtol=1e-5, atol=1e-5)
    assert rba(q, (H, W)).dtype == torch.float32 and rba(q, (H, W)).shape == (2, H, W)


def test_uno_on_a_head_with_a_negative_class():
    rng = np.random.default_rng(1)
    N, Qn, K, h, w, H, W = 1, 5, 4, 4, 4, 16, 16
    z = rng.normal(size=(N, Qn, K + 2))
    m = rng.normal(size=(N, Qn, h, w))
    p, mp = softmax(z), sigmoid(upsample(m, H, W))
    want = np.einsum("nq,nqhw->nhw", p[..., K] - p[..., :K].max(-1), mp)
    np.testing.assert_allclose(uno(Q(z, m, K, (H, W)), (H, W)).numpy(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="this score needs K \\+ 2"):
        uno(Q(z, m, K + 1, (H, W)), (H, W))
    with pytest.raises(ValueError, match="this score needs K \\+ 1"):
        rba(Q(z, m, K, (H, W)), (H, W))


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="must share N and Q"):
        rba(MaskQueries(torch.zeros(1, 3, 4), torch.zeros(1, 2, 4, 4), (16, 16), (16, 16), 3), (8, 8))


def test_padded_queries_upsample_to_the_padded_input_then_crop_then_resize():
    """detectron2 sem_seg_postprocess: logits upsampled to the padded input, cropped to the image, resized."""
    rng = np.random.default_rng(2)
    K, Qn, (h, w), (H, W), (Hp, Wp), out = 3, 4, (8, 12), (27, 40), (32, 48), (14, 20)
    z, m = rng.normal(size=(1, Qn, K + 1)), rng.normal(size=(1, Qn, h, w)) * 2
    q = MaskQueries(torch.tensor(z), torch.tensor(m), (H, W), (Hp, Wp), K)
    logits = upsample(upsample(m, Hp, Wp)[..., :H, :W], *out)
    S = np.einsum("nqc,nqhw->nchw", softmax(z)[..., :K], sigmoid(logits))
    np.testing.assert_allclose(rba(q, out).numpy(), -np.tanh(S).sum(1), rtol=1e-5, atol=1e-5)
    cropped_first = upsample(m[..., :7, :10], *out)  # cropping the 1/4 logits is another number
    assert np.abs(cropped_first - logits).max() > 1e-3


def m2a_reference(z, m, K, H, W, confidence=0.95, classes=range(2, 11)):
    """Mask2Anomaly as its release computes it (FORMATS.md; maskformer_model.py semantic_inference +
    anomaly_utils/anomaly_inference.py), one image, written with loops."""
    p, mp = softmax(z), sigmoid(upsample(m, H, W))
    channels = [np.einsum("qc,qhw->chw", p[:, :K], mp)]
    extra = [p[q].max() * mp[q] for q in range(len(z))
             if p[q].argmax() != K and p[q].max() > confidence and p[q].argmax() in classes]
    allc = np.concatenate(channels + [np.stack(extra)] if extra else channels)
    score = 1 - allc.max(0)
    if len(extra) > 1:
        score = np.where(np.stack(extra).max(0) >= 0.5, 0.0, score)
    return score


@pytest.mark.parametrize("confident", [0, 1, 3])
def test_mask2anomaly_refinement_against_the_release_arithmetic(confident):
    rng = np.random.default_rng(10 + confident)
    K, Qn, h, w, H, W = 12, 6, 5, 6, 20, 24
    z = rng.normal(size=(1, Qn, K + 1))
    for q in range(confident):  # confident queries of classes 2..10 (and one of class 11: not refining)
        z[0, q, 3 + q] = 9.0
    z[0, Qn - 1, 11] = 9.0
    m = rng.normal(size=(1, Qn, h, w)) * 3
    want = m2a_reference(z[0], m[0], K, H, W)
    got = mask2anomaly(Q(z, m, K, (H, W)), (H, W))
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-5, atol=1e-6)
    if confident > 1:
        assert (got == 0).any()
