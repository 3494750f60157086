"""The CAOS reference mode: input sizes, PIL resizing, probability averaging and the reference's scores.

References are independent of the code under test: the size list published in FORMATS.md, hand
arithmetic of the CSAIL rule for 1024x2048, PIL called directly, and the reference's score formulas
(hendrycks/anomaly-seg eval_ood.py) written out with numpy.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anomseg.models import build_backbone
from anomseg.models.inference import caos_input_sizes, predict
from anomseg.scores import build_score


def test_caos_input_sizes():
    # FORMATS.md: "On 720x1280 that gives inputs 304x536, 376x672, 456x800, 528x936, 568x1000"
    assert caos_input_sizes(720, 1280) == [(304, 536), (376, 672), (456, 800), (528, 936), (568, 1000)]
    # 1024x2048 by hand: s/1024 until it exceeds 1000/2048 = 0.48828125 (s = 525, 600 are capped there);
    # 300 -> 300x600, 375 -> 375x750 -> 376x752, 450 -> 450x900 -> 456x904, capped -> 500x1000 -> 504x1000
    assert caos_input_sizes(1024, 2048) == [(304, 600), (376, 752), (456, 904), (504, 1000), (504, 1000)]
    # portrait images: the shorter side is the width
    assert caos_input_sizes(1280, 720)[0] == (536, 304)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_backbone("smp:Unet:resnet18", 4, encoder_depth=3, decoder_channels=[16, 8, 4]).eval()


def test_caos_predict_matches_reference_pipeline(tiny):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)
    out = predict(tiny, torch.from_numpy(image)[None], size=(90, 160), preset="caos")
    # the reference pipeline, written out: PIL bilinear resize of the uint8 image, /255, ImageNet
    # normalisation, forward, bilinear upsampling to the label size, softmax, mean over 5 sizes
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    probs, logits = 0, 0
    sizes = caos_input_sizes(90, 160)
    for h, w in sizes:
        im = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
        x = (torch.from_numpy(im).permute(2, 0, 1)[None] - mean) / std
        with torch.no_grad():
            z = F.interpolate(tiny.forward_normalized(x).logits, size=(90, 160), mode="bilinear", align_corners=False)
        probs = probs + torch.softmax(z, 1) / len(sizes)
        logits = logits + z / len(sizes)
    torch.testing.assert_close(out.probs, probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
    assert out.features is None  # no pass at the label size: a head must not get other-scale features

    p = probs.numpy()
    np.testing.assert_allclose(build_score("max_mean_prob")(out.probs).numpy(), -p.max(1), atol=1e-6)
    sm = np.exp(p) / np.exp(p).sum(1, keepdims=True)  # CAOS "msp": softmax applied to probabilities
    np.testing.assert_allclose(build_score("max_double_softmax")(out.probs).numpy(), -sm.max(1), atol=1e-6)
    np.testing.assert_allclose(build_score("neg_mean_prob0")(out.probs).numpy(), -p[:, 0], atol=1e-6)
    q = p[:, 1:]  # --exclude_back drops class 0 first
    sq = np.exp(q) / np.exp(q).sum(1, keepdims=True)
    np.testing.assert_allclose(build_score("max_double_softmax", exclude_back=True)(out.probs).numpy(), -sq.max(1), atol=1e-6)
    np.testing.assert_allclose(build_score("neg_mean_prob0", exclude_back=True)(out.probs).numpy(), -q[:, 0], atol=1e-6)
    # the correct scores see the mean logits: energy is not a constant, MaxLogit is a logit
    energy = build_score("energy")(out.logits)
    assert energy.std() > 0
    torch.testing.assert_close(build_score("max_logit")(out.logits), -logits.amax(1), atol=1e-5, rtol=1e-5)


def test_multiscale_mean_logits_and_probs(tiny):
    x = torch.randint(0, 256, (1, 32, 64, 3), dtype=torch.uint8)
    single = predict(tiny, x)
    with torch.no_grad():
        ref = tiny(x).logits
    torch.testing.assert_close(single.logits, ref)
    torch.testing.assert_close(single.probs, torch.softmax(ref, 1))
    multi = predict(tiny, x, scales=(0.5, 1.0), flip=True)
    assert multi.features is not None and multi.features.shape[-2:] == single.features.shape[-2:]
    torch.testing.assert_close(multi.probs.sum(1), torch.ones(1, 32, 64))
    assert predict(tiny, x, scales=(0.5,)).features is None
    with pytest.raises(ValueError, match="inference preset 'csail'"):
        predict(tiny, x, preset="csail")
