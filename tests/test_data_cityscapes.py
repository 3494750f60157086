import numpy as np
import pytest

from anomseg.data import DatasetError, build_dataset, resize_nearest
from anomseg.data import cityscapes as cs
from tests.conftest import random_image, tiled_label, write_png

# Facts from ../shared/docs/FORMATS.md (the official Cityscapes table), typed independently here.
CLOSED_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
OPEN_LABEL_IDS = {4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30}
VOID_LABEL_IDS = {0, 1, 2, 3}
H, W = 8, 12


def make_tree(root, rng, train=("aachen", 7), val=("lindau", 3), label_values=range(34)):
    """Cityscapes tree: train images of one city, val images of another; labels tile every id."""
    for folder, (city, n) in (("train", train), ("val", val)):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            write_png(root / "leftImg8bit" / folder / city / f"{stem}_leftImg8bit.png", random_image(rng, H, W))
            write_png(root / "gtFine" / folder / city / f"{stem}_gtFine_labelIds.png", tiled_label(label_values, H, W))
    return root


def test_table_matches_the_published_facts():
    assert cs.CLOSED == {lid: tid for tid, lid in enumerate(CLOSED_LABEL_IDS)}
    assert set(cs.OPEN_LABEL_IDS) == OPEN_LABEL_IDS
    assert set(cs.VOID_LABEL_IDS) == VOID_LABEL_IDS
    assert len(cs.CLASS_NAMES) == 19 and cs.CLASS_NAMES[0] == "road" and cs.CLASS_NAMES[18] == "bicycle"


def test_every_label_id_decodes(tmp_path, rng):
    ds = build_dataset("cityscapes", make_tree(tmp_path, rng), "test")
    raw = tiled_label(range(34), H, W)
    s = ds[0]
    assert s["image"].dtype == np.uint8 and s["image"].shape == (H, W, 3)
    assert s["semantic"].dtype == np.int64 and s["anomaly"].dtype == np.uint8
    for lid in range(34):
        m = raw == lid
        assert m.any()
        if lid in CLOSED_LABEL_IDS:
            assert (s["semantic"][m] == CLOSED_LABEL_IDS.index(lid)).all() and (s["anomaly"][m] == 0).all()
        elif lid in OPEN_LABEL_IDS:
            assert (s["semantic"][m] == 255).all() and (s["anomaly"][m] == 1).all()
        else:
            assert lid in VOID_LABEL_IDS
            assert (s["semantic"][m] == 255).all() and (s["anomaly"][m] == 255).all()


def test_splits_are_sorted_and_hold_out_the_last_train_images(tmp_path, rng):
    root = make_tree(tmp_path, rng, train=("zurich", 4), val=("lindau", 3))
    # a second train city that sorts before the first
    make_tree(root, rng, train=("aachen", 3), val=("lindau", 0))
    train = build_dataset("cityscapes", root, "train", num_val=2)
    val = build_dataset("cityscapes", root, "val", num_val=2)
    test = build_dataset("cityscapes", root, "test")
    names = sorted([f"aachen_{i:06d}_000019" for i in range(3)] + [f"zurich_{i:06d}_000019" for i in range(4)])
    assert [r.name for r in train.records] == names[:5]
    assert [r.name for r in val.records] == names[5:]
    assert len(test) == 3 and all(r.name.startswith("lindau") for r in test.records)
    with pytest.raises(DatasetError, match="num_val=10"):
        build_dataset("cityscapes", root, "val")


def test_label_scale_downsamples_by_nearest_neighbour(tmp_path, rng):
    ds = build_dataset("cityscapes", make_tree(tmp_path, rng), "test", label_scale=0.25)
    s = ds[0]
    assert s["image"].shape == (H, W, 3) and s["semantic"].shape == (2, 3)
    raw_small = tiled_label(range(34), H, W)[2::4, 2::4]  # centre pixel of each 4x4 block
    sem_full, anom_full = cs.TABLE.decode(raw_small)
    np.testing.assert_array_equal(s["semantic"], sem_full)
    np.testing.assert_array_equal(s["anomaly"], anom_full)
    np.testing.assert_array_equal(resize_nearest(np.arange(16).reshape(4, 4), (2, 2)), [[5, 7], [13, 15]])


def test_missing_root_shows_the_expected_tree(tmp_path):
    with pytest.raises(DatasetError, match=r"leftImg8bit/\{train,val\}/<city>"):
        build_dataset("cityscapes", tmp_path / "nowhere", "train")


def test_bad_labels_and_images_raise_naming_the_file(tmp_path, rng):
    root = make_tree(tmp_path, rng, train=("aachen", 3), val=("lindau", 1))
    lab = root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    write_png(lab, tiled_label([7, 34, 200], H, W))
    with pytest.raises(DatasetError, match=r"lindau_000000_000019_gtFine_labelIds.png: label values \[34, 200\]"):
        build_dataset("cityscapes", root, "test")[0]
    write_png(lab, tiled_label([7], H + 1, W))
    with pytest.raises(DatasetError, match="differs from image"):
        build_dataset("cityscapes", root, "test")[0]
    img = root / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png"
    img.write_bytes(img.read_bytes()[:40])
    with pytest.raises(DatasetError, match="lindau_000000_000019_leftImg8bit.png: unreadable or truncated"):
        build_dataset("cityscapes", root, "test")[0]
    lab.unlink()
    with pytest.raises(DatasetError, match="gtFine_labelIds.png: label of image"):
        build_dataset("cityscapes", root, "test")


def test_empty_split_and_unknown_names(tmp_path, rng):
    root = make_tree(tmp_path, rng, train=("aachen", 3), val=("lindau", 0))
    (root / "leftImg8bit" / "val").mkdir(parents=True, exist_ok=True)
    (root / "gtFine" / "val").mkdir(parents=True, exist_ok=True)
    with pytest.raises(DatasetError, match="no \\*_leftImg8bit.png images found"):
        build_dataset("cityscapes", root, "test")
    with pytest.raises(DatasetError, match="choose one of"):
        build_dataset("cityscapes", root, "training")
    with pytest.raises(DatasetError, match="valid names: bdd_anomaly, cityscapes, fishyscapes_laf, folder, lost_and_found, oodis_lost_and_found, road_anomaly, road_anomaly21, road_obstacle21, streethazards"):
        build_dataset("kitti", root, "train")
