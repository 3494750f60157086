"""The method contract: every registered method satisfies it, and a new method is one class plus one
registry line, evaluated end to end by the evaluation tool without touching anomseg/evaluate.py."""

import numpy as np
import pytest
import torch

from anomseg.config import ConfigError
from anomseg.data import generate_synthetic
from anomseg.engine.evaluate import run_evaluation
from anomseg.methods import METHODS, Method, Observation, build_method, register_method
from anomseg.models import build_backbone
from anomseg.models.inference import predict
from anomseg.scores import POSTHOC

BACKBONE = {"name": "smp:FPN:resnet18", "options": {"encoder_depth": 3, "decoder_segmentation_channels": 32,
                                                   "decoder_pyramid_channels": 32}}


def test_registry_covers_every_source_method_and_names_agree():
    assert set(POSTHOC) | {"sml", "kl_matching", "mc_dropout", "cores", "opengan_fea", "cls_fea", "dias_fea",
                            "gaussian", "knn"} <= set(METHODS)
    for name, cls in METHODS.items():
        assert cls.name == name and issubclass(cls, Method)
    assert build_method("energy", temperature=2.0).name == "energy"
    with pytest.raises(ConfigError, match="did you mean 'entropy'"):
        build_method("entropi")
    with pytest.raises(ConfigError, match="unknown option 'temprature'; did you mean 'temperature'"):
        build_method("energy", temprature=2.0)
    with pytest.raises(TypeError, match="'msp' is not fitted on data"):  # the contract's default update
        build_method("msp").fit([(None, None)])


def test_posthoc_methods_score_observations_as_the_functions():
    torch.manual_seed(0)
    model = build_backbone(BACKBONE["name"], 5, **BACKBONE["options"]).eval()
    images = torch.randint(0, 256, (2, 32, 64, 3), dtype=torch.uint8)
    pred = predict(model, images, size=(32, 64))
    obs = Observation(pred, images, model, (32, 64))
    for name, fn in POSTHOC.items():
        x = pred.probs if fn.consumes == "probs" else pred.logits
        got = build_method(name).score(obs)
        assert got.dtype == torch.float32 and got.shape == (2, 32, 64)
        torch.testing.assert_close(got, fn(x).float(), rtol=0, atol=0)


@register_method("toy_channel_gap")
class ChannelGap(Method):
    """A toy: minus the gap between the two largest logits, fitted offset (mean gap on training pixels)."""

    consumes = "logits"
    fit_split = "train"

    def __init__(self, scale: float = 1.0):
        self.scale, self.total, self.count = scale, 0.0, 0

    def _gap(self, logits):
        top = logits.topk(2, dim=1).values
        return top[:, 0] - top[:, 1]

    def update(self, obs, semantic):
        gap = self._gap(obs.prediction.logits)[semantic != 255]
        self.total, self.count = self.total + float(gap.double().sum()), self.count + gap.numel()

    def score(self, obs):
        return (self.total / self.count - self._gap(obs.prediction.logits)).float() * self.scale

    def state_dict(self):
        return {"total": self.total, "count": self.count}

    def load_state_dict(self, state):
        self.total, self.count = float(state["total"]), int(state["count"])


def test_a_registered_toy_method_is_evaluated_end_to_end(tmp_path):
    data = tmp_path / "data"
    generate_synthetic(data, num_train=2, num_val=1, num_test=3, num_outliers=2, height=64, width=128, workers=1,
                       progress=False)
    cfg = {"out": str(tmp_path / "run"), "workers": 0, "data": {"name": "streethazards", "root": str(data), "split": "test"},
           "backbone": BACKBONE, "fit": {"max_images": 2}, "overlays": {"images": 1},
           "methods": [{"name": "gap", "score": "toy_channel_gap", "options": {"scale": 2.0}}, {"name": "msp"},
                       {"name": "cores", "options": {"kernels": 8}}]}
    report = run_evaluation(cfg, progress=False)
    assert set(report["methods"]) == {"gap", "msp", "cores"}
    assert 0.0 <= report["methods"]["cores"]["auroc"] <= 1.0
    fitted = torch.load(tmp_path / "run" / "fitted" / "gap.pt", weights_only=True)
    assert fitted["fingerprint"]["score"] == "toy_channel_gap" and fitted["state"]["count"] > 0
    # the gap score is a monotone map of the top-2 margin: its AUROC equals the margin's, computed here
    from anomseg.data import build_dataset
    from anomseg.metrics import AnomalyMetrics
    torch.manual_seed(0)
    model = build_backbone(BACKBONE["name"], 13, **BACKBONE["options"]).eval()
    ds, ref = build_dataset("streethazards", data, "test"), AnomalyMetrics("per_image")
    for i in range(len(ds)):
        s = ds[i]
        logits = predict(model, torch.from_numpy(np.array(s["image"]))[None], size=s["anomaly"].shape).logits
        top = logits.topk(2, dim=1).values
        ref.update(-(top[:, 0] - top[:, 1]), torch.from_numpy(s["anomaly"])[None])
    assert abs(report["methods"]["gap"]["auroc"] - ref.compute()["auroc"]) < 1e-9
