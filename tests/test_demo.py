"""The demo pipeline on a tiny configuration: every stage runs, the report is complete, a second run reuses it."""

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import demo  # noqa: E402

METHODS = ["msp", "max_logit", "entropy", "energy", "sml", "kl_matching", "opengan_fea", "cls_fea"]


def tiny_config(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["data"] = {"train": 6, "val": 3, "test": 4, "outliers": 4, "height": 64, "width": 128}
    cfg["seg"]["model"]["options"] = {"encoder_depth": 3, "decoder_segmentation_channels": 32, "decoder_pyramid_channels": 32}
    cfg["seg"]["data"] = {"crop": [64, 128], "scale": [0.9, 1.1]}
    cfg["seg"]["train"] = {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2}
    cfg["heads"]["bank"] = {"closed_per_image": 100, "chunk_images": 4}
    cfg["heads"]["train"] = {"steps": 4, "eval_every": 2, "n_closed": 200, "n_open": 100, "n_fake": 100}
    cfg["eval"]["overlays"] = {"images": 2, "threshold": "tpr95"}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_demo_runs_every_stage_and_reuses_outputs(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--config", str(cfg), "--workers", "1"]) == 0
    first = capsys.readouterr().out
    assert first.count("running") == 4
    report = json.loads((out / "eval" / "report.json").read_text())
    assert list(report["methods"]) == METHODS
    for name, r in report["methods"].items():
        assert 0 <= r["auroc"] <= 1 and 0 <= r["aupr"] <= 1 and 0 <= r["fpr95"] <= 1, name
        assert r["images"] >= 1
    assert 0 <= report["miou"] <= 1
    for f in ("eval/report.md", "eval/per_image.csv", "eval/roc.png", "eval/pr.png", "eval/hist_opengan_fea.png",
              "config.yaml", "seg/checkpoints/best.pth", "heads/heads/opengan_fea/best.pth", "heads/bank/train/meta.json"):
        assert (out / f).is_file(), f
    assert len(list((out / "eval" / "overlays").glob("*.png"))) == 2
    assert "| opengan_fea |" in first
    # a second run finds every output and redoes nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "timings.json"
              and p.name != "config.yaml"}
    assert demo.main(["--out", str(out), "--config", str(cfg), "--workers", "1"]) == 0
    second = capsys.readouterr().out
    assert second.count("skipped") == 4 and "running" not in second
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert json.loads((out / "eval" / "report.json").read_text()) == report
    # a changed setting is never answered with the old output
    assert demo.main(["--out", str(out), "--config", str(cfg), "--workers", "1", "heads.train.steps=6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "heads: made with other inputs (changed: train)" in err[0]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
