"""Each score against its formula, written independently with numpy / scipy."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax

from anomseg.scores import KLMatching, StandardizedMaxLogit, build_score, mc_dropout
from anomseg.scores import background, energy, entropy, gen, max_logit, msp


@pytest.fixture
def logits():
    z = np.array([[[[2.0, -1.0], [0.0, 5.0]], [[1.0, 3.0], [0.0, -2.0]], [[0.5, 0.0], [0.0, 1.0]]]])  # (1, 3, 2, 2)
    return z


def test_posthoc_formulas(logits):
    z = logits
    t = torch.tensor(z, dtype=torch.float32)
    p = softmax(z, axis=1)
    for fn, ref in [
        (msp, -p.max(1)),
        (max_logit, -z.max(1)),
        (entropy, -(p * np.log(p)).sum(1)),
        (energy, -logsumexp(z, axis=1)),
        (lambda x: energy(x, temperature=2.0), -2.0 * logsumexp(z / 2.0, axis=1)),
        (lambda x: background(x, index=0), p[:, 0]),
        (gen, (p ** 0.1 * (1 - p) ** 0.1).sum(1)),
        (lambda x: gen(x, gamma=0.5, top_m=2), (np.sort(p, axis=1)[:, 1:] ** 0.5 * (1 - np.sort(p, axis=1)[:, 1:]) ** 0.5).sum(1)),
    ]:
        out = fn(t)
        assert out.dtype == torch.float32 and out.shape == (1, 2, 2)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)
    # a tied pixel (all logits 0) is the most uncertain: highest entropy, MSP = -1/3
    assert entropy(t)[0, 1, 0] == entropy(t).max() and abs(msp(t)[0, 1, 0] + 1 / 3) < 1e-6


def random_logits(seed, n=3, k=4, h=5, w=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, h, w, generator=g) * 3, torch.randint(0, k, (n, h, w), generator=g)


def test_standardized_max_logit_formula_and_batching():
    z, sem = random_logits(0)
    sem[0, 0, :3] = 255
    one = StandardizedMaxLogit(4)
    one.update(z, sem)
    many = StandardizedMaxLogit(4)
    for i in range(3):
        many.update(z[i:i + 1], sem[i:i + 1])
    torch.testing.assert_close(one.count, many.count, rtol=0, atol=0)
    torch.testing.assert_close(one.sum, many.sum, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one.sumsq, many.sumsq, rtol=1e-12, atol=1e-12)
    # independent statistics: per predicted class, over non-ignore pixels
    zn, sn = z.numpy().astype(np.float64), sem.numpy()
    m, c = zn.max(1), zn.argmax(1)
    keep = sn != 255
    mean, std = np.zeros(4), np.ones(4)
    for k in range(4):
        v = m[keep & (c == k)]
        if len(v) > 1:
            mean[k], std[k] = v.mean(), v.std()
    np.testing.assert_allclose(one(z).numpy(), -(m - mean[c]) / std[c], rtol=1e-5, atol=1e-5)


def test_kl_matching_formula_and_batching():
    z, _ = random_logits(1)
    one, many = KLMatching(4), KLMatching(4)
    one.update(z)
    for i in range(3):
        many.update(z[i:i + 1])
    torch.testing.assert_close(one.templates(), many.templates(), rtol=1e-12, atol=1e-12)
    p = softmax(z.numpy().astype(np.float64), axis=1)
    c = p.argmax(1)
    d = np.stack([p.transpose(0, 2, 3, 1)[c == k].mean(0) if (c == k).any() else np.full(4, 0.25) for k in range(4)])
    kl = np.stack([(p * (np.log(p) - np.log(d[k])[None, :, None, None])).sum(1) for k in range(4)], 1)
    np.testing.assert_allclose(one(z).numpy(), kl.min(1), rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="not fitted"):
        KLMatching(4)(z)


def test_mc_dropout_and_registry():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 1)
            self.drop = torch.nn.Dropout2d(0.5)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            from anomseg.models import SegOutput
            f = self.drop(self.conv(x.float()))
            return SegOutput(self.bn(f), f)

    net = Net()
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    s = mc_dropout(net, x, passes=16)
    assert s.shape == (2, 8, 8) and net.training and net.bn.training  # modes restored
    assert (s > 0).all() and (s <= np.log(4) + 1e-6).all()
    assert build_score("energy", temperature=2.0)(torch.zeros(1, 3, 2, 2)).shape == (1, 2, 2)
    with pytest.raises(ValueError, match="unknown score"):
        build_score("odin")
