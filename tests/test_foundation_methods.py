"""UEM and PixOOD on the feature bank of an FPN and of a dinov2:tiny backbone: the bank's patch rows, the formulas
restated from ../shared/docs/FORMATS.md (never the official code), and the methods through anomseg eval,
AnomalySegmenter and the visualizer."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anomseg.bank import OPEN, FeatureBank
from anomseg.data import build_dataset, generate_synthetic
from anomseg.data.base import majority_labels
from anomseg.heads.io import load_head
from anomseg.heads.pixood import PixOODHead, _interp, _log_gauss, np_cdf
from anomseg.heads.uem import UEMHead
from anomseg.models import build_backbone
from anomseg.models.base import resize_logits
from anomseg.models.checkpoints import build_from_checkpoint, save_checkpoint
from anomseg.segmenter import AnomalySegmenter

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
import eval_caos  # noqa: E402
import train_head  # noqa: E402
import visualize  # noqa: E402

BACKBONES = {"fpn": ("smp:FPN:resnet18", {"encoder_depth": 3, "decoder_segmentation_channels": 32,
                                          "decoder_pyramid_channels": 32}),
             "vit": ("dinov2:tiny", {"layers": [1, 3], "label_agreement": 0.5})}
PIXOOD = {"prototypes": 8, "epochs": 3, "grid": 120, "batch_rows": 1024}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("foundation")
    data = tmp / "data"
    generate_synthetic(data, num_train=4, num_val=2, num_test=2, num_outliers=4, height=128, width=256,
                       workers=1, progress=False)
    out = {}
    for tag, (name, options) in BACKBONES.items():
        torch.manual_seed(0)
        model = build_backbone(name, 13, **options)
        ckpt = save_checkpoint(tmp / f"{tag}.pth", model)
        cfg = {"out": str(tmp / f"heads_{tag}"),
               "data": {"name": "streethazards", "root": str(data), "paste": {"pool": str(data / "outliers"),
                                                                             "count": [2, 3], "height_range": [0.3, 0.5]}},
               "backbone": {"checkpoint": str(ckpt)}, "bank": {"closed_per_image": 300, "chunk_images": 2},
               "heads": [{"name": "uem"}, {"name": "pixood", "options": PIXOOD}],
               "train": {"steps": 4, "eval_every": 2, "n_closed": 300, "n_open": 100}}
        path = tmp / f"heads_{tag}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert train_head.main(["--config", str(path)]) == 0
        out[tag] = {"ckpt": ckpt, "heads": Path(cfg["out"]) / "heads", "bank": Path(cfg["out"]) / "bank", "data": data,
                    "tmp": tmp}
    return out


def test_majority_labels_equal_a_count_per_cell():
    rng = np.random.default_rng(0)
    label = rng.choice(np.array([0, 3, 7, 255], np.uint8), size=(29, 45), p=[0.6, 0.2, 0.1, 0.1])
    label[:10, :10] = 3
    for agreement in (0.0 + 1e-9, 0.5, 0.9):
        got = majority_labels(label, (4, 6), agreement)
        for i in range(4):
            for j in range(6):
                cell = label[i * 29 // 4:(i + 1) * 29 // 4, j * 45 // 6:(j + 1) * 45 // 6].ravel()
                counts = Counter(cell.tolist())
                top = max(counts.values())
                winner = min(v for v, c in counts.items() if c == top)
                assert got[i, j] == (winner if top >= agreement * cell.size else 255)


def test_vit_bank_rows_are_patches_with_majority_labels_and_logits(runs):
    r = runs["vit"]
    bank = FeatureBank(r["bank"] / "train")
    assert bank.meta["labels"] == "majority >= 0.5" and bank.meta["version"] == 2 and "logits" in bank.fields
    model, _ = build_from_checkpoint(r["ckpt"])
    model.eval()
    from anomseg.data.paste import PastedDataset
    train = PastedDataset(build_dataset("streethazards", r["data"], "train"), r["data"] / "outliers", count=(2, 3),
                          height_range=(0.3, 0.5), seed=0)
    s = train[0]
    with torch.no_grad():
        out = model(torch.from_numpy(np.array(s["image"]))[None])
    h, w = out.features.shape[-2:]
    joint = np.where(s["anomaly"] == 1, 1000, np.where((s["anomaly"] == 0) & (s["semantic"] != 255),
                                                       s["semantic"].astype(np.int64), -1))
    for kind in ("closed", "open"):
        rows = bank.read(kind, 0, bank.counts[kind], ("features", "logits", "labels", "image", "yx"))
        sel = rows["image"] == 0
        assert sel.any()
        for (y, x), lab, f, lg in zip(rows["yx"][sel], rows["labels"][sel], rows["features"][sel], rows["logits"][sel]):
            cell = joint[y * 128 // h:(y + 1) * 128 // h, x * 256 // w:(x + 1) * 256 // w].ravel()
            values, counts = np.unique(cell, return_counts=True)
            assert counts.max() >= 0.5 * cell.size
            winner = values[counts == counts.max()].min()
            assert (lab == OPEN) if winner == 1000 else (lab == winner)
            np.testing.assert_allclose(f.astype(np.float32), out.features[0, :, y, x].numpy(), atol=3e-3, rtol=3e-3)
            np.testing.assert_allclose(lg.astype(np.float32), out.logits[0, :, y, x].numpy(), atol=3e-3, rtol=3e-3)


def test_uem_score_schedule_and_projector():
    torch.manual_seed(0)
    head = UEMHead(16, 5)
    x, logits = torch.randn(7, 16), torch.randn(7, 5)
    p = head.projector  # Linear D -> 512, ReLU, Linear 512 -> 512, ReLU, Linear 512 -> 256; then Linear 256 -> 2
    o = head.head(p.last(torch.relu(p.middle(torch.relu(p.first(x))))))
    expect = o[:, 1] - logits.max(1).values - o[:, 0]  # FORMATS.md: s = o_1 - max_c l_c - o_0
    torch.testing.assert_close(head.score_rows(x, logits), expect)
    with pytest.raises(ValueError, match="logits"):
        head.score_rows(x)
    deep = UEMHead(16, 5, layers=5)  # misc.MLP: [Linear, ReLU] * (layers - 2) repeats ONE Linear
    assert sum(1 for m in deep.modules() if isinstance(m, torch.nn.Linear)) == 4 and deep.projector.repeats == 3
    head.total_steps = 4000  # ood/base.yaml: warmup 1500, decay to 1e-7 at 4000
    assert head.lr_at(0) == 0 and head.lr_at(750) == pytest.approx(2.5e-4)
    assert head.lr_at(1500) == pytest.approx(5e-4) and head.lr_at(4000) == pytest.approx(1e-7)
    assert head.lr_at(2750) == pytest.approx((5e-4 - 1e-7) * 0.5 + 1e-7)


def test_pixood_cdf_interpolation_and_gaussians_restated():
    from scipy.interpolate import interp1d
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(1)
    p = rng.random(500)
    ratio = np.round(rng.random(500) * 20) / 4  # many ties
    ratio[:3] = 0.0
    xs, ys = [], []
    order = np.argsort(ratio)
    for i in range(1, len(order)):  # FORMATS.md: midpoints of adjacent different ratios, mass of the upper point
        if ratio[order[i]] == ratio[order[i - 1]]:
            continue
        xs.append(0.5 * (ratio[order[i]] + ratio[order[i - 1]]))
        ys.append((ys[-1] if ys else 0.0) + p[order[i]])
    ys = np.array(ys) / p.sum()
    gx, gy = np_cdf(p, ratio)
    np.testing.assert_array_equal(gx, xs)
    np.testing.assert_array_equal(gy, ys)
    f = interp1d([0.0] + xs + [np.inf], [0.0] + ys.tolist() + [1.0], kind="linear")
    r = np.concatenate([rng.random(200) * 6, [0.0, xs[0], xs[-1], 100.0]])
    np.testing.assert_allclose(_interp(torch.from_numpy(r), torch.from_numpy(gx), torch.from_numpy(gy)).numpy(), f(r),
                               rtol=0, atol=1e-12)
    thin_x, thin_y = np_cdf(p, ratio, knots=5)
    assert len(thin_x) <= 6 and thin_y[-1] == gy[-1]
    cov = np.array([[2.0, 0.3], [0.3, 0.5]])
    pts = rng.normal(size=(50, 2))
    np.testing.assert_allclose(_log_gauss(torch.from_numpy(pts), torch.tensor([0.5, -1.0], dtype=torch.float64),
                                          torch.from_numpy(cov)).numpy(),
                               multivariate_normal.logpdf(pts, mean=[0.5, -1.0], cov=cov), rtol=1e-12)


def test_pixood_condensation_finds_the_modes_and_drops_unused_prototypes():
    rng = np.random.default_rng(0)
    centres = {0: np.array([[4.0, 0.0], [-4.0, 0.0]]), 1: np.array([[0.0, 6.0]])}
    xs, labels = [], []
    for c, cs in centres.items():
        for m in cs:
            xs.append(m + 0.2 * rng.normal(size=(400, 2)))
            labels += [c] * 400
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32))
    y = torch.tensor(labels)
    head = PixOODHead(2, 2, prototypes=6, epochs=30, batch_rows=400, lr=0.1)
    torch.manual_seed(0)
    info = head.condense(x, y, np.random.default_rng(0), progress=False)
    assert info["loss_last"] < info["loss_first"]
    for c, cs in centres.items():
        mu = head.prototypes[c][head.valid[c]].numpy()
        assert 1 <= len(mu) <= 6
        for m in cs:  # every mode has a valid prototype within 0.5
            assert np.linalg.norm(mu - m, axis=1).min() < 0.5
    logits = torch.from_numpy(np.stack([np.where(y == 0, 3.0, -1.0), np.where(y == 1, 3.0, -1.0)], 1).astype(np.float32))
    logits += 0.3 * torch.randn(logits.shape)
    head.fit_neyman_pearson(x, y, logits)
    head.fitted.fill_(True)
    assert head.eval_labels == [0, 1]
    # a far point with low logits is anomalous, a point at a mode with its class's logit is not
    far = head.score_rows(torch.tensor([[20.0, -20.0]]), torch.tensor([[-1.0, -1.0]]))
    near = head.score_rows(torch.tensor([[4.0, 0.0]]), torch.tensor([[3.0, -1.0]]))
    assert far.item() > 0.9 and near.item() < far.item() - 0.3
    own_l = logits[y == 0, 0].double().numpy()  # the class Gaussian: mean / np.cov of (l_c, s_c) over its rows
    d = torch.cdist(x[y == 0], head.prototypes[0][head.valid[0]]).min(1).values.double().numpy()
    pts = np.stack([own_l, 1 / (1 + 0.5 * d)], 1)
    np.testing.assert_allclose(head.class_mean[0].numpy(), pts.mean(0), rtol=1e-5)
    np.testing.assert_allclose(head.class_cov[0].numpy(), np.cov(pts.T), rtol=1e-4)
    only0 = PixOODHead(2, 2, prototypes=6, epochs=2, eval_labels=[0])
    only0.condense(x, y, np.random.default_rng(0), progress=False)
    only0.fit_neyman_pearson(x, y, logits)
    assert only0.eval_labels == [0]


@pytest.mark.parametrize("tag", ["fpn", "vit"])
def test_uem_and_pixood_through_eval_segmenter_and_visualizer(runs, tag):
    r = runs[tag]
    out = r["tmp"] / f"eval_{tag}"
    cfg = {"out": str(out), "data": {"name": "streethazards", "root": str(r["data"]), "split": "test"},
           "backbone": {"checkpoint": str(r["ckpt"])}, "protocol": "per_image",
           "methods": [{"name": "msp"}, {"name": "uem", "head": str(r["heads"] / "uem" / "best.pth")},
                       {"name": "pixood", "head": str(r["heads"] / "pixood" / "best.pth")}],
           "overlays": {"images": 1, "threshold": "best_f1"}}
    path = r["tmp"] / f"eval_{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert eval_caos.main(["--config", str(path)]) == 0
    report = json.loads((out / "report.json").read_text())["methods"]
    for name in ("uem", "pixood"):
        assert 0.0 <= report[name]["auroc"] <= 1.0 and math.isfinite(report[name]["fpr95"])
    assert visualize.main([str(out), "--first", "1", "--out", str(r["tmp"] / f"viz_{tag}")]) == 0
    assert list((r["tmp"] / f"viz_{tag}").glob("*.png"))

    test = build_dataset("streethazards", r["data"], "test")
    image = np.array(test[0]["image"])
    model, _ = build_from_checkpoint(r["ckpt"])
    model.eval()
    with torch.no_grad():
        o = model(torch.from_numpy(image)[None])
    size = image.shape[:2]
    seg = AnomalySegmenter.from_files(checkpoint=str(r["ckpt"]), method="uem", head=str(r["heads"] / "uem" / "best.pth"),
                                      device="cpu")
    uem, _ = load_head(r["heads"] / "uem" / "best.pth")
    with torch.no_grad():
        maps = resize_logits(uem.outputs(o.features), size)
        expect = maps[:, 1] - resize_logits(o.logits.float(), size).max(1).values - maps[:, 0]
    got = seg(image)
    assert got.dtype == np.float32 and got.shape == size
    np.testing.assert_allclose(got, expect[0].numpy(), atol=1e-4, rtol=1e-4)

    seg = AnomalySegmenter.from_files(checkpoint=str(r["ckpt"]), method="pixood",
                                      head=str(r["heads"] / "pixood" / "best.pth"), device="cpu")
    pix, _ = load_head(r["heads"] / "pixood" / "best.pth")
    grid = resize_logits(o.logits.float(), tuple(o.features.shape[-2:]))
    with torch.no_grad():
        expect = 1 - resize_logits(pix.class_scores(o.features, grid), size).max(1).values
    got = seg(image)
    assert got.min() >= 0 and got.max() <= 1
    np.testing.assert_allclose(got, expect[0].numpy(), atol=1e-5)
    seg.save(r["tmp"] / f"pixood_{tag}.pt")
    again = AnomalySegmenter.load(r["tmp"] / f"pixood_{tag}.pt", device="cpu")
    np.testing.assert_array_equal(again(image), got)


def test_window_origins_follow_uem():
    from anomseg.models.inference import window_origins

    assert window_origins(720, 518, 140) == [0, 140, 202]  # FORMATS.md: 720x1280 -> rows 0, 140, 202
    assert window_origins(1280, 1036, 140) == [0, 140, 244]  # cols 0, 140, 244
    assert len(window_origins(1024, 518, 140)) * len(window_origins(2048, 1036, 140)) == 5 * 9  # 1024x2048 -> 5x9
    assert window_origins(798, 518, 140) == [0, 140, 280]  # (798 - 518) % 140 == 0: the last window ends at the edge
    with pytest.raises(ValueError, match="shorter than the inference window"):
        window_origins(400, 518, 140)


@pytest.mark.parametrize("tag", ["vit"])
def test_sliding_windows_average_logits_and_uem_maps(runs, tag):
    from anomseg.methods.base import Observation, build_method
    from anomseg.models.inference import check_inference_settings, predict_with

    r = runs[tag]
    model, _ = build_from_checkpoint(r["ckpt"])
    model.eval()
    image = torch.from_numpy(np.array(build_dataset("streethazards", r["data"], "test")[0]["image"]))[None]
    inf = check_inference_settings({"window": [70, 140], "window_stride": [40, 60]})
    pred = predict_with(model, image, (128, 256), inf)
    rows, cols = [0, 40, 58], [0, 60, 116]  # 128 - 70 = 58, 256 - 140 = 116
    assert [(w.y, w.x) for w in pred.windows] == [(y, x) for y in rows for x in cols]
    total = torch.zeros(1, 13, 128, 256)
    count = torch.zeros(1, 1, 128, 256)
    o_total = torch.zeros(1, 2, 128, 256)
    uem, _ = load_head(r["heads"] / "uem" / "best.pth")
    with torch.no_grad():
        for y in rows:
            for x in cols:
                out = model(image.permute(0, 3, 1, 2)[..., y:y + 70, x:x + 140])
                total[..., y:y + 70, x:x + 140] += resize_logits(out.logits.float(), (70, 140))
                o_total[..., y:y + 70, x:x + 140] += resize_logits(uem.outputs(out.features), (70, 140))
                count[..., y:y + 70, x:x + 140] += 1
    torch.testing.assert_close(pred.logits, total / count, atol=1e-5, rtol=1e-5)
    method = build_method("uem", head=str(r["heads"] / "uem" / "best.pth"))
    method.setup(model)
    got = method.score(Observation(pred, image, model, (128, 256)))
    o = o_total / count
    torch.testing.assert_close(got, o[:, 1] - (total / count).max(1).values - o[:, 0], atol=1e-4, rtol=1e-4)
    pix = build_method("pixood", head=str(r["heads"] / "pixood" / "best.pth"))
    pix.setup(model)
    scores = pix.score(Observation(pred, image, model, (128, 256)))
    assert scores.shape == (1, 128, 256) and bool(torch.isfinite(scores).all())
    from anomseg.options import OptionError
    with pytest.raises(OptionError, match="scale 1.0 without flip"):
        check_inference_settings({"window": [70, 140], "flip": True})
