"""CORES, pixel-wise: checked by hand arithmetic on a network whose kernels and responses are known."""

import numpy as np
import pytest
import torch
from torch import nn

from anomseg.config import ConfigError
from anomseg.methods import Observation, build_method
from anomseg.models.base import SegmentationBackbone, SegOutput


class HandNet(SegmentationBackbone):
    """x (3 ch) -> body 1x1 conv (4 ch) -> ReLU = features -> head 1x1 conv (2 classes); identity normalisation."""

    num_classes, feature_dim, stride = 2, 4, 1

    def __init__(self):
        super().__init__()
        self.pixel_mean.zero_()
        self.pixel_std.fill_(1.0)
        self.body = nn.Conv2d(3, 4, 1, bias=False)
        self.head = nn.Conv2d(4, 2, 1, bias=False)
        with torch.no_grad():
            self.body.weight.copy_(torch.tensor([[1., 0, 0], [0, 1, 0.5], [0, 0, 1], [2, 1, 2]])[:, :, None, None])
            self.head.weight.copy_(torch.tensor([[3., 2, -1, 0], [0, -1, 2, 1]])[:, :, None, None])

    def forward_normalized(self, x):
        f = torch.relu(self.body(x))
        return SegOutput(self.head(f), f)

    def classifier(self):
        return self.head


# two pixels: A = (0.5, 0, 0.6), B = (0.9, 0.4, 0)
IMAGES = torch.tensor([[0.5, 0.9], [0.0, 0.4], [0.6, 0.0]])[None, :, None, :]  # (1, 3, 1, 2)


def score(**options):
    model = HandNet().eval()
    method = build_method("cores", **options)
    method.setup(model)
    return method.score(Observation(prediction=None, images=IMAGES, model=model, size=(1, 2)))[0, 0].tolist()


def test_cores_on_the_classifier_input_by_hand():
    # features A = (0.5, 0.3, 0.6, 2.2): logits (1.5, 3.1) -> class 1, whose two largest weights are channels 2, 3:
    #   responses 0.6, 2.2; tau 0.1 -> RM = (0.5 + 2.1) / 2 = 1.3, RF = 1
    # features B = (0.9, 0.4, 0, 2.2): logits (3.5, 1.8) -> class 0, channels 0, 1: 0.9, 0.4 -> RM = 0.55, RF = 1
    np.testing.assert_allclose(score(kernels=2, tau=0.1), [-1.3, -0.55], rtol=1e-6)
    np.testing.assert_allclose(score(kernels=2, tau=0.1, lambda_m=2.0), [-1.69, -0.3025], rtol=1e-6)
    # tau 1.0: A keeps channel 3 only (RM = 1.2 / 2, RF = 1/2); B none (RM = RF = 0)
    np.testing.assert_allclose(score(kernels=2, tau=1.0), [-0.3, 0.0], atol=1e-7)


def test_cores_backtracks_through_a_second_layer_by_hand():
    # body's weights summed over the selected feature channels: class 1 {2, 3}: (2, 1, 3) -> inputs {2, 0};
    # class 0 {0, 1}: (1, 1, 0.5) -> inputs {0, 1}. The responses there are the image values; tau 0.55.
    # A: inputs 2, 0 = 0.6, 0.5 -> RM = 0.05 / 2, RF = 1/2 -> 0.0125; with layer 0 (1.3): 0.01625
    # B: inputs 0, 1 = 0.9, 0.4 -> RM = 0.35 / 2, RF = 1/2 -> 0.0875; with layer 0 (0.55): 0.048125
    np.testing.assert_allclose(score(kernels=2, layers=["body"], tau=[0.1, 0.55]), [-0.01625, -0.048125], rtol=1e-6)


def test_cores_refuses_layers_that_do_not_chain():
    model = HandNet()
    with pytest.raises(ConfigError, match="not a module"):
        build_method("cores", layers=["nope"]).setup(model)
    model.extra = nn.Conv2d(3, 5, 1)
    with pytest.raises(ConfigError, match="produces 5 channels but the layer after it consumes 4"):
        build_method("cores", layers=["extra"]).setup(model)
    with pytest.raises(ConfigError, match="tau has 3 values for 2 layers"):
        build_method("cores", layers=["body"], tau=[0.1, 0.2, 0.3])


def test_cores_runs_one_pass_on_every_backbone_here_and_leaves_no_hook():
    from anomseg.models import build_backbone

    for name, options in [("smp:FPN:resnet18", {"encoder_depth": 3, "decoder_segmentation_channels": 32,
                                                "decoder_pyramid_channels": 32}),
                          ("hrnet_w48", {}), ("pspnet_r101", {})]:
        torch.manual_seed(0)
        model = build_backbone(name, 5, **options).eval()
        method = build_method("cores")
        method.setup(model)
        calls = []
        handle = model.register_forward_hook(lambda *a: calls.append(1))
        images = torch.randint(0, 255, (1, 64, 64, 3), dtype=torch.uint8)
        s = method.score(Observation(prediction=None, images=images, model=model, size=(64, 64)))
        handle.remove()
        assert s.shape == (1, 64, 64) and s.dtype == torch.float32 and torch.isfinite(s).all(), name
        assert calls == [1], name
        assert all(not m._forward_pre_hooks for m in model.modules()), name


def test_cores_reads_the_inference_pass_when_tapped():
    """Through predict(taps=...) CORES needs no pass of its own, and scores what its own pass scores, bit for bit;
    the by-hand layer-2 case through the inference pass too."""
    from anomseg.models import build_backbone
    from anomseg.models.inference import predict

    torch.manual_seed(0)
    model = build_backbone("smp:FPN:resnet18", 5, encoder_depth=3, decoder_segmentation_channels=32,
                           decoder_pyramid_channels=32).eval()
    images = torch.randint(0, 255, (2, 64, 96, 3), dtype=torch.uint8)
    for method in (build_method("cores"), build_method("cores", layers=[], kernels=8, tau=0.05)):
        own = method.score(Observation(prediction=None, images=images, model=model, size=(64, 96)))
        calls = []
        handle = model.register_forward_hook(lambda *a: calls.append(1))
        pred = predict(model, images, (64, 96), taps=method.taps(model))
        tapped = method.score(Observation(prediction=pred, images=images, model=model, size=(64, 96)))
        handle.remove()
        assert calls == [1]  # the inference pass only
        assert torch.equal(own, tapped)
        assert all(not m._forward_pre_hooks for m in model.modules())
    hand = HandNet().eval()
    method = build_method("cores", kernels=2, layers=["body"], tau=[0.1, 0.55])
    pred = predict(hand, IMAGES, (1, 2), taps=method.taps(hand))
    assert set(pred.inputs) == {hand.head, hand.body}
    got = method.score(Observation(prediction=pred, images=None, model=hand, size=(1, 2)))  # no images: no own pass
    np.testing.assert_allclose(got[0, 0].tolist(), [-0.01625, -0.048125], rtol=1e-6)
