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
sys.path.insert(0, str(ROOT / "datasets"))
import prepare_bdd_anomaly  # noqa: E402
import eval_caos  # noqa: E402
import train_head  # noqa: E402
import train_seg  # noqa: E402
import visualize  # noqa: E402

from anomseg.data.synthetic import main as make_synthetic  # noqa: E402

SMALL = {"encoder_depth": 3, "decoder_segmentation_channels": 32, "decoder_pyramid_channels": 32}
TOOLS = {"eval": eval_caos.main, "seg": train_seg.main, "heads": train_head.main, "viz": visualize.main,
         "demo": demo.main, "synthetic": make_synthetic, "bdd": prepare_bdd_anomaly.main}


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
    save_head(tmp / "opengan.pth", make_head("opengan_fea", model.feature_dim), {"weights": weights_hash(model)})
    knn = make_head("knn", model.feature_dim, k=3)
    rows = torch.randn(200, model.feature_dim)
    knn.fit(lambda: iter([(rows, torch.zeros(200, dtype=torch.int64))]), sample=rows, rows=200)
    save_head(tmp / "knn.pth", knn, {"weights": weights_hash(model)})
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
     "checkpoint not found; check the path"),
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
    ("seg-batch-size-0", "seg", lambda e, t: seg_cfg(e, t, "train.batch_size=0"),
     "train: option batch_size = 0 must be an integer >= 1"),
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
    ("heads-bad-option", "heads", lambda e, t: heads_cfg(e, t, "heads=[{name: knn, options: {kk: 3}}]"),
     "unknown option 'kk'"),
    ("heads-foreign-bank-part", "heads", foreign_part, "belongs to another bank (seed: part 5 vs meta.json 0)"),
    ("heads-truncated-part", "heads", truncated_part, "unreadable or truncated part"),
    ("heads-truncated-meta", "heads", truncated_meta, "unreadable or truncated"),
    ("heads-stale-training", "heads", heads_stale, "changed: train"),
    ("viz-no-report", "viz", lambda e, t: [str(t)], "no evaluation report"),
    ("viz-index-out-of-range", "viz", lambda e, t: finished_eval(e, t)[:0] + [str(t / "out"), "--images", "99"],
     "outside the 3 images of test; give --images between 0 and 2"),  # finished_eval copies the evaluation; the argv is the tool's own
    ("viz-target-is-a-folder", "viz", viz_into_panel_folder, "is a folder"),
    ("synthetic-no-val", "synthetic", lambda e, t: [str(t / "s"), "--val", "0"], "num_val=0: need at least 1; pass --val 1 or more"),
    ("synthetic-other-settings", "synthetic", lambda e, t: [str(e / "data"), "--train", "5"], "other settings"),
    ("demo-unknown-key", "demo", lambda e, t: ["--out", str(t / "d"), "seg.train.epoch=3"], "did you mean 'seg.train.epochs'"),
]


# -- the second wave (issue 24) -------------------------------------------------------------------------

def _head_variant(env, tmp, edit):
    obj = torch.load(env / "knn.pth", weights_only=True)
    edit(obj)
    torch.save(obj, tmp / "head.pth")
    return ["--config", _eval_cfg(env, tmp, methods=[{"name": "knn", "head": str(tmp / "head.pth")}])]


def knn_corrupted(env, tmp):
    def edit(obj):
        blob = obj["state_dict"]["_extra_state"].clone()
        blob[8:64] = 7  # garbage inside faiss's serialisation
        obj["state_dict"]["_extra_state"] = blob
    return _head_variant(env, tmp, edit)


def knn_truncated(env, tmp):
    def edit(obj):
        obj["state_dict"]["_extra_state"] = obj["state_dict"]["_extra_state"][:40].clone()
    return _head_variant(env, tmp, edit)


def head_feat_dim(env, tmp):
    obj = torch.load(env / "cls.pth", weights_only=True)
    obj["feat_dim"] = obj["feat_dim"] + 3
    torch.save(obj, tmp / "head.pth")
    return ["--config", _eval_cfg(env, tmp, methods=[{"name": "cls_fea", "head": str(tmp / "head.pth")}])]


def pickled_checkpoint(env, tmp):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'pwned'}",))
    (tmp / "seg.pth").write_bytes(pickle.dumps({"model": Evil()}))
    return ["--config", _eval_cfg(env, tmp, backbone={"checkpoint": str(tmp / "seg.pth")})]


def fit_without_labels(env, tmp):
    rng = np.random.default_rng(0)
    for i in range(2):
        write_png(tmp / "set" / "train" / "images" / f"{i}.png", random_image(rng, 32, 64))
        write_png(tmp / "set" / "train" / "labels_masks" / f"{i}.png", np.zeros((32, 64), np.uint8))
    return ["--config", _eval_cfg(env, tmp, methods=[{"name": "sml", "fit": {"data": {"name": "folder",
                                                                                     "root": str(tmp / "set")}}}])]


def viz_truncated_report(env, tmp):
    _copy(env / "eval", tmp / "out")
    _truncate(tmp / "out" / "report.json")
    return [str(tmp / "out")]


def read_only(prefix: str):
    """A write below ``<tmp>/<prefix>`` fails as on a read-only mount (as root, chmod does not stop writes)."""
    def patch(tmp, monkeypatch):
        import anomseg.files as files

        real = files.os.replace

        def replace(src, dst, *a, **k):
            if str(dst).startswith(str(tmp / prefix)):
                raise OSError(30, "Read-only file system", str(dst))
            return real(src, dst, *a, **k)
        monkeypatch.setattr(files.os, "replace", replace)
    return patch


def eval_read_only_state(env, tmp):
    return ["--config", _eval_cfg(env, tmp)]


def seg_read_only_checkpoints(env, tmp):
    return seg_cfg(env, tmp)


def bank_nan_rows(env, tmp):
    import h5py

    argv = _heads_copy(env, tmp)
    with h5py.File(tmp / "heads" / "bank" / "train" / "part-00001.h5", "r+") as f:
        feats = f["closed"]["features"]
        feats[3:13] = np.nan  # ten bad rows
    (tmp / "heads" / "heads" / "cls_fea" / "last.pth").unlink()
    return ["--config", argv]


def bank_copied_part(env, tmp):
    argv = _heads_copy(env, tmp)
    bank = tmp / "heads" / "bank" / "train"
    (bank / "part-00001.h5").write_bytes((bank / "part-00000.h5").read_bytes())  # images 0-1 twice, 2-3 missing
    (tmp / "heads" / "heads" / "cls_fea" / "last.pth").unlink()
    return ["--config", argv]


def bdd_split_dir_is_file(env, tmp):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        write_png(tmp / "bdd" / "seg" / "labels" / split / "a_train_id.png", np.zeros((4, 6), np.uint8))
        write_png(tmp / "bdd" / "seg" / "images" / split / "a.jpg", random_image(rng, 4, 6))
    (tmp / "bdd" / "bdd_anomaly").write_text("not a folder")
    return [str(tmp / "bdd")]


# "billion laughs": each key nine aliases of the one before (9^9 values once expanded, 600 bytes of text)
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
NOTHING_MADE = set()  # ids of cases refused from the config alone: no output folder may exist afterwards

SECOND_WAVE = [
    ("method-name-other-head-kind", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[
        {"name": "cls_fea", "head": str(e / "opengan.pth")}])], "holds a 'opengan_fea' head, not a 'cls_fea' one"),
    ("dias-name-opengan-head", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[
        {"name": "dias_fea", "head": str(e / "opengan.pth")}])], "holds a 'opengan_fea' head, not a 'dias_fea' one"),
    ("knn-index-corrupted", E, knn_corrupted, "faiss index cannot be read"),
    ("knn-index-truncated", E, knn_truncated, "faiss index cannot be read"),
    ("head-feat-dim-differs", E, head_feat_dim, "do not fit its recorded shape"),
    ("pickled-checkpoint", E, pickled_checkpoint, "pickled objects, not only tensors"),
    ("scales-empty", E, lambda e, t: ["--config", _eval_cfg(e, t), "inference.scales=[]"],
     "option scales = [] must be a non-empty list"),
    ("scales-zero", E, lambda e, t: ["--config", _eval_cfg(e, t), "inference.scales=[0]"], "option scales = [0] must be"),
    ("scales-negative", E, lambda e, t: ["--config", _eval_cfg(e, t), "inference.scales=[-1.0]"], "> 0"),
    ("fit-images-0", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[{"name": "sml", "fit": {"images": 0}}])],
     "option images = 0 must be an integer >= 1"),
    ("fit-data-string", E, lambda e, t: ["--config", _eval_cfg(e, t, fit={"data": "a/string"})],
     "option data = 'a/string' must be a dataset section"),
    ("fit-data-without-name", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[
        {"name": "sml", "fit": {"data": {"root": str(t)}}}])], "with name one of"),
    ("fit-set-without-labels", E, fit_without_labels, "fits on closed-set labels"),
    ("protocol-typo-before-fitting", E, lambda e, t: ["--config", _eval_cfg(e, t, protocol="pooledd", methods=[
        {"name": "sml"}])], "protocol='pooledd' is unknown"),
    ("bn-garbage", E, lambda e, t: ["--config", _eval_cfg(e, t, backbone={"checkpoint": str(e / "seg13.pth"),
                                                                       "bn": "garbage"})], "backbone.bn='garbage'"),
    ("method-option-type", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[
        {"name": "energy", "options": {"temperature": "hot"}}])], "option temperature = 'hot' must be a number"),
    ("method-option-range", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[
        {"name": "mc_dropout", "options": {"passes": 0}}])], "option passes = 0 must be an integer >= 1"),
    ("head-method-with-options", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[
        {"name": "cls_fea", "head": str(e / "cls.pth"), "options": {"lambda_g": 1}}])], "unknown option 'lambda_g'"),
    ("yaml-duplicate-key", E, lambda e, t: ["--config", _yaml(t, "d.yaml", "protocol: caos\nprotocol: pooled\n")],
     "key 'protocol' is given twice (line 2)"),
    ("yaml-billion-laughs", E, lambda e, t: ["--config", _yaml(t, "l.yaml", LAUGHS)], "expands to more than"),
    ("yaml-deep", E, lambda e, t: ["--config", _yaml(t, "n.yaml", "a: " + "[" * 100000 + "]" * 100000 + "\n")],
     "nested deeper than 64 levels"),
    ("overlays-negative", E, lambda e, t: ["--config", _eval_cfg(e, t), "overlays.images=-2"],
     "option images = -2 must be an integer >= 0"),
    ("save-every-0", E, lambda e, t: ["--config", _eval_cfg(e, t, save_every=0)], "save_every=0"),
    ("read-only-state", E, eval_read_only_state, "read-only file system"),
    ("viz-truncated-report", "viz", viz_truncated_report, "report.json: unreadable or truncated evaluation report"),
    ("seg-read-only-checkpoints", "seg", seg_read_only_checkpoints, "read-only file system"),
    ("heads-dias-temperature-0", "heads", lambda e, t: heads_cfg(e, t, "heads=[{name: dias_fea, options: {temperature: 0}}]"),
     "option temperature = 0 must be a number > 0"),
    ("heads-dias-init", "heads", lambda e, t: heads_cfg(e, t, "heads=[{name: dias_fea, options: {init: pretrained}}]"),
     "option init = 'pretrained' must be one of 'segmenter', 'random'"),
    ("heads-dias-beta-word", "heads", lambda e, t: heads_cfg(e, t, "heads=[{name: dias_fea, options: {beta: x}}]"),
     "option beta = 'x' must be a number"),
    ("heads-knn-k-0", "heads", lambda e, t: heads_cfg(e, t, "heads=[{name: knn, options: {k: 0}}]"),
     "option k = 0 must be an integer >= 1"),
    ("heads-knn-backend", "heads", lambda e, t: heads_cfg(e, t, "heads=[{name: knn, options: {backend: sklearn}}]"),
     "option backend = 'sklearn' must be one of 'faiss', 'torch'"),
    ("heads-steps-0", "heads", lambda e, t: heads_cfg(e, t, "train.steps=0"), "option steps = 0 must be an integer >= 1"),
    ("heads-bank-nan-rows", "heads", bank_nan_rows, "10 closed rows (e.g. row 3) hold NaN or infinite features"),
    ("heads-bank-copied-part", "heads", bank_copied_part, "holds closed rows of images 0-1, but part 1 of this bank holds image 2"),
    ("bdd-split-folder-is-a-file", "bdd", bdd_split_dir_is_file, "exists and is not a folder"),
    ("empty-config", E, lambda e, t: ["--config", _yaml(t, "empty.yaml", "")], "anomseg make-synthetic data/synthetic"),
    ("seg-epochs-0", "seg", lambda e, t: seg_cfg(e, t, "train.epochs=0"), "option epochs = 0 must be an integer >= 1"),
    ("seg-momentum-1.5", "seg", lambda e, t: seg_cfg(e, t, "train.momentum=1.5"), "option momentum = 1.5 must be a number in [0, 1)"),
    ("seg-crop-one-value", "seg", lambda e, t: seg_cfg(e, t, "data.crop=[64]"), "data.crop=[64]: give 2 values"),
]
NOTHING_MADE.update({"empty-config", "seg-batch-size-0", "seg-epochs-0", "seg-momentum-1.5", "seg-crop-one-value",
                     "scales-empty", "scales-zero", "scales-negative", "fit-images-0", "fit-data-string",
                     "fit-data-without-name", "protocol-typo-before-fitting", "method-option-type",
                     "method-option-range", "head-method-with-options", "yaml-duplicate-key", "yaml-billion-laughs",
                     "yaml-deep", "overlays-negative", "save-every-0", "heads-dias-temperature-0", "heads-dias-init",
                     "heads-dias-beta-word", "heads-knn-k-0", "heads-knn-backend", "heads-steps-0"})
PATCHES = {"read-only-state": read_only("out/state"), "seg-read-only-checkpoints": read_only("seg/checkpoints")}
CASES += SECOND_WAVE

def _m2f14(tmp) -> str:
    """A normal 14-class Mask2Former saved as an anomseg file: what a 13-class UNO file (15 head rows) loaded into a
    model without a negative class becomes."""
    torch.manual_seed(0)
    save_checkpoint(tmp / "m2f14.pth", build_backbone("mask2former", 14, preset="tiny"))
    return str(tmp / "m2f14.pth")


# The third wave (issue 33): hangs, names that become files or formulas, outlier losses without outliers, paths
THIRD_WAVE = [
    ("yaml-recursive-anchor", E, lambda e, t: ["--config", _yaml(t, "r.yaml", "methods: &m [*m]\n")],
     "a recursive anchor"),
    ("yaml-recursive-anchor-nested", E, lambda e, t: ["--config", _yaml(t, "r2.yaml", "methods: &m [{name: msp, options: "
                                                      "{x: *m}}]\n")], "a recursive anchor"),
    ("yaml-recursive-anchor-override", E, lambda e, t: ["--config", _eval_cfg(e, t), "methods=&m [*m]"],
     "a recursive anchor"),
    ("method-name-formula", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[
        {"name": "=cmd|' /C calc'!A0", "score": "msp"}])], "use 1-100 letters, digits and _ . + -"),
    ("method-name-dotdot", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[{"name": "..", "score": "msp"}])],
     "never '.' or '..'"),
    ("method-name-slash", E, lambda e, t: ["--config", _eval_cfg(e, t, methods=[{"name": "a/../../b", "score": "msp"}])],
     "use 1-100 letters"),
    ("seg-rba-without-paste", "seg", lambda e, t: seg_cfg(e, t, "model.backbone=mask2former",
                                                         "model.options={preset: tiny}", "train.loss.name=rba"),
     "data.paste is not set"),
    ("eval-out-too-long", E, lambda e, t: ["--config", _eval_cfg(e, t), "out=" + "x" * 120000],
     "too long for the file system"),
    ("heads-out-too-long", "heads", lambda e, t: heads_cfg(e, t, "out=" + "y" * 120000), "too long for the file system"),
    ("eval-window-with-flip", E, lambda e, t: ["--config", _eval_cfg(e, t, inference={"window": [32, 64], "flip": True})],
     "sliding windows run at scale 1.0 without flip"),
    ("eval-m2f-one-class-more", E, lambda e, t: ["--config", _eval_cfg(e, t, backbone={"checkpoint": _m2f14(t)},
                                                                       methods=[{"name": "msp"}])],
     "a 13-class UNO file reads like this"),
    ("heads-pixood-eval-labels", "heads", lambda e, t: heads_cfg(e, t, "heads=[{name: pixood, options: {eval_labels: [99]}}]"),
     "eval_labels [99] are not classes 0..12; list closed-set train ids"),
]
NOTHING_MADE.update({"yaml-recursive-anchor", "yaml-recursive-anchor-nested", "yaml-recursive-anchor-override",
                     "method-name-formula", "method-name-dotdot", "method-name-slash", "seg-rba-without-paste",
                     "eval-window-with-flip"})
CASES += THIRD_WAVE


def _snapshot(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line(case, env, tmp_path, capsys, monkeypatch):
    name, tool, setup, words = case
    argv = setup(env, tmp_path, monkeypatch) if setup is bomb else setup(env, tmp_path)
    if name == "empty-config":  # the defaults' relative paths (data/synthetic, runs/eval) resolve here
        monkeypatch.chdir(tmp_path)
    if name in PATCHES:
        PATCHES[name](tmp_path, monkeypatch)
    before = _snapshot(tmp_path)
    shared = _snapshot(env)
    capsys.readouterr()
    code = TOOLS[tool](argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "it/s]" not in line
           and "s/it]" not in line and "%|" not in line]  # tqdm's bars (one left open by the error) are not errors
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
    assert not [p for p in tmp_path.rglob("*.tmp")], name  # no half-written file left behind
    if name in NOTHING_MADE:  # refused from the config alone: before any folder was made
        assert not (tmp_path / "out").exists() and not (tmp_path / "heads" / "bank").exists(), name
        assert not (tmp_path / "runs").exists() and not (tmp_path / "seg").exists(), name


def test_the_table_is_large_enough():
    assert len(CASES) >= 96


# -- the library API: AnomalySegmenter, the evaluator, the loaders (one line each, or the correct result) -----

import errno  # noqa: E402

from anomseg import AnomalySegmenter  # noqa: E402
from anomseg.errors import AnomsegError  # noqa: E402


def _seg(env, **kw):
    return AnomalySegmenter.from_files(checkpoint=str(env / "seg13.pth"), method="msp", device="cpu", **kw)


def _image(env):
    from anomseg.data import build_dataset

    return build_dataset("streethazards", env / "data", "test")[0]["image"]


def api_float_image(env, tmp):
    seg, img = _seg(env), _image(env)
    want = seg(img)
    for variant in (img.astype(np.float32) / 255, img.astype(np.float64) / 255,
                    np.ascontiguousarray((img.astype(np.float32) / 255).transpose(2, 0, 1)),
                    torch.from_numpy(img.copy()), torch.from_numpy(img.copy()).permute(2, 0, 1)):
        np.testing.assert_allclose(seg(variant), want, atol=1e-5)  # the same image in another accepted layout


def api_huge_file(env, tmp):
    Image.new("1", (8000, 8000)).save(tmp / "huge.png")  # 64 Mpx: refused from the header, never decoded
    _seg(env)(str(tmp / "huge.png"))


def api_pipeline_without(field):
    def case(env, tmp):
        seg = _seg(env)
        seg.save(tmp / "p.pt")
        obj = torch.load(tmp / "p.pt", weights_only=True)
        del obj[field]
        torch.save(obj, tmp / "p.pt")
        AnomalySegmenter.load(tmp / "p.pt")
    return case


def api_pipeline_head_tensor_missing(env, tmp):
    seg = AnomalySegmenter.from_files(checkpoint=str(env / "seg13.pth"), method="cls_fea", head=str(env / "cls.pth"),
                                      device="cpu")
    seg.save(tmp / "p.pt")
    obj = torch.load(tmp / "p.pt", weights_only=True)
    sd = obj["method"]["state"]["head"]["state_dict"]
    del sd[next(iter(sd))]
    torch.save(obj, tmp / "p.pt")
    AnomalySegmenter.load(tmp / "p.pt")


def api_save_read_only(env, tmp, monkeypatch):
    import anomseg.files as files

    seg = _seg(env)

    def replace(src, dst, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(dst))
    monkeypatch.setattr(files.os, "replace", replace)
    seg.save(tmp / "ro" / "p.pt")


def api_folder_255(env, tmp):
    from anomseg.metrics import AnomalyMetrics

    m = AnomalyMetrics("per_image")
    mask = np.zeros((2, 8, 8), np.uint8)
    mask[:, 2:5, 2:5] = 255  # meant as anomaly; 255 is void
    m.update(np.random.default_rng(0).random((2, 8, 8)).astype(np.float32), mask)
    m.compute()


def api_nan_head(env, tmp):
    from anomseg.bank import FeatureBank
    from anomseg.heads.train import validation_auroc

    bank = FeatureBank(env / "heads" / "bank" / "val")
    head = make_head("cls_fea", bank.feature_dim)
    with torch.no_grad():
        for p in head.parameters():
            p.fill_(float("nan"))  # a diverged head
    validation_auroc(head, bank)


def api_exact_nan(env, tmp):
    from anomseg.metrics import exact_metrics

    exact_metrics(np.array([0.5, np.nan]), np.array([0.1, 0.2]))


def api_bn(env, tmp):
    from anomseg.models import load_checkpoint

    load_checkpoint(build_backbone("smp:FPN:resnet18", 13, **SMALL), str(env / "seg13.pth"), bn="garbage")



def api_float64_ties(env, tmp):
    from anomseg.metrics import AnomalyMetrics
    s = np.ones((8, 8))
    s[0, 0] += 1e-9  # a distinct float64 value, the same float32 one
    a = np.zeros((8, 8), np.uint8)
    a[0, 0] = 1
    AnomalyMetrics(protocol="per_image").update(s, a)


def api_float64_huge(env, tmp):
    from anomseg.metrics import AnomalyMetrics
    a = np.zeros((8, 8), np.uint8)
    a[0, 0] = 1
    AnomalyMetrics(protocol="per_image").update(np.full((8, 8), 1e300), a)


def api_empty_update(env, tmp):
    from anomseg.metrics import AnomalyMetrics
    m = AnomalyMetrics(protocol="per_image")
    m.update(np.zeros((0, 8, 8), np.float32), np.zeros((0, 8, 8), np.uint8))  # adds nothing
    a = np.zeros((8, 8), np.uint8)
    a[0, 0] = 1
    s = np.zeros((8, 8))
    s[0, 0] = 1.0  # float64 whose ranking float32 keeps: measured, 1.0
    m.update(s, a)
    assert m.compute()["auroc"] == 1.0 and m.compute()["images"] == 1


def api_int_value(env, tmp):
    from anomseg.models import build_backbone
    from anomseg.models.checkpoints import load_checkpoint
    torch.save({"model": {"sem_seg_head.predictor.class_embed.weight": torch.zeros(4, 64), "iteration_x": 3}},
               tmp / "d2.pth")
    load_checkpoint(build_backbone("mask2former", 3, preset="tiny"), tmp / "d2.pth")


def api_object_array(env, tmp):
    import pickle
    from anomseg.models import build_backbone
    from anomseg.models.checkpoints import load_checkpoint
    with open(tmp / "zoo.pkl", "wb") as f:
        pickle.dump({"model": {"sem_seg_head.predictor.class_embed.weight": np.array([1, "x"], dtype=object)}}, f)
    load_checkpoint(build_backbone("mask2former", 3, preset="tiny"), tmp / "zoo.pkl")


def api_uno_into_normal(env, tmp):
    from anomseg.models import build_backbone
    from anomseg.models.checkpoints import load_checkpoint, save_checkpoint
    save_checkpoint(tmp / "uno.pth", build_backbone("mask2former", 13, preset="tiny", negative_class=True))
    load_checkpoint(build_backbone("mask2former", 14, preset="tiny"), tmp / "uno.pth")  # 15 rows either way


def api_int64_histogram(env, tmp):
    """Labels as int64 (what np.array of Python ints gives): the same counts as uint8, the AUROC sklearn's."""
    from sklearn.metrics import roc_auc_score

    from anomseg.metrics.histogram import ScoreHistogram

    rng = np.random.default_rng(0)
    labels = rng.choice([0, 1, 255], size=5000, p=[0.7, 0.2, 0.1])
    scores = (rng.normal(size=5000) + (labels == 1)).astype(np.float32)
    a, b = ScoreHistogram(mantissa_bits=14), ScoreHistogram(mantissa_bits=14)
    a.update(scores, labels.astype(np.int64))
    b.update(scores, labels.astype(np.uint8))
    assert all(np.array_equal(x, y) for x, y in zip(a.groups(), b.groups()))
    bins, pos, neg = a.groups()
    keep = labels != 255
    assert pos.sum() == (labels == 1).sum() and neg.sum() == (labels == 0).sum()
    tp, fp = np.cumsum(pos[::-1]), np.cumsum(neg[::-1])  # trapezoid ROC over the (14-bit) bins
    auroc = np.trapezoid(np.r_[0, tp / tp[-1]], np.r_[0, fp / fp[-1]])
    assert abs(auroc - roc_auc_score(labels[keep] == 1, scores[keep])) < 1e-4  # ties only within a bin


def api_uno_untrained(env, tmp):
    from anomseg.methods import build_method
    from anomseg.models import build_backbone
    from anomseg.models.checkpoints import load_checkpoint, save_checkpoint
    save_checkpoint(tmp / "m2f.pth", build_backbone("mask2former", 13, preset="tiny"))
    model = build_backbone("mask2former", 13, preset="tiny", negative_class=True)
    load_checkpoint(model, tmp / "m2f.pth")  # grown by an untrained zero row
    build_method("uno").setup(model)


API_CASES = [
    # (id, call(env, tmp[, monkeypatch]), words of the one-line error, or None: the call must give the correct result)
    ("head-of-another-kind", lambda e, t: AnomalySegmenter.from_files(
        checkpoint=str(e / "seg13.pth"), method="cls_fea", head=str(e / "opengan.pth"), device="cpu"),
     "holds a 'opengan_fea' head, not a 'cls_fea' one"),
    ("float-image-in-0-1-any-layout", api_float_image, None),
    ("float-image-in-0-255", lambda e, t: _seg(e)(_image(e).astype(np.float32)), "float images are RGB in [0, 1]"),
    ("grey-2d-array", lambda e, t: _seg(e)(_image(e)[..., 0]), "is a grey image; give RGB (H, W, 3)"),
    ("rgba-array", lambda e, t: _seg(e)(np.dstack([_image(e), _image(e)[..., :1]])), "drop the alpha channel"),
    ("int64-array", lambda e, t: _seg(e)(_image(e).astype(np.int64)), "give uint8 (0..255) or float in [0, 1]"),
    ("8000x8000-file", api_huge_file, "8000x8000 = 64 Mpx is more than the limit of 40 Mpx"),
    ("array-over-max-pixels", lambda e, t: _seg(e, max_pixels=1000)(_image(e)),
     "128x64 = 8192 pixels is more than the limit of 1000 pixels per image"),
    ("calibrate-tpr-negative", lambda e, t: _seg(e).calibrate(None, tpr=-0.5), "option tpr = -0.5 must be a number in (0, 1]"),
    ("calibrate-tpr-1.5", lambda e, t: _seg(e).calibrate(None, tpr=1.5), "option tpr = 1.5 must be a number in (0, 1]"),
    ("inference-scales-empty", lambda e, t: _seg(e, inference={"scales": []}), "option scales = [] must be a non-empty"),
    ("pipeline-without-weights", api_pipeline_without("weights"), "pipeline file lacks weights"),
    ("pipeline-without-method", api_pipeline_without("method"), "pipeline file lacks method"),
    ("pipeline-head-tensor-missing", api_pipeline_head_tensor_missing,
     "p.pt: the head of method 'cls_fea': the cls_fea head's weights do not fit its recorded shape"),
    ("save-into-read-only-folder", api_save_read_only, "read-only file system"),
    ("folder-masks-0-255", api_folder_255, "all 2 were skipped (no anomaly pixel); if anomalies are marked 255"),
    ("nan-head-validation", api_nan_head, "as NaN or infinite"),
    ("nan-scores-exact-metrics", api_exact_nan, "1 of 2 anomaly scores are NaN or infinite"),
    ("bn-garbage", api_bn, "bn='garbage'"),
    ("method-option-range", lambda e, t: __import__("anomseg").methods.build_method("energy", temperature=0),
     "option temperature = 0 must be a number > 0"),
    ("float64-below-float32-precision", api_float64_ties, "differ below float32 precision"),
    ("float64-beyond-float32-range", api_float64_huge, "beyond float32's range"),
    ("empty-batch-per-image-metrics", lambda e, t: __import__("anomseg.metrics.device", fromlist=["x"]).per_image_metrics(
        torch.zeros(0, 4, 4), torch.zeros(0, 4, 4, dtype=torch.uint8)), "an empty batch"),
    ("empty-batch-update", api_empty_update, None),
    ("state-dict-int-value", api_int_value, "is a int, not a tensor"),
    ("model-zoo-object-array", api_object_array, "an array of object"),
    ("uno-file-into-a-normal-model", api_uno_into_normal, "holds a UNO head"),
    ("uno-on-an-untrained-negative-row", api_uno_untrained, "no trained negative class"),
    ("int64-labels-into-a-histogram", api_int64_histogram, None),
]



@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_gives_one_line(case, env, tmp_path, monkeypatch):
    name, call, words = case
    args = (env, tmp_path, monkeypatch) if call is api_save_read_only else (env, tmp_path)
    shared = _snapshot(env)
    if words is None:
        call(*args)
    else:
        with pytest.raises((AnomsegError, ValueError)) as info:
            call(*args)
        msg = str(info.value)
        assert words in msg and "\n" not in msg, (name, msg)
        assert "Traceback" not in msg
    assert _snapshot(env) == shared, name
    assert not list(tmp_path.rglob("*.tmp")), name


def test_a_real_file_size_limit_during_a_checkpoint_save(env, tmp_path):
    """RLIMIT_FSIZE hit while torch writes a checkpoint: one line, exit 2, no .tmp (Python ignores SIGXFSZ, so
    the write fails with EFBIG)."""
    import subprocess

    argv = seg_cfg(env, tmp_path)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
            f"sys.path.insert(0, {str(ROOT / 'tools')!r}); import train_seg; sys.exit(train_seg.main({argv!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    err = [ln for ln in proc.stderr.splitlines() if ln.strip() and "%|" not in ln]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith("error: ") and "file too large" in err[0], err
    assert not list(tmp_path.rglob("*.tmp"))
