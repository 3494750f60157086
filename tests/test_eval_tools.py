"""tools/eval_caos.py, tools/visualize.py and the folder adapter, on tiny synthetic data."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import anomseg.engine.evaluate as evaluate
from anomseg.data import DatasetError, build_dataset, generate_synthetic
from anomseg.heads.io import make_head, save_head
from anomseg.models.identity import weights_hash
from anomseg.models import build_backbone
from tests.conftest import random_image, tiled_label, write_png

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = {"name": "smp:FPN:resnet18", "options": {"encoder_depth": 3, "decoder_segmentation_channels": 32,
                                                   "decoder_pyramid_channels": 32}}


def test_folder_adapter(tmp_path, rng):
    for name, suffix in (("a", "_labels_semantic.png"), ("b", ".png")):
        write_png(tmp_path / "images" / f"{name}.png", random_image(rng, 6, 8))
        write_png(tmp_path / "labels_masks" / f"{name}{suffix}", tiled_label([0, 1, 255], 6, 8))
    ds = build_dataset("folder", tmp_path, None)
    assert [r.name for r in ds.records] == ["a", "b"]
    s = ds[1]
    raw = tiled_label([0, 1, 255], 6, 8)
    np.testing.assert_array_equal(s["anomaly"], raw)
    assert (s["semantic"] == 255).all()
    write_png(tmp_path / "labels_masks" / "a_labels_semantic.png", tiled_label([0, 2], 6, 8))
    with pytest.raises(DatasetError, match=r"label values \[2\]"):
        ds[0]
    write_png(tmp_path / "images" / "c.jpg", random_image(rng, 6, 8))
    with pytest.raises(DatasetError, match="c_labels_semantic.png: mask of image"):
        build_dataset("folder", tmp_path, None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    data = tmp / "data"
    generate_synthetic(data, num_train=4, num_val=2, num_test=5, num_outliers=2, height=64, width=128, workers=1, progress=False)
    torch.manual_seed(0)  # the evaluation seeds the backbone the same way: same weights, same hash
    model = build_backbone(BACKBONE["name"], 13, **BACKBONE["options"])
    head = make_head("cls_fea", model.feature_dim)
    save_head(tmp / "cls.pth", head, {"weights": weights_hash(model)})
    cfg = {"out": str(tmp / "run"), "data": {"name": "streethazards", "root": str(data), "split": "test"},
           "backbone": BACKBONE, "save_every": 1, "fit": {"max_images": 3},
           "methods": [{"name": "msp"}, {"name": "energy"}, {"name": "sml"}, {"name": "kl_matching"},
                       {"name": "cls_fea", "head": str(tmp / "cls.pth")}],
           "overlays": {"images": 2, "threshold": "tpr95"}}
    return tmp, cfg


def run_cfg(cfg, tmp, name, extra=()):
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    sys.path.insert(0, str(ROOT / "tools"))
    import eval_caos

    return eval_caos.main(["--config", str(path), *extra])


def test_eval_end_to_end(setup):
    tmp, cfg = setup
    assert run_cfg(cfg, tmp, "base") == 0
    out = Path(cfg["out"])
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"] == "per_image" and report["split"] == "test" and report["images"] == 5
    assert set(report["methods"]) == {"msp", "energy", "sml", "kl_matching", "cls_fea"}
    for r in report["methods"].values():
        assert 0 <= r["auroc"] <= 1 and 0 <= r["aupr"] <= 1 and 0 <= r["fpr95"] <= 1
        assert r["images"] + r["skipped"] == 5
    assert 0 <= report["miou"] <= 1
    assert {k: report["config"]["backbone"][k] for k in BACKBONE} == BACKBONE
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 5 * report["methods"]["msp"]["images"] and {r["method"] for r in rows} == set(report["methods"])
    assert "| msp |" in (out / "report.md").read_text()
    for f in ("roc.png", "pr.png", "hist_msp.png", "hist_cls_fea.png", "config.yaml"):
        assert (out / f).is_file(), f
    assert len(list((out / "overlays").glob("*.png"))) == 2
    # the visualizer, from Python and the command line, with the three kinds of threshold
    paths = evaluate.render_overlays(out, [3], threshold="top5%", out_dir=tmp / "viz", progress=False)
    assert len(paths) == 1 and paths[0].stat().st_size > 0
    sys.path.insert(0, str(ROOT / "tools"))
    import visualize

    assert visualize.main([str(out), "--images", "1", "4", "--threshold", "0.5", "--out", str(tmp / "viz2")]) == 0
    assert visualize.main([str(out), "--first", "1", "--out", str(tmp / "viz3")]) == 0
    assert len(list((tmp / "viz2").glob("*.png"))) == 2 and len(list((tmp / "viz3").glob("*.png"))) == 1


def test_interrupted_evaluation_resumes(setup, monkeypatch):
    tmp, cfg = setup
    ref_cfg = dict(cfg, out=str(tmp / "ref"))
    assert run_cfg(ref_cfg, tmp, "ref") == 0
    cut = dict(cfg, out=str(tmp / "cut"))
    real_predict, calls = evaluate.predict_with, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2 + 4:  # 2 batched calls fit SML (3 train images) and KL matching (2 val images)
            raise KeyboardInterrupt("killed")  # then images 0-2 are done and image 3 dies
        return real_predict(*a, **k)

    monkeypatch.setattr(evaluate, "predict_with", dying)
    monkeypatch.setattr(evaluate, "_write_worst", lambda *a, **k: None)  # its passes come after the loop counted here
    with pytest.raises(KeyboardInterrupt):
        run_cfg(cut, tmp, "cut")
    calls["n"] = -100  # no more failures; count the images evaluated after the restart
    assert run_cfg(cut, tmp, "cut") == 0
    assert calls["n"] == -100 + 2  # fits cached, 3 images done before the kill: only 2 are evaluated
    a = json.loads((tmp / "ref" / "report.json").read_text())
    b = json.loads((tmp / "cut" / "report.json").read_text())
    assert a["methods"] == b["methods"] and a["miou"] == b["miou"]


def test_torchrun_two_processes_equal_one(setup):
    """Sharded over 2 gloo ranks and merged equals one run, SMIYC components included; the data check's count
    warning is said once, not once per rank."""
    import shutil

    tmp, cfg = setup
    data = tmp / "data_one_lost"  # a copy whose marker counts one test frame more than it holds: one warning
    shutil.copytree(cfg["data"]["root"], data)
    meta = json.loads((data / "synthetic.json").read_text())
    meta["counts"]["test"] += 1
    (data / "synthetic.json").write_text(json.dumps(meta))
    cfg = dict(cfg, components=True, component_track="obstacle", data=dict(cfg["data"], root=str(data)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # the same threads: the same float sums
    tool = str(ROOT / "tools" / "eval_caos.py")
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])):
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(dict(cfg, out=str(tmp / name))))
        proc = subprocess.run([sys.executable, *launcher, tool, "--config", str(tmp / f"{name}.yaml")],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr.count("warning: ") == 1 and "the synthetic set was generated with" in proc.stderr, name
    a = json.loads((tmp / "one" / "report.json").read_text())
    b = json.loads((tmp / "two" / "report.json").read_text())
    assert a["methods"] == b["methods"] and a["miou"] == b["miou"]
    assert all("sIoU" in r and "mean_F1" in r for r in a["methods"].values())
