"""The demo pipeline on a tiny configuration: every stage runs, the report is complete, a second run reuses it."""

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import demo  # noqa: E402

PIXEL = ["msp", "max_logit", "entropy", "energy", "sml", "kl_matching", "cores", "opengan_fea", "cls_fea", "uem",
         "pixood"]
MASKS = ["rba", "eam", "m2a", "rba_finetuned"]  # on the demo's Mask2Former and its RbA fine-tuning
METHODS = PIXEL + MASKS
FULL_METHODS = PIXEL + ["opengan0_fea", "dias_fea"] + MASKS + ["uno"]  # `anomseg demo --full` (configs/demo_full.yaml)


def test_the_full_profile_has_every_head_and_the_default_every_family():
    full = yaml.safe_load((ROOT / "configs" / "demo_full.yaml").read_text())
    assert [m["name"] for m in full["eval"]["methods"]] == FULL_METHODS
    assert [h["name"] for h in full["heads"]["heads"]] == ["opengan_fea", "cls_fea", "uem", "pixood", "opengan0_fea",
                                                           "dias_fea"]
    default = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    # post-hoc, fitted, CORES and trained heads, each evaluated
    assert {"msp", "sml", "kl_matching", "cores", "opengan_fea"} <= {m["name"] for m in default["eval"]["methods"]}


def tiny_config(tmp_path):
    """The demo's config shrunk to seconds (also the ``tiny_demo`` fixture's, tests/conftest.py)."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["data"] = {"train": 6, "val": 3, "test": 4, "outliers": 4, "height": 64, "width": 128}
    # the whole ResNet-18 encoder: the demo's Mask2Former starts from it (init_encoder: seg)
    cfg["seg"]["model"]["options"] = {"decoder_segmentation_channels": 32, "decoder_pyramid_channels": 32}
    cfg["seg"]["data"] = {"crop": [64, 128], "scale": [0.9, 1.1]}
    cfg["seg"]["train"] = {"epochs": 1, "batch_size": 2, "max_steps_per_epoch": 2}
    for seg in cfg["segmenters"].values():
        seg["data"].update(crop=[64, 128], scale=[0.9, 1.1])
        seg["train"].update(epochs=1, batch_size=2, max_steps_per_epoch=2)
    cfg["heads"]["bank"] = {"closed_per_image": 100, "chunk_images": 4}
    cfg["heads"]["train"] = {"steps": 4, "eval_every": 2, "n_closed": 200, "n_open": 100, "n_fake": 100}
    for head in cfg["heads"]["heads"]:  # the shared tiny settings for every head
        head.pop("train", None)
    cfg["eval"]["overlays"] = {"images": 2, "threshold": "tpr95"}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_demo_runs_every_stage_and_reuses_outputs(tiny_demo, capsys):
    out, cfg, first = tiny_demo["out"], tiny_demo["config"], tiny_demo["stdout"]
    assert first.count("running") == 7  # data, segmenter, m2f, m2f_rba, heads, evaluation, pipeline
    report = json.loads((out / "eval" / "report.json").read_text())
    assert list(report["methods"]) == METHODS
    for name, r in report["methods"].items():
        assert 0 <= r["auroc"] <= 1 and 0 <= r["aupr"] <= 1 and 0 <= r["fpr95"] <= 1, name
        assert r["images"] >= 1
    assert 0 <= report["miou"] <= 1
    for f in ("eval/report.md", "eval/report.html", "eval/per_image.csv", "eval/roc.png", "eval/pr.png", "eval/hist_opengan_fea.png",
              "config.yaml", "seg/checkpoints/best.pth", "m2f/checkpoints/best.pth", "m2f_rba/checkpoints/best.pth",
              "heads/heads/opengan_fea/best.pth", "heads/bank/train/meta.json"):
        assert (out / f).is_file(), f
    assert len(list((out / "eval" / "overlays").glob("*.png"))) == 2
    assert "| opengan_fea |" in first
    # a second run finds every output and redoes nothing
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "timings.json"
              and p.name != "config.yaml"}
    assert demo.main(["--out", str(out), "--config", str(cfg), "--workers", "1"]) == 0
    second = capsys.readouterr().out
    assert second.count("skipped") == 7 and "running" not in second
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert json.loads((out / "eval" / "report.json").read_text()) == report
    # a changed setting is never answered with the old output
    assert demo.main(["--out", str(out), "--config", str(cfg), "--workers", "1", "heads.train.steps=6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "heads: made with other inputs (changed: train)" in err[0]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- one-call example")
    return text[text.index("```python\n", start) + len("```python\n"):text.index("```\n", text.index("```python", start) + 9)]


def test_readme_one_call_example_runs_on_the_demo_outputs(tiny_demo, tmp_path):
    import numpy as np
    import pytest
    import torch

    import anomseg

    out = tiny_demo["out"]
    scope = {}
    exec(compile(readme_example().replace("runs/demo", str(out)), "README.md", "exec"), scope)
    seg, scores, mask = scope["seg"], scope["scores"], scope["mask"]
    test = anomseg.build_dataset("streethazards", out / "data", "test")
    assert scores.dtype == np.float32 and scores.shape == test[0]["anomaly"].shape
    assert mask.dtype == bool and mask.shape == scores.shape
    # the loaded pipeline scores as the saved one, and as the evaluation did (its float16 overlay cache)
    np.testing.assert_array_equal(seg(test[0]["image"]), scores)
    cached = np.load(out / "eval" / "state" / "overlays" / "0_opengan_fea.npy").astype(np.float32)
    np.testing.assert_allclose(scores, cached, rtol=2e-3, atol=2e-3)
    # other backbone weights are refused
    other = torch.load(out / "seg" / "checkpoints" / "best.pth", weights_only=True)
    first = next(k for k, v in other["state_dict"].items() if v.is_floating_point())
    other["state_dict"][first] = other["state_dict"][first] + 1
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(anomseg.PipelineError, match="has weights .* the pipeline was made with"):
        anomseg.AnomalySegmenter.load(out / "opengan_fea.pipeline.pt", checkpoint=str(tmp_path / "other.pth"))
    # a fitted method: fitted once, its state travels in the pipeline file
    train = anomseg.build_dataset("streethazards", out / "data", "train")
    sml = anomseg.AnomalySegmenter.from_files(checkpoint=str(out / "seg" / "checkpoints" / "best.pth"), method="sml",
                                              fit_data=train)
    sml.save(tmp_path / "sml.pt")
    again = anomseg.AnomalySegmenter.load(tmp_path / "sml.pt")
    np.testing.assert_array_equal(again(test[1]["image"]), sml(test[1]["image"]))
    with pytest.raises(anomseg.PipelineError, match="fit_data"):
        anomseg.AnomalySegmenter.from_files(checkpoint=str(out / "seg" / "checkpoints" / "best.pth"), method="sml")
