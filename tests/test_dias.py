"""DIAS-fea: its losses against their formulas, its start from the segmenter's classifier, training."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anomseg.config import ConfigError
from anomseg.heads import build_head
from anomseg.heads.dias import smooth_ce
from anomseg.heads.io import load_head
from anomseg.heads.train import train_head, validation_auroc
from tests.test_heads import D, K, make_bank


def test_smooth_ce_is_the_cross_entropy_to_the_smoothed_target():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(6, 4)), rng.integers(0, 4, 6)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    for alpha in (0.0, 0.5, 1.0):
        target = np.eye(4)[labels] * (1 - alpha) + alpha / 4
        ref = -(target * logp).sum(1).mean()
        got = smooth_ce(torch.tensor(logits), torch.tensor(labels), alpha).item()
        assert abs(got - ref) < 1e-12
    # alpha = 1: the cross-entropy to uniform, log-sum-exp minus the mean logit, whatever the labels
    assert abs(smooth_ce(torch.tensor(logits), torch.tensor(labels), 1.0).item()
               - np.mean(np.log(np.exp(logits).sum(1)) - logits.mean(1))) < 1e-12


def _c_forward(head, x):
    """C written out from its parameters: h1 = x + W2 relu(W1 x + b1) + b2, h2 likewise, logits = fc(h2)."""
    def block(b, h):
        return h + F.linear(F.relu(F.linear(h, b[0].weight, b[0].bias)), b[2].weight, b[2].bias)
    h1 = block(head.classifier.b1, x)
    h2 = block(head.classifier.b2, h1)
    return h1, h2, F.linear(h2, head.classifier.fc[0].weight, head.classifier.fc[0].bias)


def test_dias_losses_follow_their_formulas():
    torch.manual_seed(0)
    head = build_head("dias_fea", D, num_classes=K, width=16)
    for b in (head.classifier.b1, head.classifier.b2):  # leave the zero start so that the blocks matter
        nn.init.normal_(b[2].weight, 0, 0.1)
    real, labels = torch.randn(20, D), torch.randint(0, K, (20,))
    fake, fake_labels = torch.randn(7, D), torch.randint(0, K, (7,))
    head.eval()
    d = lambda x: head.discriminator(x[:, :, None, None]).flatten()  # noqa: E731
    softplus = F.softplus
    uniform_ce = lambda lg: (torch.logsumexp(lg, 1) - lg.mean(1)).mean()  # noqa: E731
    # D: -log sigmoid(D(real)) - log(1 - sigmoid(D(fake)))
    ref_d = softplus(-d(real)).mean() + softplus(d(fake)).mean()
    torch.testing.assert_close(head.discriminator_loss(real, fake), ref_d)
    # G: GAN loss - beta x CE(C(fake), uniform), beta 0.1
    ref_g = softplus(-d(fake)).mean() - 0.1 * uniform_ce(_c_forward(head, fake)[2])
    torch.testing.assert_close(head.generator_loss(fake, fake_labels), ref_g)
    # C, GAN phase: CE(real) + beta x CE(C(fake), uniform)
    ref_cg = F.cross_entropy(_c_forward(head, real)[2], labels) + 0.1 * uniform_ce(_c_forward(head, fake)[2])
    torch.testing.assert_close(head.classifier_gan_loss(real, labels, fake, fake_labels), ref_cg)
    # copycat: CE + 1.0 x mean(|h1' - h1|, |h2' - h2|) (plain blocks)
    c1 = F.linear(F.relu(F.linear(real, head.copycat.b1[0].weight, head.copycat.b1[0].bias)), head.copycat.b1[2].weight,
                  head.copycat.b1[2].bias)
    c2 = F.linear(F.relu(F.linear(c1, head.copycat.b2[0].weight, head.copycat.b2[0].bias)), head.copycat.b2[2].weight,
                  head.copycat.b2[2].bias)
    cl = F.linear(c2, head.copycat.fc[0].weight, head.copycat.fc[0].bias)
    h1, h2, logits = _c_forward(head, real)
    ref_copy = F.cross_entropy(cl, labels) + ((c1 - h1).abs().mean() + (c2 - h2).abs().mean()) / 2
    torch.testing.assert_close(head.copycat_loss(real, labels), ref_copy)
    # C, copycat phase: CE + fake_ratio 0.1 x mean(CE_0.5(C after block 1 on h1'), CE_1.0(fc on h2'))
    b2 = head.classifier.b2
    via_b2 = c1 + F.linear(F.relu(F.linear(c1, b2[0].weight, b2[0].bias)), b2[2].weight, b2[2].bias)
    lvl1 = F.linear(via_b2, head.classifier.fc[0].weight, head.classifier.fc[0].bias)
    lvl2 = F.linear(c2, head.classifier.fc[0].weight, head.classifier.fc[0].bias)
    target = F.one_hot(labels, K).float() * 0.5 + 0.5 / K
    ce_half = -(target * lvl1.log_softmax(1)).sum(1).mean()
    ref_cc = F.cross_entropy(logits, labels) + 0.1 * (ce_half + uniform_ce(lvl2)) / 2
    torch.testing.assert_close(head.classifier_copycat_loss(real, labels), ref_cc)
    # score: -max softmax(logits / T)
    h = build_head("dias_fea", D, num_classes=K, width=16, temperature=2.0)
    x = torch.randn(5, D)
    torch.testing.assert_close(h.score_rows(x), -(_c_forward(h, x)[2] / 2.0).softmax(1).amax(1))


def test_dias_starts_as_the_segmenters_classifier():
    torch.manual_seed(0)
    hrnet_like = nn.Sequential(nn.Conv2d(D, 12, 1), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, K, 1)).eval()
    bn = hrnet_like[1]
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    smp_like = nn.Sequential(nn.Conv2d(D, K, 1), nn.UpsamplingBilinear2d(scale_factor=4), nn.Identity())
    x = torch.randn(9, D)
    plain = nn.Conv2d(D, K, 1)
    # what each classifier computes at one pixel (the smp head's upsampling is not a per-pixel operation)
    for seg, at_pixel in ((hrnet_like, hrnet_like), (smp_like, smp_like[0]), (plain, plain)):
        head = build_head("dias_fea", D, num_classes=K)
        head.init_from_segmenter(seg)
        expected = at_pixel(x[:, :, None, None])[:, :, 0, 0]
        torch.testing.assert_close(head.logits_rows(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="3, 3.*init: random"):
        build_head("dias_fea", D, num_classes=K).init_from_segmenter(nn.Conv2d(D, K, 3, padding=1))
    with pytest.raises(ConfigError, match="the bank has 32 features and 4 classes"):
        build_head("dias_fea", D, num_classes=K).init_from_segmenter(nn.Conv2d(D, K + 1, 1))


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    root = tmp_path_factory.mktemp("dias_banks")
    return make_bank(root / "train", np.random.default_rng(0)), make_bank(root / "val", np.random.default_rng(0), n_closed=1500, n_open=500)


TRAIN = {"steps": 4, "eval_every": 2, "n_closed": 300, "n_fake": 150}


def _state(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_dias_trains_deterministically_and_resumes(banks, tmp_path):
    train, val = banks
    classifier = nn.Conv2d(D, K, 1)
    run = lambda out, steps: train_head("dias_fea", {"width": 16}, train, val, out=out, train={**TRAIN, "steps": steps},  # noqa: E731
                                        seed=3, progress=False, classifier=classifier)
    a = run(tmp_path / "a", 4)
    b = run(tmp_path / "b", 4)
    run(tmp_path / "c", 2)  # interrupted after 2 steps, then resumed to 4
    c = run(tmp_path / "c", 4)
    assert a == b == c
    for other in ("b", "c"):
        for name in ("best.pth", "last.pth"):
            sa, so = _state(tmp_path / "a" / name), _state(tmp_path / other / name)
            assert sa.keys() == so.keys() and all(torch.equal(sa[k], so[k]) for k in sa), (other, name)
    with pytest.raises(Exception, match="init: random"):
        train_head("dias_fea", {}, train, val, out=tmp_path / "d", train=TRAIN, progress=False)


def test_dias_separates_shifted_open_pixels_and_reloads(banks, tmp_path):
    train, val = banks
    hrnet_like = nn.Sequential(nn.Conv2d(D, 12, 1), nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, K, 1)).eval()
    summary = train_head("dias_fea", {"width": 32, "lr": 1e-3}, train, val, out=tmp_path / "h", seed=0, progress=False,
                         train={"steps": 60, "eval_every": 20, "n_closed": 500, "n_fake": 250}, classifier=hrnet_like)
    assert summary["best_auroc"] > 0.9
    head, info = load_head(tmp_path / "h" / "best.pth")  # a multi-layer fc rebuilt from the file
    assert abs(validation_auroc(head, val) - info["val_auroc"]) < 1e-9
    scores = head.score_map(torch.randn(2, D, 3, 4), size=(6, 8))
    assert scores.shape == (2, 6, 8) and scores.dtype == torch.float32
