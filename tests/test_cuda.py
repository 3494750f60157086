"""The CUDA paths: run wherever CUDA exists, skip cleanly elsewhere (tests/test_device.py checks the
same code paths honour the device argument on the CPU).

Covered: a segmentation training step, a Mask2Former training step and its query scores, an OpenGAN head step, an evaluation of 2 images (against the
same evaluation on the CPU), a bank extraction, statistical heads, and all-reduces under a
1-process ``cpu:gloo,cuda:nccl`` group (the group the tools create under torchrun with CUDA).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BACKBONE = {"name": "smp:FPN:resnet18", "options": {"encoder_depth": 3, "decoder_segmentation_channels": 32,
                                                   "decoder_pyramid_channels": 32}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from anomseg.data import generate_synthetic

    root = tmp_path_factory.mktemp("cuda") / "data"
    generate_synthetic(root, num_train=8, num_val=2, num_test=2, num_outliers=2, height=64, width=128, workers=1,
                       progress=False)
    return root


def test_segmentation_training_step(data, tmp_path):
    from anomseg.config import load_config
    from anomseg.engine.train_seg import DEFAULTS as SEG_DEFAULTS, SCHEMA as SEG_SCHEMA, train_segmentation

    cfg = load_config(ROOT / "configs" / "seg_synthetic_tiny.yaml", [
        f"data.root={data}", f"out={tmp_path}", "device=cuda", "train.epochs=1", "train.batch_size=4",
        "train.max_steps_per_epoch=2", "data.crop=[48,96]", "model.options={encoder_depth: 3, decoder_channels: [16, 8, 4]}"],
        SEG_DEFAULTS, SEG_SCHEMA)
    train_segmentation(cfg, progress=False)
    state = torch.load(tmp_path / "checkpoints" / "last.pth", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_head_step_on_cuda(tmp_path):
    from anomseg.bank import MixedBatchSampler
    from anomseg.heads import build_head
    from anomseg.heads.train import make_optimizers, opengan_step, score_bank
    from tests.test_heads import D, make_bank

    bank = make_bank(tmp_path / "bank", np.random.default_rng(0))
    head = build_head("opengan_fea", D).cuda()
    sampler = MixedBatchSampler(bank, n_closed=500, n_open=250, seed=0, device="cuda")
    opt_d, opt_g = make_optimizers(head)
    batch = sampler.next()
    assert {t.device.type for t in batch.values()} == {"cuda"}
    loss_d, loss_g = opengan_step(head, batch, opt_d, opt_g, n_fake=250)
    assert np.isfinite(loss_d) and np.isfinite(loss_g)
    assert head.score_map(torch.randn(1, D, 4, 4, device="cuda"), size=(8, 8)).device.type == "cuda"
    assert score_bank(head, bank, "open").shape == (bank.counts["open"],)


@pytest.mark.parametrize("name,options", [("gaussian", {"num_classes": 4}), ("gmm", {"n_components": 4}),
                                          ("knn", {"k": 5})])
def test_statistical_heads_on_cuda_match_the_cpu(tmp_path, name, options):
    from anomseg.heads.train import fit_statistical
    from anomseg.heads.io import make_head
    from tests.test_heads import D, make_bank

    bank = make_bank(tmp_path / "bank", np.random.default_rng(0))
    x = torch.randn(100, D)
    heads = {}
    for device in ("cpu", "cuda"):
        heads[device] = make_head(name, D, **options).to(device)
        fit_statistical(heads[device], bank, max_samples=2000)
    torch.testing.assert_close(heads["cuda"].score_rows(x).cpu(), heads["cpu"].score_rows(x), rtol=1e-3, atol=1e-3)


def test_evaluation_of_two_images_matches_the_cpu(data, tmp_path):
    from anomseg.engine.evaluate import run_evaluation
    from anomseg.heads.io import make_head, save_head
    from anomseg.models import build_backbone
    from anomseg.models.identity import weights_hash

    torch.manual_seed(0)
    model = build_backbone(BACKBONE["name"], 13, **BACKBONE["options"])
    save_head(tmp_path / "cls.pth", make_head("cls_fea", model.feature_dim), {"weights": weights_hash(model)})
    reports = {}
    for device, amp in (("cpu", "none"), ("cuda", "none"), ("cuda", "bf16")):
        cfg = {"out": str(tmp_path / f"{device}-{amp}"), "device": device, "inference": {"amp": amp},
               "data": {"name": "streethazards", "root": str(data), "split": "test"}, "backbone": BACKBONE,
               "fit": {"max_images": 2}, "overlays": {"images": 1},
               "methods": [{"name": "msp"}, {"name": "energy"}, {"name": "sml"},
                           {"name": "cls_fea", "head": str(tmp_path / "cls.pth")}]}
        reports[device, amp] = run_evaluation(cfg, progress=False)
    for name in ("msp", "energy", "sml", "cls_fea"):
        cpu, gpu = reports["cpu", "none"]["methods"][name], reports["cuda", "none"]["methods"][name]
        assert abs(cpu["auroc"] - gpu["auroc"]) < 1e-3, name
        assert abs(reports["cuda", "bf16"]["methods"][name]["auroc"] - cpu["auroc"]) < 0.05, name


def test_extraction_on_cuda_matches_the_cpu(data, tmp_path):
    from anomseg.bank import extract_bank
    from anomseg.data import build_dataset
    from anomseg.models import build_backbone

    ds = build_dataset("streethazards", data, "train")
    banks = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = build_backbone(BACKBONE["name"], 13, **BACKBONE["options"]).to(device).eval()
        banks[device] = extract_bank(model, ds, tmp_path / device, backbone="fpn", closed_per_image=30, chunk_images=4,
                                     progress=False, workers=2)
    a = np.concatenate([c["features"] for c in banks["cpu"].iter_chunks("closed")]).astype(np.float32)
    b = np.concatenate([c["features"] for c in banks["cuda"].iter_chunks("closed")]).astype(np.float32)
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2)


def test_all_reduce_under_a_one_process_nccl_group(tmp_path):
    import torch.distributed as dist

    from anomseg.distributed import all_reduce_sum
    from anomseg.metrics import AnomalyMetrics, reduce_distributed

    torch.cuda.set_device(0)
    dist.init_process_group("cpu:gloo,cuda:nccl", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        t = torch.arange(4, device="cuda", dtype=torch.float64)
        assert all_reduce_sum(t).tolist() == [0.0, 1.0, 2.0, 3.0]
        assert all_reduce_sum(torch.ones(2, dtype=torch.int64)).tolist() == [1, 1]  # the gloo half
        m = AnomalyMetrics("per_image")
        rng = np.random.default_rng(0)
        m.update(rng.random((2, 8, 8)).astype(np.float32), rng.integers(0, 2, (2, 8, 8)).astype(np.uint8))
        assert reduce_distributed(m).compute()["auroc"] == m.compute()["auroc"]
    finally:
        dist.destroy_process_group()


def test_mask2former_training_and_query_scores_on_cuda(data, tmp_path):
    """The mask2former set loss trains under bf16 autocast on CUDA, and its query scores on CUDA equal the CPU's."""
    from anomseg.config import load_config
    from anomseg.engine.train_seg import DEFAULTS as SEG_DEFAULTS, SCHEMA as SEG_SCHEMA, train_segmentation
    from anomseg.methods import Observation, build_method
    from anomseg.models import build_from_checkpoint
    from anomseg.models.inference import predict

    pytest.importorskip("transformers")
    cfg = load_config(ROOT / "configs" / "seg_synthetic_m2f.yaml", [
        f"data.root={data}", f"out={tmp_path}", "device=cuda", "train.epochs=1", "train.batch_size=2",
        "train.max_steps_per_epoch=2", "data.crop=[64,128]"], SEG_DEFAULTS, SEG_SCHEMA)
    train_segmentation(cfg, progress=False)
    model, _ = build_from_checkpoint(tmp_path / "checkpoints" / "last.pth")
    x = torch.randint(0, 256, (1, 64, 128, 3), dtype=torch.uint8)
    scores = {}
    for device in ("cpu", "cuda"):
        m = model.to(device).eval()
        pred = predict(m, x.to(device), size=(64, 128), flip=True)
        for name in ("rba", "eam", "m2a"):
            method = build_method(name)
            method.setup(m)
            scores[device, name] = method.score(Observation(pred, x.to(device), m, (64, 128))).cpu()
    for name in ("rba", "eam"):  # m2a thresholds (> 0.95, >= 0.5) may flip on float differences: shapes only
        torch.testing.assert_close(scores["cuda", name], scores["cpu", name], atol=1e-3, rtol=1e-3)
    assert scores["cuda", "m2a"].shape == scores["cpu", "m2a"].shape == (1, 64, 128)
