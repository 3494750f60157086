"""Anomaly instances: components, OoDIS AP / AP50 by hand, the file formats, SAM refinement, the evaluation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anomseg.config import ConfigError
from anomseg.data import build_dataset, generate_synthetic
from anomseg.data.paste import paste_objects
from anomseg.instances import InstanceAP, InstanceError, Instances, check_settings, instances_from_scores
from anomseg.instances.oodis import (cityscapes_from_target, coco_results, read_submission, rle_counts, rle_string,
                                     target_from_cityscapes, write_submission)

ROOT = Path(__file__).resolve().parents[1]


def pixels(mask_of, n, h=40, w=40):
    """A mask holding the first ``n`` pixels (row-major) of the bool map ``mask_of``."""
    idx = np.argwhere(mask_of)[:n]
    m = np.zeros((h, w), bool)
    m[tuple(idx.T)] = True
    return m


def two_objects():
    gt = np.zeros((40, 40), np.int32)
    gt[0:10, 0:10] = 1  # A: 100 px
    gt[20:30, 20:30] = 2  # B: 100 px
    return gt


# -- AP / AP50 by hand (../shared/docs/FORMATS.md, OoDIS, the worked example) ----------------------
def test_worked_example_ap50_and_ap():
    gt = two_objects()
    p1 = pixels(gt == 1, 83)  # IoU 0.83 with A
    p2 = pixels(gt == 0, 30)  # background
    p3 = pixels(gt == 2, 52)  # IoU 0.52 with B
    ap = InstanceAP()
    ap.add(Instances(np.stack([p1, p2, p3]), [0.9, 0.8, 0.6]), gt)
    r = ap.compute()
    # t = 0.5: (r, p) = (1, 2/3), (0.5, 1/2), (0.5, 1), (0, 1) -> 0.5 * (2/3 + 1/2) / 2 + 0.5 * (1 + 1) / 2 = 19/24
    assert r["AP50"] == pytest.approx(19 / 24, abs=1e-12)
    # t = 0.55 .. 0.80 (6 values): AP 0.5 each; t = 0.85 .. 0.95: 0 -> (19/24 + 3) / 10
    assert r["AP"] == pytest.approx((19 / 24 + 3) / 10, abs=1e-12)
    assert r["AP_per_threshold"]["0.55"] == pytest.approx(0.5) and r["AP_per_threshold"]["0.85"] == 0.0


def test_duplicate_on_one_object_is_a_false_positive():
    gt = two_objects()
    p1 = pixels(gt == 1, 83)
    p2 = pixels(gt == 0, 30)
    p4 = pixels(gt == 1, 60)  # IoU 0.6 with A: a second match, the lower score a false positive
    ap = InstanceAP()
    ap.add(Instances(np.stack([p1, p2, p4]), [0.9, 0.8, 0.7]), gt)
    # labels {0.9: TP, 0.8: FP, 0.7: FP}, B a hard FN: (r, p) = (0.5, 1/3), (0.5, 1/2), (0.5, 1), (0, 1)
    # widths (0, 0, 0.5, 0.25 ... ) -> AP50 = 0.5 (FORMATS.md)
    assert ap.compute()["AP50"] == pytest.approx(0.5, abs=1e-12)


def test_small_gt_void_and_groups_are_neither_tp_nor_fp():
    gt = np.zeros((40, 40), np.int32)
    gt[0:10, 0:10] = 1  # 100 px
    gt[30:32, 30:32] = 2  # 4 px: below the 10 px minimum region size
    gt[20:25, 0:10] = -1  # 50 px of anomaly without instance id (a group)
    void = np.zeros((40, 40), bool)
    void[35:40, :] = True
    p1 = pixels(gt == 1, 83)
    p_small = gt == 2  # matches the too-small GT exactly: neither
    p_void = pixels(void, 30)  # all void: ignored (ignore share 1 > t)
    p_group = gt == -1  # IoU 1 with the group: neither
    ap = InstanceAP()
    ap.add(Instances(np.stack([p1, p_small, p_void, p_group]), [0.9, 0.95, 0.97, 0.99]), gt, void)
    r = ap.compute()
    assert r["AP50"] == pytest.approx(1.0) and r["gt_instances"] == 1
    # a false positive on plain background scoring above the TP:
    # sorted (0.9 TP, 0.99 FP): (r, p) = (1, 1/2), (0, 0), (0, 1); recall padded (1, 1, 0, 0, 0),
    # widths = (0.5, 0.5, 0) -> AP50 = 0.5 * 0.5 + 0 * 0.5 = 0.25
    p_bg = np.zeros((40, 40), bool)
    p_bg[12:17, 12:18] = True
    ap = InstanceAP()
    ap.add(Instances(np.stack([p1, p_bg]), [0.9, 0.99]), gt, void)
    assert ap.compute()["AP50"] == pytest.approx(0.25, abs=1e-12)


def test_no_gt_is_nan_and_no_prediction_is_zero():
    ap = InstanceAP()
    ap.add(Instances.empty(40, 40), np.zeros((40, 40), np.int32))
    assert np.isnan(ap.compute()["AP"])
    ap.add(Instances.empty(40, 40), two_objects())
    assert ap.compute()["AP50"] == 0.0 and ap.compute()["AP"] == 0.0


def test_other_instance_labels_average_in_a_zero():
    gt = two_objects()
    ap = InstanceAP()
    ap.add(Instances(np.stack([gt == 1, gt == 2]), [0.9, 0.8]), gt, extra_labels=[24])
    # car AP50 = 1, person (GT, never predicted: every prediction is relabelled car) 0 -> mean 0.5
    assert ap.compute()["AP50"] == pytest.approx(0.5)


def test_state_round_trip_and_merge():
    gt = two_objects()
    a, b, both = InstanceAP(), InstanceAP(), InstanceAP()
    inst = Instances(np.stack([pixels(gt == 1, 83), pixels(gt == 2, 52)]), [0.9, 0.6])
    for ev in (a, both):
        ev.add(inst, gt)
    for ev in (b, both):
        ev.add(Instances.empty(40, 40), gt)
    merged = InstanceAP.from_state(a.state_dict())
    merged.merge(b)
    assert merged.compute() == both.compute()


# -- components -----------------------------------------------------------------------------------
def test_components_void_min_size_and_confidence_rules():
    s = np.zeros((20, 20), np.float32)
    s[2:8, 2:8] = np.arange(36, dtype=np.float32).reshape(6, 6) / 36 + 1  # 36 px, values 1 .. 1.97
    s[12:14, 12:14] = 5  # 4 px: below min_size 10
    void = np.zeros((20, 20), bool)
    void[5, :] = True  # splits the big blob into rows 2-4 (18 px) and 6-7 (12 px)
    inst = instances_from_scores(s, 1.0, void=void, min_size=10, confidence="mean")
    assert len(inst) == 2 and not (inst.masks & void).any()
    lower = s[6:8, 2:8]
    upper = s[2:5, 2:8]
    assert inst.scores[0] == pytest.approx(lower.mean()) and inst.scores[1] == pytest.approx(upper.mean())
    assert inst.masks[0].sum() == 12 and inst.masks[1].sum() == 18
    mx = instances_from_scores(s, 1.0, void=void, min_size=10, confidence="max")
    assert mx.scores[0] == pytest.approx(lower.max())
    q = instances_from_scores(s, 1.0, void=void, min_size=10, confidence="q0.5")
    assert q.scores[0] == pytest.approx(np.median(lower))
    assert len(instances_from_scores(s, 1.0, min_size=1)) == 2  # without void: the blob and the 4 px one
    with pytest.raises(InstanceError, match="confidence='median'"):
        instances_from_scores(s, 1.0, confidence="median")
    with pytest.raises(InstanceError, match="threshold=nan"):
        instances_from_scores(s, float("nan"))


# -- file formats ---------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' own __array__ under NumPy 2
def test_rle_by_hand_and_against_pycocotools(rng):
    # [[0, 1], [1, 1]] column-major: 0, 1, 1, 1 -> runs (1, 3) -> characters chr(48 + 1), chr(48 + 3)
    assert rle_counts(np.array([[0, 1], [1, 1]], bool)) == [1, 3]
    assert rle_string([1, 3]) == "13"
    assert rle_counts(np.array([[1, 0]], bool)) == [0, 1, 1]  # a leading empty run of zeros
    mask_utils = pytest.importorskip("pycocotools.mask")
    for _ in range(50):
        h, w = rng.integers(1, 60, 2)
        m = rng.random((h, w)) < rng.random()
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert rle_string(rle_counts(m)) == ref["counts"].decode()
        inst = Instances(m[None], [0.5])
        res = coco_results("img", inst)[0]
        back = mask_utils.decode({"size": res["segmentation"]["size"], "counts": res["segmentation"]["counts"].encode()})
        np.testing.assert_array_equal(back.astype(bool), m)


def test_cityscapes_encoding():
    ids = np.array([[0, 7, 26001, 26001], [26, 26002, 24001, 3]], np.int64)
    gt, void, other = target_from_cityscapes(ids, min_region_size=1)
    np.testing.assert_array_equal(gt, [[0, 0, 1, 1], [-1, 2, 0, 0]])
    np.testing.assert_array_equal(void, [[True, False, False, False], [False, False, False, True]])
    assert other == [24]
    back = cityscapes_from_target(gt, void)
    np.testing.assert_array_equal(back, [[0, 7, 26001, 26001], [26, 26002, 7, 0]])


def test_submission_files(tmp_path):
    m = np.zeros((2, 6, 8), bool)
    m[0, :2, :2] = True
    m[1, 4:, 5:] = True
    inst = Instances(m, np.array([0.123456789, 0.5], np.float32))
    txt = write_submission(tmp_path, "x_instanceIds", inst)
    lines = txt.read_text().splitlines()
    assert lines[0] == f"x_instanceIds_0_1.png 1 {float(np.float32(0.123456789))!r}"
    assert lines[1] == "x_instanceIds_1_1.png 1 0.5"
    back = read_submission(txt)
    np.testing.assert_array_equal(back.masks, m)
    np.testing.assert_array_equal(back.scores, inst.scores)
    # no instance: one all-zero mask with confidence 0 (the scorer refuses an empty file)
    txt = write_submission(tmp_path, "y_instanceIds", Instances.empty(6, 8))
    assert txt.read_text() == "y_instanceIds_0_1.png 1 0.0\n"


def test_settings_refused_in_one_line():
    for bad, match in (({"threshold": "fpr5"}, "instances.threshold"), ({"refine": "crf"}, "instances.refine"),
                       ({"sam": {"prompts": "mask"}}, "instances.sam.prompts"), ({"export": ["json"]}, "instances.export"),
                       ({"min_size": 0}, "instances.min_size"), ({"bogus": 1}, "unknown key")):
        with pytest.raises(InstanceError, match=match) as e:
            check_settings(bad)
        assert "\n" not in str(e.value)
    assert check_settings({"export": "coco"})["export"] == ["coco"]


# -- SAM refinement -------------------------------------------------------------------------------
def test_sam_refinement_equals_transformers_called_directly(rng):
    from anomseg.instances.sam import SamRefiner, tiny_sam

    model, processor = tiny_sam(seed=3)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    score = rng.random((48, 80)).astype(np.float32)
    masks = np.zeros((2, 48, 80), bool)
    masks[0, 5:20, 10:30] = True
    masks[1, 25:40, 50:70] = True
    inst = Instances(masks, [0.9, 0.7])
    for prompts, multimask in (("box", False), ("point", True), ("box+point", False)):
        ref = SamRefiner(model=model, processor=processor, prompts=prompts, multimask=multimask, device="cpu")
        got = ref.sam_masks(image, inst, score)
        # the same prompts, straight through transformers
        kw = {}
        if "box" in prompts:
            kw["input_boxes"] = [[[10.0, 5.0, 30.0, 20.0], [50.0, 25.0, 70.0, 40.0]]]
        if "point" in prompts:
            pts = []
            for m in masks:
                y, x = np.unravel_index(np.argmax(np.where(m, score, -np.inf)), m.shape)
                pts.append([[float(x), float(y)]])
            kw["input_points"], kw["input_labels"] = [pts], [[[1], [1]]]
        inputs = processor(images=image, return_tensors="pt", **kw)
        with torch.no_grad():
            out = model(**inputs, multimask_output=multimask)
        direct = processor.image_processor.post_process_masks(out.pred_masks, inputs["original_sizes"],
                                                              inputs["reshaped_input_sizes"])[0].numpy()
        pick = out.iou_scores[0].argmax(-1).numpy() if multimask else np.zeros(2, int)
        np.testing.assert_array_equal(got, direct[np.arange(2), pick])


def test_sam_refine_rules(monkeypatch, rng):
    from anomseg.instances.sam import SamRefiner, tiny_sam

    model, processor = tiny_sam()
    ref = SamRefiner(model=model, processor=processor, device="cpu", merge_iou=0.5, min_size=3)
    image = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    score = np.zeros((20, 20), np.float32)
    score[:, 10:] = 1.0
    a = np.zeros((20, 20), bool)
    a[0:10, 0:10] = True  # what SAM "returns" for instance 0
    b = np.zeros((20, 20), bool)
    b[0:10, 1:10] = True  # instance 1: IoU 0.9 with a -> merged into it
    c = np.zeros((20, 20), bool)
    c[5:15, 5:15] = True  # instance 2: overlaps a by 25 px (IoU < 0.5) -> keeps only its own pixels
    monkeypatch.setattr(SamRefiner, "sam_masks", lambda self, img, inst, s: np.stack([a, b, c]))
    void = np.zeros((20, 20), bool)
    void[14, :] = True
    inst = Instances(np.ones((3, 20, 20), bool), [0.9, 0.8, 0.7])
    out = ref.refine(image, inst, score, void=void)
    assert len(out) == 2
    merged = [m for m in out.masks if m[0, 0]][0]
    np.testing.assert_array_equal(merged, a)
    other = [m for m in out.masks if not m[0, 0]][0]
    np.testing.assert_array_equal(other, c & ~a & ~void)
    # the confidence is the mean score inside the refined mask (columns >= 10 score 1)
    k = [i for i, m in enumerate(out.masks) if not m[0, 0]][0]
    assert out.scores[k] == pytest.approx(score[other].mean())


# -- data -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("inst") / "data"
    generate_synthetic(root, num_train=2, num_val=2, num_test=4, num_outliers=3, height=64, width=128, workers=1,
                       progress=False)
    return root


def test_synthetic_instances_match_the_anomaly_labels(synthetic):
    from anomseg.data.synthetic.generate import _rng
    from anomseg.data.synthetic.scene import draw_scene

    ds = build_dataset("streethazards", synthetic, "test")
    assert ds.has_instances and not build_dataset("streethazards", synthetic, "train").has_instances
    for i in range(len(ds)):
        s = ds[i]
        np.testing.assert_array_equal(s["instances"] > 0, s["anomaly"] == 1)
        assert s["instances"].dtype == np.int32 and s["instances"].max() >= 1
    # the instance ids leave the scene itself unchanged (the same random stream)
    img, lab = draw_scene(_rng(0, "test", 1), 64, 128, anomalies=2)
    img2, lab2, inst = draw_scene(_rng(0, "test", 1), 64, 128, anomalies=2, with_instances=True)
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(lab, lab2)


def test_pasted_outliers_are_instances(synthetic):
    from anomseg.data.paste import OutlierPool

    ds = build_dataset("streethazards", synthetic, "test")
    s = ds[0]
    out = paste_objects(s, OutlierPool(synthetic / "outliers"), np.random.default_rng(0), 2)
    new = (out["anomaly"] == 1) & (s["anomaly"] != 1)
    assert new.any()
    assert (out["instances"][new] > s["instances"].max()).all()
    np.testing.assert_array_equal(out["instances"] > 0, out["anomaly"] == 1)


# -- the evaluation -------------------------------------------------------------------------------
def test_evaluation_with_the_instance_protocol(synthetic, tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    import eval_caos
    import anomseg.engine.evaluate as evaluate

    cfg = {"out": str(tmp_path / "run"), "data": {"name": "streethazards", "root": str(synthetic), "split": "test"},
           "backbone": {"name": "smp:FPN:resnet18", "options": {"encoder_depth": 3, "decoder_segmentation_channels": 32,
                                                               "decoder_pyramid_channels": 32}},
           "methods": [{"name": "msp"}, {"name": "energy"}], "protocol": ["per_image", "instances"],
           "instances": {"threshold": "tpr95", "export": ["oodis", "coco"], "refine": "sam"},
           "overlays": {"images": 2}, "workers": 0}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert eval_caos.main(["--config", str(path)]) == 0
    out = Path(cfg["out"])
    report = json.loads((out / "report.json").read_text())
    assert report["instances"]["settings"]["refine"] == "sam"
    ds = build_dataset("streethazards", synthetic, "test")
    for name in ("msp", "energy"):
        r = report["methods"][name]["instances"]
        assert set(r) >= {"AP", "AP50", "threshold", "components", "gt_instances"}
        # the exported files hold what was scored: re-scoring them gives the report's numbers
        ap = InstanceAP()
        for i in range(len(ds)):
            s = ds[i]
            fname = ds.records[i].name.replace("/", "_")
            ap.add(read_submission(out / "instances" / name / "oodis" / f"{fname}_instanceIds_pred.txt"),
                   s["instances"], s["anomaly"] == 255)
        again = ap.compute()
        assert again["AP50"] == pytest.approx(r["AP50"] or 0.0, nan_ok=True) and again["gt_instances"] == r["gt_instances"]
        coco = json.loads((out / "instances" / name / "coco.json").read_text())
        assert {c["image_id"] for c in coco} <= {rec.name.replace("/", "_") for rec in ds.records}
    table = (out / "report.md").read_text()
    assert "| method | AUROC | AUPR | FPR95 | AP50 | AP | comp. F1 |" in table
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert len(list((out / "state" / "instances" / "overlay").glob("*.npz"))) == 4
    page = (out / "report.html").read_text()
    assert 'data-key="instances.AP50"' in page and 'data-key="instances.AP"' in page
    # the visualizer outlines the instances found with the report's thresholds
    paths = evaluate.render_overlays(out, [1], out_dir=tmp_path / "viz", progress=False)
    assert len(paths) == 1
    # a split without instance ids is refused before anything runs, in one line
    bad = dict(cfg, data={"name": "streethazards", "root": str(synthetic), "split": "train"}, out=str(tmp_path / "bad"))
    with pytest.raises(ConfigError, match="has no anomaly instance ids") as e:
        evaluate.run_evaluation(bad, progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="instances.threshold"):
        evaluate.run_evaluation(dict(cfg, instances={"threshold": "fpr5"}), progress=False)


def test_segmenter_instances(tmp_path, rng):
    from anomseg import AnomalySegmenter
    from anomseg.instances.sam import SamRefiner
    from anomseg.segmenter import PipelineError

    torch.manual_seed(0)
    seg = AnomalySegmenter.from_files(backbone="smp:FPN:resnet18", num_classes=13, method="msp", device="cpu",
                                      options={}, instances={"min_size": 4, "confidence": "max"})
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    scores = seg(image)
    t = float(np.quantile(scores, 0.9))
    got = seg.instances(image, threshold=t)
    ref = instances_from_scores(scores, t, min_size=4, confidence="max")
    np.testing.assert_array_equal(got.masks, ref.masks)
    np.testing.assert_array_equal(got.scores, ref.scores)
    with pytest.raises(PipelineError, match="no operating point"):
        seg.instances(image)
    seg.operating_point = {"threshold": t}
    assert len(seg.instances(image)) == len(ref)
    # refine: sam runs the refiner on the image and the components
    seg_sam = AnomalySegmenter.from_files(backbone="smp:FPN:resnet18", num_classes=13, method="msp", device="cpu",
                                          instances={"min_size": 4, "refine": "sam"})
    seg_sam.model.load_state_dict(seg.model.state_dict())
    refined = seg_sam.instances(image, threshold=t)
    assert isinstance(seg_sam._refiner, SamRefiner)
    direct = seg_sam._refiner.refine(image, instances_from_scores(scores, t, min_size=4), scores)
    np.testing.assert_array_equal(refined.masks, direct.masks)
    saved = torch.load(seg_sam.save(tmp_path / "p.pt"), weights_only=True)
    assert saved["instances"]["refine"] == "sam"
    with pytest.raises(PipelineError, match="instances.refine"):
        AnomalySegmenter.from_files(backbone="smp:FPN:resnet18", num_classes=13, method="msp", device="cpu",
                                    instances={"refine": "crf"})


def test_hostile_instance_inputs(tmp_path, synthetic):
    import shutil

    from anomseg.data import DatasetError
    from anomseg.instances.sam import load_sam

    with pytest.raises(InstanceError, match="local transformers SAM folder") as e:
        load_sam(str(tmp_path / "nothing"))
    assert "\n" not in str(e.value)
    (tmp_path / "bad_sam").mkdir()
    (tmp_path / "bad_sam" / "config.json").write_text("{not json")
    with pytest.raises(InstanceError, match="not a loadable transformers SAM folder") as e:
        load_sam(str(tmp_path / "bad_sam"))
    assert "\n" not in str(e.value)
    root = tmp_path / "copy"
    shutil.copytree(synthetic, root)
    odgt = json.loads((root / "test.odgt").read_text())
    # an RGB image where the instance ids should be: one line naming the file
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(root / odgt[0]["fpath_inst"])
    with pytest.raises(DatasetError, match="instance map has mode 'RGB'") as e:
        build_dataset("streethazards", root, "test")[0]
    assert "\n" not in str(e.value)
    # a path out of the dataset root in the index: refused when the index is read
    odgt[1]["fpath_inst"] = "../../outside.png"
    (root / "test.odgt").write_text(json.dumps(odgt))
    with pytest.raises(DatasetError) as e:
        build_dataset("streethazards", root, "test")
    assert "test.odgt" in str(e.value) and "\n" not in str(e.value)
    # instance confidences that cannot be ranked, masks of another size
    with pytest.raises(InstanceError, match="finite"):
        Instances(np.zeros((1, 4, 4), bool), [float("nan")])
    with pytest.raises(InstanceError, match="differ from the ground truth"):
        InstanceAP().add(Instances.empty(4, 4), np.zeros((5, 5), np.int32))


def test_oodis_lost_and_found_adapter(tmp_path):
    from PIL import Image as PILImage

    from anomseg.data import DatasetError

    root = tmp_path / "data"
    fids = {"train": ["01_Hanns_Klemm_Str_45_000000_000100", "01_Hanns_Klemm_Str_45_000001_000110"],
            "test": ["02_Hanns_Klemm_Str_44_000007_000140"]}
    ids = np.full((4, 6), 7, np.uint16)  # road
    ids[0, :] = 0  # unlabeled: void
    ids[1:3, 0:2] = 26001  # anomaly instance 1
    ids[1:3, 4:6] = 26002  # anomaly instance 2
    ids[3, 2] = 26  # a group of anomaly pixels
    ids[3, 3] = 24001  # a person: another instance label
    for folder, names in fids.items():
        for fid in names:
            scene = fid[: -len("_000000_000000")]
            img = root / "dataset_LostAndFound" / "leftImg8bit" / folder / scene / f"{fid}_leftImg8bit.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(np.zeros((4, 6, 3), np.uint8)).save(img)
            lab = root / "lost_found_instance" / "gtCoarse" / folder / scene / f"{fid}_gtCoarse_instanceIds.png"
            lab.parent.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(ids).save(lab)
    ds = build_dataset("oodis_lost_and_found", root, "all", check_size=False)
    assert [r.name for r in ds.records] == sorted(fids["train"] + fids["test"]) and ds.has_instances
    s = ds[0]
    # written from the Cityscapes convention (FORMATS.md): >= 1000 instance of label v // 1000, 26 a car group,
    # 0 (unlabeled) void; anomaly = the label-26 pixels
    np.testing.assert_array_equal(s["instances"], [[0] * 6, [1, 1, 0, 0, 2, 2], [1, 1, 0, 0, 2, 2], [0, 0, -1, 0, 0, 0]])
    np.testing.assert_array_equal(s["anomaly"], [[255] * 6, [1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1], [0, 0, 1, 0, 0, 0]])
    assert s["instance_other_labels"] == [] and len(build_dataset("oodis_lost_and_found", root, "test",
                                                                  check_size=False)) == 1
    with pytest.raises(DatasetError, match="found 3 frames, the official split has 2239"):
        build_dataset("oodis_lost_and_found", root, "all")
    (root / "lost_found_instance" / "gtCoarse" / "test" / "02_Hanns_Klemm_Str_44" /
     "02_Hanns_Klemm_Str_44_000007_000140_gtCoarse_instanceIds.png").unlink()
    with pytest.raises(DatasetError, match="1 of 3 frames lack an instance label") as e:
        build_dataset("oodis_lost_and_found", root, "all", check_size=False)
    assert "\n" not in str(e.value)
    with pytest.raises(DatasetError, match="OoDIS instance label folder not found"):
        build_dataset("oodis_lost_and_found", root, "all", labels=str(tmp_path / "none"), check_size=False)
