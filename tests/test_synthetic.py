import hashlib

import numpy as np
import pytest

from anomseg.data import DatasetError, build_dataset, generate_synthetic
from anomseg.data.io import read_label, read_rgb
from anomseg.data.synthetic import ANOMALY_KINDS, OUTLIER_KINDS

SMALL = dict(num_train=6, num_val=3, num_test=4, num_outliers=5, height=64, width=128, progress=False)


def digest(root):
    files = sorted(p for p in root.rglob("*.png"))
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "a"
    generate_synthetic(root, seed=3, workers=1, **SMALL)
    return root


def test_deterministic_whatever_the_workers(synthetic, tmp_path):
    other = tmp_path / "b"
    generate_synthetic(other, seed=3, workers=2, **SMALL)
    assert digest(synthetic) == digest(other)
    assert len(digest(synthetic)) == 2 * (6 + 3 + 4) + 2 * 5 + (3 + 4)  # + the val / test instance-id maps
    different = tmp_path / "c"
    generate_synthetic(different, seed=4, workers=1, **SMALL)
    assert digest(different) != digest(synthetic)


def test_reads_back_through_build_dataset(synthetic):
    sizes = {"train": 6, "val": 3, "test": 4}
    for split, n in sizes.items():
        ds = build_dataset("streethazards", synthetic, split)
        assert len(ds) == n and ds.num_classes == 13
        for i in range(n):
            s = ds[i]
            assert s["image"].shape == (64, 128, 3) and s["semantic"].shape == (64, 128)
            has_anomaly = (s["anomaly"] == 1).any()
            if split == "train":
                assert not has_anomaly  # anomalies never appear in training images
            assert set(np.unique(s["anomaly"]).tolist()) <= {0, 1}
    # val/test as a whole do contain anomalies, and the walk agrees with the written .odgt
    for split in ("val", "test"):
        ds = build_dataset("streethazards", synthetic, split)
        assert any((ds[i]["anomaly"] == 1).any() for i in range(len(ds)))
        walked = build_dataset("streethazards", synthetic, split, index="walk")
        assert sorted(r.name for r in walked.records) == sorted(r.name for r in ds.records)


def test_outlier_pool_is_other_kinds_with_aligned_masks(synthetic):
    assert not set(ANOMALY_KINDS) & set(OUTLIER_KINDS)
    images = sorted((synthetic / "outliers" / "images").glob("*.png"))
    assert len(images) == 5
    for img in images:
        rgb, mask = read_rgb(img), read_label(synthetic / "outliers" / "masks" / img.name)
        assert rgb.shape[:2] == mask.shape and set(np.unique(mask).tolist()) == {0, 1}


def test_existing_sets_are_reused_or_refused(synthetic, tmp_path):
    before = digest(synthetic)
    meta = generate_synthetic(synthetic, seed=3, workers=1, **SMALL)  # same settings: nothing rewritten
    assert meta["complete"] and digest(synthetic) == before
    with pytest.raises(DatasetError, match="other settings"):
        generate_synthetic(synthetic, seed=5, workers=1, **SMALL)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        generate_synthetic(tmp_path / "full", **SMALL)
