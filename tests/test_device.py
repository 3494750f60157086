"""The device argument is honoured on every path (CPU here; tests/test_cuda.py on a GPU).

Each test runs a pipeline step with an explicit device string under :class:`FactoryAudit`, which
fails on any tensor that anomseg code creates without naming its device, and checks where the
outputs live."""

import numpy as np
import pytest
import torch

from anomseg.bank import MixedBatchSampler, extract_bank
from anomseg.data import build_dataset, generate_synthetic
from anomseg.engine.evaluate import run_evaluation
from anomseg.heads import build_head
from anomseg.heads.train import fit_statistical, make_optimizers, opengan_step, score_bank
from anomseg.heads.io import load_head, make_head, save_head
from anomseg.models import build_backbone
from anomseg.models.identity import weights_hash
from anomseg.models.inference import predict
from tests.device_audit import FactoryAudit
from tests.test_heads import D, K, make_bank

DEVICE = "cpu"
BACKBONE = {"name": "smp:FPN:resnet18", "options": {"encoder_depth": 3, "decoder_segmentation_channels": 32,
                                                   "decoder_pyramid_channels": 32}}


def test_the_audit_catches_a_tensor_made_without_a_device():
    import anomseg.files as files  # any anomseg module: run code "from" it

    code = compile("torch.zeros(3)", files.__file__, "exec")
    with FactoryAudit() as audit:
        exec(code, {"torch": torch})
        torch.zeros(3)  # from the test itself: not anomseg code
    assert len(audit.calls) == 1 and "files.py" in audit.calls[0]


@pytest.fixture(scope="module")
def banks(tmp_path_factory):
    root = tmp_path_factory.mktemp("banks")
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    train = make_bank(root / "train", rng)
    rng.bit_generator.state = state
    return train, make_bank(root / "val", rng, n_closed=2000, n_open=500)


@pytest.mark.parametrize("name", ["opengan_fea", "opengan0_fea", "cls_fea"])
def test_head_steps_stay_on_the_device(banks, name):
    train, _ = banks
    head = build_head(name, D).to(DEVICE)
    sampler = MixedBatchSampler(train, n_closed=200, n_open=100 if head.lambda_o > 0 else 0, seed=0, device=DEVICE)
    opt_d, opt_g = make_optimizers(head)
    with FactoryAudit() as audit:
        batch = sampler.next()
        opengan_step(head, batch, opt_d, opt_g, n_fake=50)
        scores = head.score_map(torch.randn(1, D, 4, 5, device=DEVICE), size=(8, 10))
        bank_scores = score_bank(head, train, "open")
    assert audit.calls == []
    assert {t.device.type for t in batch.values()} == {DEVICE}
    assert scores.device.type == DEVICE and scores.dtype == torch.float32 and scores.shape == (1, 8, 10)
    assert bank_scores.shape == (train.counts["open"],)


@pytest.mark.parametrize("name,options", [("gaussian", {"num_classes": K}), ("gmm", {"n_components": K}),
                                          ("knn", {"k": 5})])
def test_statistical_heads_fit_and_score_on_the_device(banks, tmp_path, name, options):
    train, _ = banks
    head = make_head(name, D, **options).to(DEVICE)
    with FactoryAudit() as audit:
        fit_statistical(head, train, max_samples=2000)
        scores = head.score_rows(torch.randn(7, D, device=DEVICE))
    assert audit.calls == []
    assert scores.device.type == DEVICE
    assert {b.device.type for b in head.buffers()} == {DEVICE}
    save_head(tmp_path / "h.pth", head, {})
    loaded, _ = load_head(tmp_path / "h.pth", device=DEVICE)
    assert {b.device.type for b in loaded.buffers()} == {DEVICE}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root, num_train=3, num_val=2, num_test=2, num_outliers=2, height=64, width=128, workers=1,
                       progress=False)
    return root


def test_extraction_and_prediction_stay_on_the_device(data, tmp_path):
    torch.manual_seed(0)
    model = build_backbone(BACKBONE["name"], 13, **BACKBONE["options"]).to(DEVICE).eval()
    ds = build_dataset("streethazards", data, "train")
    image = torch.from_numpy(np.array(ds[0]["image"]))[None].to(DEVICE)
    with FactoryAudit() as audit:
        bank = extract_bank(model, ds, tmp_path / "bank", backbone="fpn", closed_per_image=30, chunk_images=2,
                            progress=False, workers=0)
        out = predict(model, image, size=(64, 128), scales=(0.5, 1.0), flip=True)
    assert audit.calls == []
    assert bank.counts["closed"] == 3 * 30
    assert {out.logits.device.type, out.probs.device.type, out.features.device.type} == {DEVICE}


def test_evaluation_honours_the_device(data, tmp_path):
    torch.manual_seed(0)
    model = build_backbone(BACKBONE["name"], 13, **BACKBONE["options"])
    head = build_head("cls_fea", model.feature_dim)
    save_head(tmp_path / "cls.pth", head, {"weights": weights_hash(model)})
    cfg = {"out": str(tmp_path / "run"), "device": DEVICE, "workers": 0,
           "data": {"name": "streethazards", "root": str(data), "split": "test"}, "backbone": BACKBONE,
           "fit": {"max_images": 2}, "overlays": {"images": 0},
           "methods": [{"name": "msp"}, {"name": "energy"}, {"name": "sml"}, {"name": "kl_matching"},
                       {"name": "cls_fea", "head": str(tmp_path / "cls.pth")}]}
    with FactoryAudit() as audit:
        report = run_evaluation(cfg, progress=False)
    assert audit.calls == []
    assert set(report["methods"]) == {"msp", "energy", "sml", "kl_matching", "cls_fea"}
