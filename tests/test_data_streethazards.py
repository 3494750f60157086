import json

import numpy as np
import pytest

from anomseg.data import DatasetError, build_dataset
from tests.conftest import random_image, tiled_label, write_png

H, W = 6, 10
SPLITS = {"train": ("train", "training", ["t1", "t2"]), "val": ("train", "validation", ["t4"]),
          "test": ("test", "test", ["t5", "t6"])}


def make_tree(root, rng, per_town=3, rgba=False, raw_values=range(1, 15)):
    entries = {s: [] for s in SPLITS}
    for split, (top, sub, towns) in SPLITS.items():
        for town in towns:
            for n in range(per_town):
                img = random_image(rng, H, W, 4 if rgba else 3)
                rel_img = f"{top}/images/{sub}/{town}/{n * 100}.png"
                rel_seg = f"{top}/annotations/{sub}/{town}/{n * 100}.png"
                write_png(root / rel_img, img)
                write_png(root / rel_seg, tiled_label(raw_values, H, W))
                entries[split].append({"dbName": "StreetHazards", "width": W, "height": H,
                                       "fpath_img": rel_img, "fpath_segm": rel_seg})
    return root, entries


ODGT = {"train": "training.odgt", "val": "validation.odgt", "test": "test.odgt"}


def write_odgt(root, entries, style):
    for split, items in entries.items():
        text = json.dumps(items) + "\n" if style == "array" else "".join(json.dumps(e) + "\n" for e in items)
        (root / ODGT[split]).write_text(text)


def test_every_raw_value_decodes(tmp_path, rng):
    root, _ = make_tree(tmp_path, rng)
    s = build_dataset("streethazards", root, "test")[0]
    raw = tiled_label(range(1, 15), H, W)
    for v in range(1, 14):  # classes 0..12 are closed, "unlabeled" (raw 1) included
        assert (s["semantic"][raw == v] == v - 1).all() and (s["anomaly"][raw == v] == 0).all()
    # the trap: raw 13 is the traffic sign (class 12), an inlier; raw 14 is the anomaly
    assert (s["semantic"][raw == 13] == 12).all() and (s["anomaly"][raw == 13] == 0).all()
    assert (s["semantic"][raw == 14] == 255).all() and (s["anomaly"][raw == 14] == 1).all()
    assert build_dataset("streethazards", root, "test").class_names[12] == "traffic sign"


def test_unlabeled_as_void(tmp_path, rng):
    root, _ = make_tree(tmp_path, rng)
    s = build_dataset("streethazards", root, "val", unlabeled_as_void=True)[0]
    raw = tiled_label(range(1, 15), H, W)
    assert (s["semantic"][raw == 1] == 255).all() and (s["anomaly"][raw == 1] == 255).all()
    assert (s["semantic"][raw == 2] == 1).all()


@pytest.mark.parametrize("style", ["array", "lines"])
def test_odgt_and_walk_give_the_same_samples(tmp_path, rng, style):
    root, entries = make_tree(tmp_path, rng)
    walked = {s: build_dataset("streethazards", root, s, index="walk") for s in SPLITS}
    write_odgt(root, entries, style)
    for split in SPLITS:
        indexed = build_dataset("streethazards", root, split)  # auto picks the odgt
        assert [r.name for r in indexed.records] == [r.name for r in walked[split].records]
        assert [r.image for r in indexed.records] == [r.image for r in walked[split].records]
    assert len(walked["train"]) == 6 and len(walked["val"]) == 3 and len(walked["test"]) == 6
    assert walked["train"].records[0].name == "t1/0" and walked["train"].records[2].name == "t1/200"


def test_rgba_images_become_rgb(tmp_path, rng):
    root, _ = make_tree(tmp_path, rng, rgba=True)
    s = build_dataset("streethazards", root, "train")[0]
    assert s["image"].shape == (H, W, 3) and s["image"].dtype == np.uint8


def test_bad_input(tmp_path, rng):
    root, entries = make_tree(tmp_path, rng, raw_values=[0, 3, 15])
    with pytest.raises(DatasetError, match=r"label values \[0, 15\] are not in the StreetHazards table"):
        build_dataset("streethazards", root, "train")[0]
    with pytest.raises(DatasetError, match=r"train/\{images,annotations\}"):
        build_dataset("streethazards", tmp_path / "missing", "train")
    (root / "test.odgt").write_text("{not json\n")
    with pytest.raises(DatasetError, match="test.odgt:1: not JSON"):
        build_dataset("streethazards", root, "test")
    entries["test"][0]["fpath_img"] = "test/images/test/t5/999.png"
    write_odgt(root, {"test": entries["test"]}, "array")
    with pytest.raises(DatasetError, match="999.png: listed in .*test.odgt"):
        build_dataset("streethazards", root, "test")
    with pytest.raises(DatasetError, match="index file not found"):
        build_dataset("streethazards", root, "val", index="odgt")
    (root / "train" / "annotations" / "validation" / "t4" / "0.png").unlink()
    with pytest.raises(DatasetError, match="0.png: annotation of"):
        build_dataset("streethazards", root, "val")
