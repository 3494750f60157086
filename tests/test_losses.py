"""Outlier-exposure losses, pasting, fine-tuning and tuning."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, logsumexp

from anomseg.data.paste import OutlierPool, paste_objects
from anomseg.train.losses import pixel_loss
from tests.conftest import write_png

K = 3


@pytest.fixture
def case():
    """2x3 pixels: known (classes 0, 2, 1), one outlier, one void (semantic 255, not outlier), one outlier."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, K, 2, 3, generator=g) * 2
    semantic = torch.tensor([[[0, 2, 255], [1, 255, 255]]])
    outlier = torch.tensor([[[False, False, True], [False, False, True]]])
    feats = torch.randn(1, 4, 2, 3, generator=g) * 3
    return z, semantic, outlier, feats


def test_formulas_and_void(case):
    z, sem, out, feats = case
    zn = z.numpy()[0].astype(np.float64)
    logp = log_softmax(zn, axis=0)
    known = [(0, 0, 0), (0, 1, 2), (1, 0, 1)]
    outl = [(0, 2), (1, 2)]
    energy = -logsumexp(zn, axis=0)
    norm = np.linalg.norm(feats.numpy()[0].astype(np.float64), axis=0)
    expected = {
        "ce": ({(y, x): -logp[c, y, x] for y, x, c in known}),
        "entropic": {**{(y, x): -logp[c, y, x] for y, x, c in known}, **{p: -logp[:, p[0], p[1]].mean() for p in outl}},
        "oe": {**{(y, x): -logp[c, y, x] for y, x, c in known}, **{p: -0.5 * logp[:, p[0], p[1]].mean() for p in outl}},
        "energy": {**{(y, x): -logp[c, y, x] + 0.1 * max(0, energy[y, x] + 25) ** 2 for y, x, c in known},
                   **{p: 0.1 * max(0, -7 - energy[p]) ** 2 for p in outl}},
        "objectosphere": {**{(y, x): -logp[c, y, x] + 0.01 * max(0, 10 - norm[y, x]) ** 2 for y, x, c in known},
                          **{p: -logp[:, p[0], p[1]].mean() + 0.01 * norm[p] ** 2 for p in outl}},
    }
    for name, exp in expected.items():
        loss, counted = pixel_loss(name, z, sem, out, features=feats)
        assert set(map(tuple, counted[0].nonzero().tolist())) == set(exp), name  # void (1, 1) never counts
        for p, v in exp.items():
            assert abs(loss[0][p].item() - v) < 1e-4, (name, p)
    zb = torch.cat([z, torch.zeros(1, 1, 2, 3)], 1)  # K + 1 outputs
    loss, counted = pixel_loss("background", zb, sem, out)
    lb = log_softmax(zb.numpy()[0].astype(np.float64), axis=0)
    assert not counted[0, 1, 1] and abs(loss[0, 0, 2].item() + lb[K, 0, 2]) < 1e-5 and abs(loss[0, 0, 0].item() + lb[0, 0, 0]) < 1e-5


def _step(name, z, sem, out, feats=None):
    z = z.clone().requires_grad_(True)
    f = feats.clone().requires_grad_(True) if feats is not None else None
    loss, counted = pixel_loss(name, z, sem, out, features=f)
    (loss * counted).sum().backward()
    with torch.no_grad():
        return z - 0.1 * z.grad, (f - 0.1 * f.grad if f is not None else None)


def test_gradients_push_outliers_the_intended_way(case):
    z, sem, out, feats = case
    ent = lambda t: -(torch.softmax(t, 0) * torch.log_softmax(t, 0)).sum()  # noqa: E731
    for name in ("entropic", "oe"):
        z2, _ = _step(name, z, sem, out)
        assert ent(z2[0, :, 0, 2]) > ent(z[0, :, 0, 2])  # entropy up on the outlier
    z2, _ = _step("energy", z * 5, sem, out)  # confident logits: energy below m_out
    assert -torch.logsumexp(z2[0, :, 0, 2], 0) > -torch.logsumexp(5 * z[0, :, 0, 2], 0)  # energy up
    _, f2 = _step("objectosphere", z, sem, out, feats)
    assert f2[0, :, 0, 2].norm() < feats[0, :, 0, 2].norm()  # feature norm down on the outlier
    assert f2[0, :, 0, 0].norm() > feats[0, :, 0, 0].norm() or feats[0, :, 0, 0].norm() >= 10  # up on known, below xi
    zb = torch.cat([z, torch.zeros(1, 1, 2, 3)], 1)
    z2, _ = _step("background", zb, sem, out)
    assert torch.softmax(z2[0, :, 0, 2], 0)[K] > torch.softmax(zb[0, :, 0, 2], 0)[K]


def test_pasting_marks_exactly_the_pasted_pixels(tmp_path):
    obj = np.zeros((20, 10, 3), np.uint8)
    obj[:] = (1, 2, 3)  # a colour found nowhere in the target image
    mask = np.zeros((20, 10), np.uint8)
    mask[2:18, 3:8] = 1
    write_png(tmp_path / "images" / "0.png", obj)
    write_png(tmp_path / "masks" / "0.png", mask)
    pool = OutlierPool(tmp_path)
    image = np.full((64, 96, 3), 200, np.uint8)
    semantic = np.random.default_rng(0).integers(0, 5, (64, 96))
    anomaly = np.zeros((64, 96), np.uint8)
    anomaly[:4] = 255
    s = paste_objects({"image": image, "semantic": semantic, "anomaly": anomaly, "name": "x"}, pool,
                      np.random.default_rng(3), count=3, height_range=(0.2, 0.4))
    pasted = (s["image"] == (1, 2, 3)).all(-1)
    assert pasted.any()
    np.testing.assert_array_equal(s["anomaly"] == 1, pasted)
    np.testing.assert_array_equal(s["semantic"][pasted], 255)
    np.testing.assert_array_equal(s["semantic"][~pasted], semantic[~pasted])
    np.testing.assert_array_equal(s["anomaly"][~pasted], anomaly[~pasted])
    np.testing.assert_array_equal(s["image"][~pasted], image[~pasted])
    # labels served at half resolution (label_scale 0.5): objects are placed in image coordinates and
    # the label of cell (i, j) is the image pixel under its centre, (2i + 1, 2j + 1)
    half = {"image": image, "semantic": semantic[::2, ::2], "anomaly": np.zeros((32, 48), np.uint8), "name": "x"}
    s = paste_objects(half, pool, np.random.default_rng(3), count=3, height_range=(0.2, 0.4))
    pasted = (s["image"] == (1, 2, 3)).all(-1)
    assert pasted.any()
    np.testing.assert_array_equal(s["anomaly"] == 1, pasted[1::2, 1::2])
    np.testing.assert_array_equal(s["semantic"][pasted[1::2, 1::2]], 255)
    with pytest.raises(Exception, match="mask of outlier object"):
        (tmp_path / "masks" / "0.png").unlink()
        OutlierPool(tmp_path)


def test_finetune_head_only_changes_the_classifier(tmp_path):
    from anomseg.config import merge
    from anomseg.data import generate_synthetic
    from anomseg.models import build_backbone, save_checkpoint
    from anomseg.engine.train_seg import DEFAULTS as SEG_DEFAULTS, train_segmentation
    import copy

    data = tmp_path / "data"
    generate_synthetic(data, num_train=4, num_val=1, num_test=1, num_outliers=3, height=64, width=128, workers=1, progress=False)
    opts = {"encoder_depth": 3, "decoder_segmentation_channels": 32, "decoder_pyramid_channels": 32}
    torch.manual_seed(0)
    base = build_backbone("smp:FPN:resnet18", 13, **opts)
    save_checkpoint(tmp_path / "base.pth", base)
    for finetune in ("head", "all"):
        cfg = merge(copy.deepcopy(SEG_DEFAULTS), {
            "out": str(tmp_path / finetune), "data": {"root": str(data), "crop": [64, 128], "val_split": None,
                                                      "paste": {"pool": str(data / "outliers"), "count": [1, 2]}},
            "model": {"backbone": "smp:FPN:resnet18", "options": opts, "init": str(tmp_path / "base.pth")},
            "train": {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2, "finetune": finetune, "freeze_bn": True,
                      "loss": {"name": "energy", "options": {"m_in": -5.0, "m_out": -1.0}}}})
        train_segmentation(cfg, progress=False)
        after = torch.load(tmp_path / finetune / "checkpoints" / "last.pth", weights_only=True)["state_dict"]
        changed = {k for k, v in base.state_dict().items() if not torch.equal(v, after[k])}
        head = {k for k in changed if k.startswith("model.segmentation_head")}
        assert head  # the classifier always learns
        assert (changed == head) == (finetune == "head"), finetune


def test_tune_finds_and_writes_the_best_config(tmp_path):
    pytest.importorskip("optuna")  # the `tune` extra
    import yaml

    from anomseg.engine.tune import run_tuning
    from tests.test_heads import make_bank

    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    make_bank(tmp_path / "bank" / "train", rng)
    rng.bit_generator.state = state
    make_bank(tmp_path / "bank" / "val", rng, n_closed=1000, n_open=300)
    base = {"out": str(tmp_path / "heads"), "bank": {"dir": str(tmp_path / "bank")},
            "heads": [{"name": "cls_fea"}], "train": {"steps": 4, "eval_every": 2, "n_closed": 200, "n_open": 100}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    tcfg = {"out": str(tmp_path / "tune"), "stage": "heads", "base": str(tmp_path / "base.yaml"), "trials": 2,
            "space": {"train.lr_d": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
    import anomseg.engine.train_heads as pipeline
    from anomseg.bank import FeatureBank

    real = pipeline.build_banks
    pipeline.build_banks = lambda cfg, progress=True: (FeatureBank(tmp_path / "bank" / "train"),
                                                       FeatureBank(tmp_path / "bank" / "val"), None, "synthetic", None)
    try:
        result = run_tuning(tcfg)
        assert result["trials"] == 2 and 0.5 < result["best_value"] <= 1.0
        rows = (tmp_path / "tune" / "trials.csv").read_text().splitlines()
        assert rows[0] == "trial,val_auroc,train.lr_d" and len(rows) == 3
        best = yaml.safe_load((tmp_path / "tune" / "best.yaml").read_text())
        assert best["train"]["lr_d"] == pytest.approx(result["best_params"]["train.lr_d"])
        assert run_tuning(tcfg)["trials"] == 2  # a finished search resumes without new trials
    finally:
        pipeline.build_banks = real
