"""SMIYC end to end through tools/eval_caos.py: both arithmetics side by side, score files read back with plain
h5py and re-scored by the restated official algorithm (tests/test_smiyc_metrics.py), hidden test labels."""

import json
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from anomseg.data import build_dataset
from anomseg.engine.export import ExportError, SmiycExporter
from tests.conftest import random_image
from tests.test_smiyc_metrics import ref_frame, ref_pix_binary_class, ref_segeval

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = {"name": "smp:FPN:resnet18", "options": {"encoder_depth": 3, "decoder_segmentation_channels": 32,
                                                   "decoder_pyramid_channels": 32}}
H, W = 48, 64


@pytest.fixture(scope="module")
def obstacle_track(tmp_path_factory):
    """A RoadObstacle21 tree (SMIYC.md 1.2): 30 validation-scene frames with labels, 3 test frames without."""
    root = tmp_path_factory.mktemp("smiyc_e2e")
    base = root / "dataset_ObstacleTrack"
    (base / "images").mkdir(parents=True)
    (base / "labels_masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 31):
        img = random_image(rng, H, W)
        label = np.full((H, W), 255, np.uint8)
        label[16:] = 0
        y, x = int(rng.integers(18, 36)), int(rng.integers(0, 48))
        label[y:y + 10, x:x + 14] = 1
        img[label == 1] = (230, 30, 200)  # the obstacle looks different
        Image.fromarray(img).save(base / "images" / f"validation_{i}.webp", lossless=True)
        Image.fromarray(label).save(base / "labels_masks" / f"validation_{i}_labels_semantic.png")
    for fid in ("gravel_000", "motorway_001", "paving_002"):
        Image.fromarray(random_image(rng, H, W)).save(base / "images" / f"{fid}.webp", lossless=True)
    return root


def run_eval(cfg, tmp, name):
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sys.path.insert(0, str(ROOT / "tools"))
    import eval_caos

    return eval_caos.main(["--config", str(path)])


def base_cfg(root, out, split="validation", **kw):
    return {"out": str(out), "backbone": BACKBONE, "workers": 0, "overlays": {"images": 1},
            "data": {"name": "road_obstacle21", "root": str(root), "split": split,
                     "options": {"check_size": False, "class_names": ["road", "car", "sky"]}},
            "methods": [{"name": "msp"}, {"name": "energy"}], **kw}


def test_pooled_and_smiyc_side_by_side_with_score_files(obstacle_track, tmp_path):
    out = tmp_path / "run"
    cfg = base_cfg(obstacle_track, out, protocol=["pooled", "smiyc"], components=True, export="smiyc")
    assert run_eval(cfg, tmp_path, "both") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["component_track"] == "auto"
    assert report["methods"]["msp"]["min_pred_size"] == 50 and report["methods"]["msp"]["min_gt_size"] == 10  # obstacle
    md = (out / "report.md").read_text()
    assert "pooled AUROC" in md and "smiyc AUROC" in md and "road-anomaly-benchmark PixBinaryClass" in md
    # the validation split (its frames are checked in test_data_smiyc.py): labels read with plain PIL
    fids = [r.name for r in build_dataset("road_obstacle21", obstacle_track, "validation", check_size=False).records]
    assert len(fids) == 20  # validation_19, _21 .. _29 are not validation frames
    labels = [np.asarray(Image.open(obstacle_track / "dataset_ObstacleTrack" / "labels_masks" / f"{f}_labels_semantic.png"))
              for f in fids]
    for method in ("msp", "energy"):
        r = report["methods"][method]
        assert r["protocol"] == "pooled" and set(r["protocols"]) == {"pooled", "smiyc"}
        assert r["protocols"]["smiyc"]["arithmetic"].startswith("SegmentMeIfYouCan")
        files = sorted((out / "anomaly_p" / method / "ObstacleTrack-all").glob("*.hdf5"), key=lambda p: p.stem)
        assert [p.stem for p in files] == fids
        maps = []
        for p in files:  # what the official loader reads: one dataset 'value', float16, full resolution, gzip 9
            with h5py.File(p, "r") as f:
                assert list(f.keys()) == ["value"]
                v = f["value"]
                assert v.dtype == np.float16 and v.shape == (H, W)
                assert v.compression == "gzip" and v.compression_opts == 9
                maps.append(v[()])
        ref = ref_pix_binary_class([ref_frame(s, a) for s, a in zip(maps, labels)])
        smiyc = r["protocols"]["smiyc"]
        for key in ("aupr", "auroc", "fpr95", "best_f1_threshold"):
            assert smiyc[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-15), key
        seg = ref_segeval(maps, labels, ref["best_f1_threshold"], 50, 10)
        for key in ("sIoU", "PPV", "mean_F1"):
            assert smiyc[key] == pytest.approx(seg[key], rel=1e-12, nan_ok=True), key
        with zipfile.ZipFile(out / f"smiyc_{method}.zip") as z:
            assert sorted(z.namelist()) == sorted(f"anomaly_p/{method}/ObstacleTrack-all/{p.name}" for p in files)
    assert report["export"]["files"] == {"msp": 20, "energy": 20}
    assert not list(out.rglob("*.tmp"))


def test_hidden_test_labels_scored_and_exported_not_evaluated(obstacle_track, tmp_path, capsys):
    out = tmp_path / "test"
    assert run_eval(base_cfg(obstacle_track, out, split="test"), tmp_path, "no_export") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "3 of 3 frames have no public label" in err and "export: smiyc" in err
    assert run_eval(base_cfg(obstacle_track, out, split="test", export="smiyc"), tmp_path, "export") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["evaluated"] is False and report["methods"]["msp"] == {"exported": 3}
    assert "Codabench" in report["reason"]
    assert sorted(p.name for p in (out / "anomaly_p" / "energy" / "ObstacleTrack-all").iterdir()) == \
        ["gravel_000.hdf5", "motorway_001.hdf5", "paving_002.hdf5"]
    assert "3 frames scored, not evaluated" in (out / "report.md").read_text()


def test_bad_export_settings_are_one_line_before_any_work(obstacle_track, tmp_path, capsys):
    for key, value, words in (("export", "csv", "export 'csv': choose one of none, smiyc"),
                              ("protocol", ["pooled", "smiyc2"], "protocol='smiyc2' is unknown"),
                              ("component_track", "road", "component_track 'road': choose auto")):
        out = tmp_path / f"bad_{key}"
        assert run_eval({**base_cfg(obstacle_track, out), key: value}, tmp_path, key) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and err.count("\n") == 0
        assert not out.exists()
    cfg = base_cfg(obstacle_track, tmp_path / "bad_name", export="smiyc")
    cfg["methods"] = [{"name": "msp/1", "score": "msp"}]
    assert run_eval(cfg, tmp_path, "name") == 2
    err = capsys.readouterr().err
    assert "'msp/1' cannot name a score file" in err and err.strip().count("\n") == 0


def test_exporter_refuses_out_of_range_and_other_sizes_before_writing(tmp_path):
    ex = SmiycExporter(tmp_path)
    with pytest.raises(ExportError, match="outside float16's range"):
        ex.write("m", "ObstacleTrack-all", "f", np.full((2, 3), 1e5, np.float32), (2, 3))
    with pytest.raises(ExportError, match=r"not at the image's full resolution \(4, 6\)"):
        ex.write("m", "ObstacleTrack-all", "f", np.zeros((2, 3), np.float32), (4, 6))
    assert not list(tmp_path.rglob("*.hdf5")) and not list(tmp_path.rglob("*.tmp"))
    path = ex.write("m", "ObstacleTrack-all", "f", np.array([[0.1, 65504.0, -3.0]], np.float32), (1, 3))
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["value"][()], np.array([[0.1, 65504.0, -3.0]], np.float16))
