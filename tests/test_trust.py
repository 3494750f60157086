"""Numbers a user can publish: each way a wrong or stale number used to come out, through the public
entry points (``run_evaluation``, the tools, ``AnomalyMetrics``). One test per item of the issue."""

import gc
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from anomseg.config import ConfigError
from anomseg.data import generate_synthetic
from anomseg.engine.evaluate import DEFAULTS, run_evaluation
from anomseg.files import StaleError
from anomseg.metrics import AnomalyMetrics
from anomseg.models import build_backbone
from anomseg.models.inference import predict
from anomseg.scores import StandardizedMaxLogit
from tests.conftest import random_image, tiled_label, write_png

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
BACKBONE = {"name": "smp:FPN:resnet18", "options": {"encoder_depth": 3, "decoder_segmentation_channels": 32,
                                                   "decoder_pyramid_channels": 32}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust") / "data"
    generate_synthetic(root, num_train=3, num_val=2, num_test=4, num_outliers=2, height=64, width=128, workers=1,
                       progress=False)
    return root


def config(data, out, **kw):
    cfg = json.loads(json.dumps(DEFAULTS))
    cfg.update(out=str(out), backbone=json.loads(json.dumps(BACKBONE)), save_every=1,
               overlays={"images": 0, "threshold": "tpr95"})
    cfg["data"].update(root=str(data))
    cfg["fit"]["max_images"] = 2
    cfg.update(kw)
    return cfg


COMPONENT_KEYS = ("sIoU", "PPV", "mean_F1", "gt_components", "pred_components", "component_threshold")


def test_1_components_of_each_method_are_its_own(data, tmp_path):
    both = run_evaluation(config(data, tmp_path / "both", components=True, component_track="obstacle",
                                 methods=[{"name": "msp"}, {"name": "energy"}]), progress=False)
    alone = run_evaluation(config(data, tmp_path / "alone", components=True, component_track="obstacle",
                                  methods=[{"name": "msp"}]), progress=False)
    got = {k: both["methods"]["msp"][k] for k in COMPONENT_KEYS}
    assert got == {k: alone["methods"]["msp"][k] for k in COMPONENT_KEYS}
    assert got != {k: both["methods"]["energy"][k] for k in COMPONENT_KEYS}  # the two maps really differ


def _maps(n=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = np.zeros((40, 40), np.uint8)
        a[10:25, 12:30] = 1
        a[0, :] = 255
        s = (rng.normal(size=(40, 40)) + 2.0 * (a == 1)).astype(np.float32)
        out.append((s, a))
    return out


def test_2_merged_components_outlive_the_other_evaluator():
    opts = dict(components=True, component_track="obstacle")
    maps = _maps()
    whole = AnomalyMetrics("pooled", **opts)
    for i, (s, a) in enumerate(maps):
        whole.update(s, a, ids=[i])
    a_ev, b_ev = AnomalyMetrics("pooled", **opts), AnomalyMetrics("pooled", **opts)
    for i, (s, a) in enumerate(maps):
        (a_ev if i % 2 else b_ev).update(s, a, ids=[i])
    a_ev.merge(b_ev)
    del b_ev
    gc.collect()  # the other evaluator is gone: its temporary spill folder must not be
    assert a_ev.compute() == whole.compute()


def test_3_probability_averaging_cannot_feed_logit_scores(data, tmp_path):
    with pytest.raises(ConfigError, match="inference.average: removed"):
        run_evaluation(config(data, tmp_path / "a", inference={"preset": "none", "scales": [0.5, 1.0], "flip": False,
                                                               "average": "probs"}), progress=False)
    with pytest.raises(ConfigError, match="no scale-1.0 pass"):
        run_evaluation(config(data, tmp_path / "b", inference={"preset": "none", "scales": [0.5, 0.75], "flip": False},
                              methods=[{"name": "cls", "head": str(tmp_path / "missing.pth")}]), progress=False)
    one = tmp_path / "one"  # CAOS feeds five inputs of 300-600 px short side whatever the image: one test image
    generate_synthetic(one, num_train=1, num_val=1, num_test=1, num_outliers=1, height=64, width=128, workers=1,
                       progress=False)
    caos = run_evaluation(config(one, tmp_path / "c", inference={"preset": "caos", "scales": [1.0], "flip": False},
                                 methods=[{"name": "energy"}, {"name": "max_mean_prob"}]), progress=False)
    assert caos["methods"]["energy"]["auroc"] != 0.5  # a constant map (energy of probabilities) gives exactly 0.5


def test_4_fitted_scores_are_fitted_under_the_evaluations_inference(data, tmp_path):
    inference = {"preset": "none", "scales": [0.5, 1.0], "flip": True}
    run_evaluation(config(data, tmp_path / "sml", inference=inference, methods=[{"name": "sml"}]), progress=False)
    saved = torch.load(tmp_path / "sml" / "fitted" / "sml.pt", weights_only=True)
    torch.manual_seed(0)  # the evaluation seeds the backbone the same way
    model = build_backbone(BACKBONE["name"], 13, **BACKBONE["options"])
    from anomseg.data import build_dataset

    ref = StandardizedMaxLogit(13)
    ds = build_dataset("streethazards", data, "train")
    samples = [ds[i] for i in range(2)]  # the evaluation fits on batches of equally sized images (FIT_BATCH)
    images = torch.from_numpy(np.stack([np.array(s["image"]) for s in samples]))
    out = predict(model, images, size=samples[0]["semantic"].shape, scales=(0.5, 1.0), flip=True)
    ref.update(out.logits, torch.from_numpy(np.stack([s["semantic"] for s in samples])))
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(saved["state"][key], value)
    assert saved["fingerprint"]["inference"] == {**inference, "amp": "none"}


def test_6_stale_evaluation_state_is_refused(data, tmp_path, capsys):
    import eval_caos

    cfg = config(data, tmp_path / "run", methods=[{"name": "msp"}])
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert eval_caos.main(["--config", str(path)]) == 0
    capsys.readouterr()
    report = (tmp_path / "run" / "report.json").read_text()
    # the same folder with one more method: the saved state no longer describes this run
    assert eval_caos.main(["--config", str(path), "methods=[{name: msp}, {name: entropy}]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "changed: methods" in err[0] and "resume: false" in err[0]
    # other backbone weights (another seed builds other random weights)
    assert eval_caos.main(["--config", str(path), "seed=1"]) == 2
    assert "changed: backbone_weights" in capsys.readouterr().err
    assert (tmp_path / "run" / "report.json").read_text() == report  # nothing already written changed
    assert eval_caos.main(["--config", str(path), "methods=[{name: msp}, {name: entropy}]", "resume=false"]) == 0


def test_6_stale_fitted_score_is_refused(data, tmp_path):
    cfg = config(data, tmp_path / "run", methods=[{"name": "sml"}])
    run_evaluation(cfg, progress=False)
    (tmp_path / "run" / "state" / "rank0.npz").unlink()  # only the fitted file is left to be stale
    cfg["fit"]["max_images"] = 3
    with pytest.raises(StaleError, match=r"sml.pt: made with other inputs \(changed: images\)"):
        run_evaluation(cfg, progress=False)


def test_7_config_typos_are_errors(data, tmp_path, capsys):
    import train_head
    import train_seg

    assert train_seg.main(["--config", str(ROOT / "configs" / "seg_synthetic_tiny.yaml"), "train.epoch=99"]) == 2
    assert "unknown key 'train.epoch'; did you mean 'train.epochs'?" in capsys.readouterr().err
    bad = tmp_path / "heads.yaml"
    bad.write_text(yaml.safe_dump({"out": str(tmp_path / "h"), "trian": {"steps": 4}}))
    assert train_head.main(["--config", str(bad)]) == 2
    assert "unknown key 'trian'; did you mean 'train'?" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()  # refused before anything ran


def test_11_dependency_floors():
    text = (ROOT / "pyproject.toml").read_text()
    floors = dict(re.findall(r'"([a-z-]+)>=([0-9.]+)"', text))
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(floors["torch"]) >= (2, 3)
    assert as_tuple(floors["segmentation-models-pytorch"]) >= (0, 5)
    assert as_tuple(floors["albumentations"]) >= (2, 0)


@pytest.fixture(scope="module")
def folder_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for i in range(3):
        write_png(root / "images" / f"{i}.png", random_image(rng, 64, 128))
        write_png(root / "labels_masks" / f"{i}.png", tiled_label([0, 0, 0, 1, 255], 64, 128))
    return root


def test_12_fitted_scores_on_an_evaluation_only_set(data, folder_set, tmp_path):
    cfg = config(data, tmp_path / "no_fit", methods=[{"name": "sml"}])
    cfg["data"] = {"name": "folder", "root": str(folder_set), "split": None, "options": {}}
    with pytest.raises(ConfigError, match=r"method 'sml' is fitted on split 'train' of dataset 'folder'.*fit: \{data"):
        run_evaluation(cfg, progress=False)
    cfg["out"] = str(tmp_path / "fit")
    cfg["fit"]["data"] = {"name": "streethazards", "root": str(data)}
    report = run_evaluation(cfg, progress=False)
    assert 0 <= report["methods"]["sml"]["auroc"] <= 1


def test_13_folder_set_kl_matching_and_valid_report(data, folder_set, tmp_path):
    cfg = config(data, tmp_path / "kl", methods=[{"name": "kl_matching"}, {"name": "msp"}])
    cfg["data"] = {"name": "folder", "root": str(folder_set), "split": None,
                   "options": {"class_names": [f"c{i}" for i in range(13)]}}
    cfg["fit"]["data"] = {"name": "streethazards", "root": str(data)}
    run_evaluation(cfg, progress=False)
    text = (tmp_path / "kl" / "report.json").read_text()
    report = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in report.json is not JSON"))
    assert report["miou"] is None and report["split"] == "all"
    assert "None" not in (tmp_path / "kl" / "report.md").read_text().splitlines()[0]
    # no class names at all: kl_matching takes K from the backbone
    cfg["data"]["options"] = {}
    cfg["out"] = str(tmp_path / "kl2")
    assert "kl_matching" in run_evaluation(cfg, progress=False)["methods"]


def test_14_merging_evaluators_updated_without_ids():
    maps = _maps(4, seed=1)
    whole, a_ev, b_ev = AnomalyMetrics(), AnomalyMetrics(), AnomalyMetrics()
    for s, a in maps:
        whole.update(s, a)
    for s, a in maps[:2]:
        a_ev.update(s, a)
    for s, a in maps[2:]:
        b_ev.update(s, a)
    a_ev.merge(b_ev)
    assert a_ev.compute() == whole.compute() and a_ev.per_image() == whole.per_image()
    explicit = AnomalyMetrics()
    explicit.update(*maps[0], ids=[0])
    with pytest.raises(Exception, match="evaluated in both shards; pass each image's global index"):
        other = AnomalyMetrics()
        other.update(*maps[1], ids=[0])
        explicit.merge(other)
