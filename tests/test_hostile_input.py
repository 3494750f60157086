"""Hostile and broken input, one row per case: every tool answers with one ``error:`` line and exit code
2 (or a correct result), nothing executes from an output folder, and nothing already written changes.

The table CASES is the place for the next bad input: add a row (tool, what to break, argv, the words
the error must contain). ``setup`` functions get the shared fixture ``env`` and a fresh tmp folder.
"""

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from anomseg.data import generate_synthetic
from anomseg.heads.io import make_head, save_head
from anomseg.models import build_backbone, save_checkpoint, weights_hash
from tests.conftest import random_image, write_png

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import demo  # noqa: E402
import eval_caos  # noqa: E402
import train_head  # noqa: E402
import train_seg  # noqa: E402
import visualize  # noqa: E402

from anomseg.data.synthetic import main as make_synthetic  # noqa: E402

SMALL = {"encoder_depth": 3, "decoder_segmentation_channels": 32, "decoder_pyramid_channels": 32}
TOOLS = {"eval": eval_caos.main, "seg": train_seg.main, "heads": train_head.main, "viz": visualize.main,
         "demo": demo.main, "synthetic": make_synthetic}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Synthetic data, a 13-class and a 19-class checkpoint, a head, a finished evaluation and a finished
    head training (with its bank), shared by the cases that break a copy of them."""
    tmp = tmp_path_factory.mktemp("hostile")
    data = tmp / "data"
    generate_synthetic(data, num_train=3, num_val=2, num_test=3, num_outliers=2, height=64, width=128, workers=1,
                       progress=False)
    torch.manual_seed(0)
    model = build_backbone("smp:FPN:resnet18", 13, **SMALL)
    save_checkpoint(tmp / "seg13.pth", model)
    save_checkpoint(tmp / "seg19.pth", build_backbone("smp:FPN:resnet18", 19, **SMALL))
    save_head(tmp / "cls.pth", make_head("cls_fea", model.feature_dim), {"weights": weights_hash(model)})
    eval_cfg = {"out": str(tmp / "eval"), "data": {"root": str(data)}, "backbone": {"checkpoint": str(tmp / "seg13.pth")},
                "methods": [{"name": "msp"}, {"name": "cls_fea", "head": str(tmp / "cls.pth")}], "save_every": 1,
                "overlays": {"images": 1, "threshold": "tpr95"}}
    (tmp / "eval.yaml").write_text(yaml.safe_dump(eval_cfg))
    assert eval_caos.main(["--config", str(tmp / "eval.yaml")]) == 0
    heads_cfg = {"out": str(tmp / "heads"), "data": {"root": str(data), "paste": {"pool": str(data / "outliers")}},
                 "backbone": {"checkpoint": str(tmp / "seg13.pth")}, "bank": {"closed_per_image": 50, "chunk_images": 2},
                 "heads": [{"name": "cls_fea"}], "train": {"steps": 2, "eval_every": 1, "n_closed": 50, "n_open": 20,
                                                           "n_fake": 20}}
    (tmp / "heads.yaml").write_text(yaml.safe_dump(heads_cfg))
    assert train_head.main(["--config", str(tmp / "heads.yaml")]) == 0
    seg_cfg = yaml.safe_load((ROOT / "configs" / "seg_synthetic_tiny.yaml").read_text())
    seg_cfg.update(out=str(tmp / "seg"))
    seg_cfg["data"].update(root=str(data), crop=[64, 128], val_split=None)
    seg_cfg["model"]["options"] = {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}
    seg_cfg["train"].update(epochs=1, batch_size=2, max_steps_per_epoch=1)
    (tmp / "seg.yaml").write_text(yaml.safe_dump(seg_cfg))
    assert train_seg.main(["--config", str(tmp / "seg.yaml")]) == 0
    return tmp


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _yaml(tmp, name, obj):
    path = tmp / name
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return str(path)


def _eval_cfg(env, tmp, **over):
    cfg = yaml.safe_load((env / "eval.yaml").read_text())
    cfg["out"] = str(tmp / "out")
    cfg.update(over)
    return _yaml(tmp, "cfg.yaml", cfg)


def _heads_copy(env, tmp):
    _copy(env / "heads", tmp / "heads")
    cfg = yaml.safe_load((env / "heads.yaml").read_text())
    cfg["out"] = str(tmp / "heads")
    return _yaml(tmp, "heads.yaml", cfg)


def _seg_copy(env, tmp):
    _copy(env / "seg", tmp / "seg")
    cfg = yaml.safe_load((env / "seg.yaml").read_text())
    cfg["out"] = str(tmp / "seg")
    return _yaml(tmp, "seg.yaml", cfg)


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# -- setups (each returns argv) -------------------------------------------------------------------

def planted_pickle(env, tmp):
    _copy(env / "eval", tmp / "out")
    marker = tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp / "out" / "state" / "rank0.npz").write_bytes(pickle.dumps({"metrics": Evil()}))
    (tmp / "out" / "report.json").unlink()  # the run is not finished: it would resume from the state
    return ["--config", _eval_cfg(env, tmp)]


def finished_eval(env, tmp, *over):
    _copy(env / "eval", tmp / "out")
    return ["--config", _eval_cfg(env, tmp), *over]


def locked(env, tmp):
    (tmp / "out").mkdir()
    import socket

    (tmp / "out" / ".lock").write_text(f"{socket.gethostname()}:{os.getpid()}")  # a live process holds it
    return ["--config", _eval_cfg(env, tmp)]


def truncated_head(env, tmp):
    (tmp / "cls.pth").write_bytes((env / "cls.pth").read_bytes()[:200])
    return ["--config", _eval_cfg(env, tmp, methods=[{"name": "cls_fea", "head": str(tmp / "cls.pth")}])]


def truncated_seg(env, tmp):
    (tmp / "seg.pth").write_bytes((env / "seg13.pth").read_bytes()[:300])
    return ["--config", _eval_cfg(env, tmp, backbone={"checkpoint": str(tmp / "seg.pth")})]


def folder_255(env, tmp):
    rng = np.random.default_rng(0)
    for i in range(2):
        write_png(tmp / "set" / "images" / f"{i}.png", random_image(rng, 32, 64))
        mask = np.zeros((32, 64), np.uint8)
        mask[5:15, 5:20] = 255  # meant as anomaly, but 255 is void
        write_png(tmp / "set" / "labels_masks" / f"{i}.png", mask)
    return ["--config", _eval_cfg(env, tmp, data={"name": "folder", "root": str(tmp / "set"), "split": None},
                                  methods=[{"name": "msp"}])]


def bomb(env, tmp, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x128 images are then "too large"
    return ["--config", _eval_cfg(env, tmp)]


def foreign_part(env, tmp):
    argv = _heads_copy(env, tmp)
    other = tmp / "other"
    cfg = yaml.safe_load(Path(argv).read_text())
    cfg.update(out=str(other), seed=5)  # another sampling seed: another bank
    assert train_head.main(["--config", _yaml(tmp, "other.yaml", cfg)]) == 0
    part = tmp / "heads" / "bank" / "train" / "part-00000.h5"
    part.write_bytes((other / "bank" / "train" / "part-00000.h5").read_bytes())
    (tmp / "heads" / "heads" / "cls_fea" / "last.pth").unlink()  # so that the head is trained again
    return ["--config", argv]


def truncated_part(env, tmp):
    argv = _heads_copy(env, tmp)
    _truncate(tmp / "heads" / "bank" / "train" / "part-00001.h5")
    (tmp / "heads" / "heads" / "cls_fea" / "last.pth").unlink()
    return ["--config", argv]


def truncated_meta(env, tmp):
    argv = _heads_copy(env, tmp)
    _truncate(tmp / "heads" / "bank" / "train" / "meta.json")
    return ["--config", argv]


def seg_other_arch(env, tmp):
    return ["--config", _seg_copy(env, tmp), "model.backbone=smp:FPN:resnet18",
            "model.options={encoder_depth: 3, decoder_segmentation_channels: 32, decoder_pyramid_channels: 32}",
            "train.epochs=2"]


def seg_truncated_last(env, tmp):
    argv = _seg_copy(env, tmp)
    _truncate(tmp / "seg" / "checkpoints" / "last.pth")
    return ["--config", argv, "train.epochs=2"]


def seg_cfg(env, tmp, *over):
    cfg = yaml.safe_load((env / "seg.yaml").read_text())
    cfg["out"] = str(tmp / "seg")
    return ["--config", _yaml(tmp, "seg.yaml", cfg), *over]


def heads_cfg(env, tmp, *over):
    cfg = yaml.safe_load((env / "heads.yaml").read_text())
    cfg["out"] = str(tmp / "heads")
    return ["--config", _yaml(tmp, "heads.yaml", cfg), *over]


def heads_stale(env, tmp):
    return ["--config", _heads_copy(env, tmp), "train.lr_d=0.001", "train.steps=3"]


def out_is_file(env, tmp):
    (tmp / "taken").write_text("x")
    return ["--config", _eval_cfg(env, tmp, out=str(tmp / "taken"))]


def out_under_file(env, tmp):
    (tmp / "taken").write_text("x")
    return ["--config", _eval_cfg(env, tmp, out=str(tmp / "taken" / "sub"))]


def viz_into_panel_folder(env, tmp):
    _copy(env / "eval", tmp / "out")
    target = tmp / "panels"
    panel = sorted((env / "eval" / "overlays").glob("0000_*.png"))[0].name
    (target / panel).mkdir(parents=True)  # the panel's own path is a folder
    return [str(tmp / "out"), "--images", "0", "--out", str(target)]


E = "eval"
CASES = [
    # (id, tool, setup(env, tmp) -> argv, words the one error line must contain)
    ("config-missing", E, lambda e, t: ["--config", str(t / "nope.yaml")], "config not found"),
    ("config-is-a-list", E, lambda e, t: ["--config", _yaml(t, "l.yaml", "- a\n- b\n")], "must be a mapping"),
    ("config-bad-yaml", E, lambda e, t: ["--config", _yaml(t, "b.yaml", "a: [1, 2\n")], "not valid YAML"),
    ("save_every-string", E, lambda e, t: ["--config", _eval_cfg(e, t, save_every="5")], "save_every = '5' must be an integer"),
    ("methods-string", E, lambda e, t: ["--config", _eval_cfg(e, t, methods="msp")], "methods must be a list"),
    ("unknown-key", E, lambda e, t: ["--config", _eval_cfg(e, t, protocl="caos")], "did you mean 'protocol'"),
    ("override-list-index", E, lambda e, t: ["--config", _eval_cfg(e, t), "methods.7.name=x"], "is a list of 2"),
    ("override-no-equals", E, lambda e, t: ["--config", _eval_cfg(e, t), "protocol"], "write key.sub=value"),
    ("override-bad-type", E, lambda e, t: ["--config", _eval_cfg(e, t), "components=maybe"], "must be true/false"),
    ("unknown-protocol", E, lambda e, t: ["--config", _eval_cfg(e, t, protocol="fishy")], "protocol='fishy' is unknown"),
    ("unknown-preset", E, lambda e, t: ["--config", _eval_cfg(e, t), "inference.preset=csail"], "preset 'csail'"),
    ("unknown-amp", E, lambda e, t: ["--config", _eval_cfg(e, t), "inference.amp=fp8"], "inference.amp 'fp8'"),
    ("negative-workers", E, lambda e, t: ["--config", _eval_cfg(e, t, workers=-1)], "workers=-1"),
    ("unknown-score", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[{"name": "mspp"}])], "unknown method 'mspp'; did you mean 'msp'"),
    ("duplicate-method", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[{"name": "msp"}, {"name": "msp"}])],
     "names must be unique"),
    ("out-is-a-file", E, out_is_file, "is not a folder"),
    ("out-under-a-file", E, out_under_file, "cannot create the output folder"),
    ("out-locked", E, locked, "another run"),
    ("head-missing", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[{"name": "h", "head": str(t / "x.pth")}])],
     "head checkpoint of method 'h' not found"),
    ("head-truncated", E, truncated_head, "cannot be read as a head checkpoint"),
    ("seg-checkpoint-truncated", E, truncated_seg, "cannot be read with torch.load"),
    ("seg-checkpoint-missing", E, lambda e, t: ["--config", _eval_cfg(e, t, backbone={"checkpoint": str(t / "x.pth")})],
     "checkpoint not found"),
    ("19-class-checkpoint-13-class-data", E,
     lambda e, t: ["--config", _eval_cfg(e, t, backbone={"checkpoint": str(e / "seg19.pth")})],
     "predicts 19 classes but streethazards/test has 13"),
    ("planted-pickle-state", E, planted_pickle, "not a readable anomseg state file"),
    ("finished-eval-one-more-method", E, lambda e, t: finished_eval(e, t, "methods=[{name: msp}, {name: entropy}]"),
     "methods); it is not reused"),
    ("head-with-multiscale", E, lambda e, t: ["--config", _eval_cfg(e, t), "inference.scales=[0.5, 0.75]"],
     "no scale-1.0 pass"),
    ("folder-masks-255-as-anomaly", E, folder_255, "255 means void"),
    ("dataset-root-missing", E, lambda e, t: ["--config", _eval_cfg(e, t, data={"root": str(t / "nowhere")})], "nowhere"),
    ("decompression-bomb", E, bomb, "image too large"),
    ("seg-typo", "seg", lambda e, t: seg_cfg(e, t, "train.epoch=99"), "did you mean 'train.epochs'"),
    ("seg-batch-size-0", "seg", lambda e, t: seg_cfg(e, t, "train.batch_size=0"), "train.batch_size=0 must be at least 1"),
    ("seg-batch-above-images", "seg", lambda e, t: seg_cfg(e, t, "train.batch_size=64"), "fewer than train.batch_size=64"),
    ("seg-unknown-loss", "seg", lambda e, t: seg_cfg(e, t, "train.loss.name=focal"), "train.loss.name='focal' is unknown"),
    ("seg-bad-finetune", "seg", lambda e, t: seg_cfg(e, t, "train.finetune=some"), "train.finetune='some'"),
    ("seg-resume-other-architecture", "seg", seg_other_arch, "changed: model"),
    ("seg-truncated-last", "seg", seg_truncated_last, "cannot be read"),
    ("seg-pretrained-missing", "seg", lambda e, t: seg_cfg(e, t, f"model.pretrained={t / 'in.pth'}"),
     "no ImageNet initialisation is defined"),
    ("heads-typo-section", "heads", lambda e, t: heads_cfg(e, t, "trian={steps: 4}"), "did you mean 'train'"),
    ("heads-steps-word", "heads", lambda e, t: heads_cfg(e, t, "train.steps=four"), "train.steps = 'four' must be an integer"),
    ("heads-unknown-head", "heads", lambda e, t: heads_cfg(e, t, "heads=[{name: clsfea}]"), "unknown head 'clsfea'"),
    ("heads-bad-option", "heads", lambda e, t: heads_cfg(e, t, "heads=[{name: knn, options: {kk: 3}}]"), "bad option"),
    ("heads-foreign-bank-part", "heads", foreign_part, "belongs to another bank"),
    ("heads-truncated-part", "heads", truncated_part, "unreadable or truncated part"),
    ("heads-truncated-meta", "heads", truncated_meta, "unreadable or truncated"),
    ("heads-stale-training", "heads", heads_stale, "changed: train"),
    ("viz-no-report", "viz", lambda e, t: [str(t)], "no evaluation report"),
    ("viz-index-out-of-range", "viz", lambda e, t: finished_eval(e, t)[:0] + [str(t / "out"), "--images", "99"],
     "outside the 3 images"),  # finished_eval copies the evaluation; the argv is the tool's own
    ("viz-target-is-a-folder", "viz", viz_into_panel_folder, "is a folder"),
    ("synthetic-no-val", "synthetic", lambda e, t: [str(t / "s"), "--val", "0"], "num_val=0: need at least 1"),
    ("synthetic-other-settings", "synthetic", lambda e, t: [str(e / "data"), "--train", "5"], "other settings"),
    ("demo-unknown-key", "demo", lambda e, t: ["--out", str(t / "d"), "seg.train.epoch=3"], "did you mean 'seg.train.epochs'"),
]


def _snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(case, env, tmp_path, capsys, monkeypatch):
    name, tool, setup, words = case
    argv = setup(env, tmp_path, monkeypatch) if setup is bomb else setup(env, tmp_path)
    before = _snapshot(tmp_path)
    shared = _snapshot(env)
    capsys.readouterr()
    code = TOOLS[tool](argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "it/s]" not in line
           and "s/it]" not in line]
    assert code == 2, (name, err)
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (name, err)
    assert "Traceback" not in err[0]
    after = _snapshot(tmp_path)
    for p, content in before.items():  # nothing already written changed (or vanished)
        if p.name == ".lock" and name != "out-locked":
            continue
        assert after.get(p) == content, (name, p)
    assert _snapshot(env) == shared, name
    assert not (tmp_path / "pwned").exists()  # nothing executed from an output folder


def test_the_table_is_large_enough():
    assert len(CASES) >= 40
