import shutil

import numpy as np
from PIL import Image
import pytest

from anomseg.data import DatasetError, build_dataset, prepare_bdd_anomaly
from anomseg.data.bdd_anomaly import LAYOUTS
from tests.conftest import SHARED_DATA, random_image, tiled_label, write_jpg, write_png

H, W = 6, 8
NORMAL = list(range(16)) + [255]


def write_sample(root, layout, split, image_id, label, rng):
    write_png(layout.label_path(root, split, image_id), label)
    write_jpg(layout.image_path(root, split, image_id), random_image(rng, *label.shape))


def make_tree(root, layout, rng):
    """train: 3 normal + 2 anomalous (one per kind), val: 2 normal + 1 anomalous; one upper-case id."""
    plan = {
        "train": [("aa000001-00000001", NORMAL), ("aa000002-00000002", NORMAL), ("13e7e580-68BC1FE2", NORMAL),
                  ("aa000003-00000003", NORMAL + [16]), ("aa000004-00000004", [0, 17, 255])],
        "val": [("bb000001-00000001", NORMAL), ("bb000002-00000002", [5, 255]), ("bb000003-00000003", [18, 1])],
    }
    for split, items in plan.items():
        for image_id, values in items:
            write_sample(root, layout, split, image_id, tiled_label(values, H, W), rng)
    return root


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: l.name)
def test_prepare_and_decode_both_layouts(tmp_path, rng, layout):
    root = make_tree(tmp_path, layout, rng)
    counts = prepare_bdd_anomaly(root, progress=False)
    assert counts == {"train": 3, "val": 2, "test": 3, "test_from_train": 2, "test_from_val": 1}
    assert (root / "bdd_anomaly" / "test.txt").read_text().split() == [
        "aa000003-00000003", "aa000004-00000004", "bb000003-00000003"]
    train = build_dataset("bdd_anomaly", root, "train")
    assert "13e7e580-68BC1FE2" in [r.name for r in train.records]  # case kept
    assert len(train.class_names) == 16
    s = train[0]
    raw = tiled_label(NORMAL, H, W)
    for v in range(16):
        assert (s["semantic"][raw == v] == v).all() and (s["anomaly"][raw == v] == 0).all()
    assert (s["semantic"][raw == 255] == 255).all() and (s["anomaly"][raw == 255] == 255).all()
    test = build_dataset("bdd_anomaly", root, "test")
    for i, values in enumerate([NORMAL + [16], [0, 17, 255], [18, 1]]):
        t = test[i]
        raw = tiled_label(values, H, W)
        for v in (16, 17, 18):
            if v in values:
                assert (t["anomaly"][raw == v] == 1).all() and (t["semantic"][raw == v] == 255).all()
        assert t["image"].shape == (H, W, 3)


def test_bad_input(tmp_path, rng):
    layout = LAYOUTS[1]
    root = make_tree(tmp_path, layout, rng)
    with pytest.raises(DatasetError, match="prepare_bdd_anomaly.py"):
        build_dataset("bdd_anomaly", root, "train")
    write_png(layout.label_path(root, "val", "bb000009-00000009"), tiled_label([3, 19, 254], H, W))
    with pytest.raises(DatasetError, match="image not found"):
        prepare_bdd_anomaly(root, progress=False)
    write_jpg(layout.image_path(root, "val", "bb000009-00000009"), random_image(rng, H, W))
    with pytest.raises(DatasetError, match=r"bb000009-00000009_train_id.png: label values \[19, 254\]"):
        prepare_bdd_anomaly(root, progress=False)
    with pytest.raises(DatasetError, match="no BDD100K label folders"):
        prepare_bdd_anomaly(tmp_path / "seg" / "images", progress=False)


REAL = SHARED_DATA / "bdd_labels_sample" / "seg" / "labels"


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/bdd_labels_sample is absent")
def test_real_bdd_labels(tmp_path, rng):
    """The 25 real label maps: 9 train / 4 val stay, 8 + 4 anomalous go to test (../shared/data/README.md)."""
    layout = LAYOUTS[1]  # their names follow the older seg/ layout
    expected_test = []
    for split in ("train", "val"):
        for src in sorted((REAL / split).glob("*_train_id.png")):
            image_id = src.name[: -len("_train_id.png")]
            dst = layout.label_path(tmp_path, split, image_id)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
            write_jpg(layout.image_path(tmp_path, split, image_id), random_image(rng, 72, 128))

            if np.isin(np.asarray(Image.open(src)), [16, 17, 18]).any():
                expected_test.append(image_id)
    counts = prepare_bdd_anomaly(tmp_path, require_images=False, progress=False)
    assert counts == {"train": 9, "val": 4, "test": 12, "test_from_train": 8, "test_from_val": 4}
    assert sorted((tmp_path / "bdd_anomaly" / "test.txt").read_text().split()) == sorted(expected_test)
    assert "13e7e580-68BC1FE2" in (tmp_path / "bdd_anomaly" / "train.txt").read_text().split()
    # decoding a real map: shapes, dtypes, and every anomaly pixel is a 16/17/18 pixel
    ds = build_dataset("bdd_anomaly", tmp_path, "test")
    raw = np.asarray(Image.open(ds.records[0].label))
    sem, anom = ds.table.decode(raw)
    assert sem.shape == (720, 1280) and sem.dtype == np.int64
    np.testing.assert_array_equal(anom == 1, np.isin(raw, [16, 17, 18]))
    np.testing.assert_array_equal(anom == 255, raw == 255)
