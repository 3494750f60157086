"""The SegmentMeIfYouCan adapters on fixture trees written here from the layouts in ../shared/docs/SMIYC.md.

Split facts asserted below are restated from SMIYC.md (and road-anomaly-benchmark's tracks.py /
tracks_extra.py at 1c7804e), not read from anomseg.data.smiyc_frames.
"""

import json

import numpy as np
import pytest
from PIL import Image

from anomseg.data import DatasetError, build_dataset
from tests.conftest import random_image, tiled_label, write_jpg, write_png

H, W = 4, 6


def write_webp(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, lossless=True)


# -- RoadAnomaly21 -------------------------------------------------------------------------------

# SMIYC.md 1.1 / tracks_extra.py: the test frames per object, "carriage0000..0007" included
TEST_OBJECTS = {"zebra": 2, "sheep": 11, "rhino": 2, "pig": 2, "lion": 1, "leopard": 1, "horse": 5, "goose": 1,
                "elephant": 12, "donkey": 2, "deer": 2, "cow": 14, "cock": 1, "camel": 2, "bear": 1, "airplane": 2,
                "boat_trailer": 5, "caravan": 8, "carriage": 8, "scooter": 1, "tractor": 6, "coffin": 1, "cones": 7,
                "hay": 1, "piano": 1, "tent": 1}


@pytest.fixture(scope="module")
def anomaly_track(tmp_path_factory):
    root = tmp_path_factory.mktemp("smiyc")
    base = root / "dataset_AnomalyTrack"
    rng = np.random.default_rng(0)
    test = [f"{k}{i:04d}" for k, n in TEST_OBJECTS.items() for i in range(n)]
    for fid in test + [f"validation{i:04d}" for i in range(10)]:
        write_jpg(base / "images" / f"{fid}.jpg", random_image(rng, H, W))
    for i in range(10):  # only the validation labels are public
        write_png(base / "labels_masks" / f"validation{i:04d}_labels_semantic.png", tiled_label([0, 1, 255], H, W))
        write_png(base / "labels_masks" / f"validation{i:04d}_color.png", random_image(rng, H, W))  # ignored
    return root, sorted(test)


def test_road_anomaly21_splits_labels_and_persistence(anomaly_track):
    root, test = anomaly_track
    val = build_dataset("road_anomaly21", root, "validation")
    assert [r.name for r in val.records] == [f"validation{i:04d}" for i in range(10)]
    assert not val.labels_hidden and val.group(0) == "AnomalyTrack-all"
    np.testing.assert_array_equal(val[3]["anomaly"], tiled_label([0, 1, 255], H, W))
    assert (val[3]["semantic"] == 255).all()
    t = build_dataset("road_anomaly21", root / "dataset_AnomalyTrack", "test")  # the dataset folder itself works too
    assert [r.name for r in t.records] == test and len(t) == 100
    assert t.labels_hidden and (t[0]["anomaly"] == 255).all() and t[0]["image"].shape == (H, W, 3)
    assert len(build_dataset("road_anomaly21", root, "all")) == 110
    assert len(build_dataset("road_anomaly21", root, "animals")) == 59
    vehicles = [r.name for r in build_dataset("road_anomaly21", root, "vehicles").records]
    assert len(vehicles) == 23 and [v for v in vehicles if v.startswith("carriage")] == ["carriage0001"]
    assert len(build_dataset("road_anomaly21", root, "other")) == 11


def test_road_anomaly21_errors(anomaly_track, tmp_path):
    root, _ = anomaly_track
    with pytest.raises(DatasetError, match="split 'val' is unknown; choose one of all, animals"):
        build_dataset("road_anomaly21", root, "val")
    with pytest.raises(DatasetError, match="holds images/; expected layout"):
        build_dataset("road_anomaly21", tmp_path, "validation")
    partial = tmp_path / "dataset_AnomalyTrack"
    write_jpg(partial / "images" / "validation0000.jpg", random_image(np.random.default_rng(1), H, W))
    with pytest.raises(DatasetError, match="validation0000_labels_semantic.png: label of frame 'validation0000' not found"):
        build_dataset("road_anomaly21", tmp_path, "validation")
    write_png(partial / "labels_masks" / "validation0000_labels_semantic.png", tiled_label([0, 2], H, W))
    with pytest.raises(DatasetError, match="validation0001.jpg: frame 'validation0001' of the split not found"):
        build_dataset("road_anomaly21", tmp_path, "validation")
    with pytest.raises(DatasetError, match="found 1 frames, the official split has 110"):
        build_dataset("road_anomaly21", tmp_path, "all")
    ds = build_dataset("road_anomaly21", tmp_path, "all", check_size=False)
    assert len(ds) == 1
    with pytest.raises(DatasetError, match=r"label values \[2\]"):
        ds[0]


# -- RoadObstacle21 ------------------------------------------------------------------------------

def test_road_obstacle21_scenes_and_validation_exclusions(tmp_path):
    base = tmp_path / "dataset_ObstacleTrack"
    rng = np.random.default_rng(2)
    fids = [f"validation_{i}" for i in range(1, 41)] + ["gravel_001", "curvy-street_003", "snowstorm1_000",
                                                         "driveway_002", "darkasphalt2_005"]
    road = np.full((H, W), 255, np.uint8)
    road[2:] = 0
    road[3, 2] = 1
    for fid in fids:
        write_webp(base / "images" / f"{fid}.webp", random_image(rng, H, W))
        if fid.startswith("validation"):
            write_png(base / "labels_masks" / f"{fid}_labels_semantic.png", road)
    val = build_dataset("road_obstacle21", tmp_path, "validation")
    # SMIYC.md 1.2: scene 'validation' minus the fids starting with validation_19, validation_21 .. _29
    excluded = ("validation_19", *(f"validation_{n}" for n in range(21, 30)))
    expected = sorted(f for f in fids if f.startswith("validation_") and not f.startswith(excluded))
    assert [r.name for r in val.records] == expected and len(val) == 30
    np.testing.assert_array_equal(val[0]["anomaly"], road)  # off the road is void: the ROI lives in the label
    assert val.group(0) == "ObstacleTrack-all" and val.component_track == "obstacle"
    test = build_dataset("road_obstacle21", tmp_path, "test", check_size=False)
    assert [r.name for r in test.records] == ["curvy-street_003", "darkasphalt2_005", "gravel_001"] and test.labels_hidden
    with pytest.raises(DatasetError, match="ObstacleTrack-test: found 3 frames, the official split has 327"):
        build_dataset("road_obstacle21", tmp_path, "test")
    assert [r.name for r in build_dataset("road_obstacle21", tmp_path, "night", check_size=False).records] == ["driveway_002"]
    assert len(build_dataset("road_obstacle21", tmp_path, "all")) == len(fids)  # no count check on -all


# -- LostAndFound --------------------------------------------------------------------------------

SCENES = ["01_Hanns_Klemm_Str_45", "02_Hanns_Klemm_Str_44", "10_Schlossberg_9", "15_Rechbergstr_Deckenpfronn"]


def laf_fids(n, rng):
    fids = set()
    while len(fids) < n:
        scene = SCENES[int(rng.integers(0, 4))]
        fids.add(f"{scene}_{int(rng.integers(0, 12)):06d}_{int(rng.integers(0, 400)):06d}")
    return sorted(fids)


@pytest.fixture(scope="module")
def laf(tmp_path_factory):
    root = tmp_path_factory.mktemp("laf")
    base = root / "dataset_LostAndFound"
    rng = np.random.default_rng(3)
    img = random_image(rng, 2, 3)
    lab = np.array([[0, 1, 2], [200, 201, 255]], np.uint8)
    fids = laf_fids(1203, rng)  # the full test folder: the leaderboard split drops frames by sorted index
    for fid in fids:
        scene = fid[: -len("_000000_000000")]
        write_png(base / "leftImg8bit" / "test" / scene / f"{fid}_leftImg8bit.png", img)
        write_png(base / "gtCoarse" / "test" / scene / f"{fid}_gtCoarse_labelIds.png", lab)
    return root, fids


def test_lost_and_found_test_no_known_reproduces_the_dropped_frames(laf):
    root, fids = laf
    # SMIYC.md 1.3: drop these sorted-order indices first, then the children and bicycle prefixes
    dropped = [17, 37, 55, 72, 91, 110, 129, 153, 174, 197, 218, 353, 490, 618, 686, 792, 793]
    prefixes = ("15_Rechbergstr_Deckenpfronn", "01_Hanns_Klemm_Str_45_000006", "01_Hanns_Klemm_Str_45_000007",
                "10_Schlossberg_9_000004")
    kept = [f for i, f in enumerate(fids) if i not in dropped]
    expected = [f for f in kept if not f.startswith(prefixes)]
    ds = build_dataset("lost_and_found", root, "testNoKnown", check_size=False)
    assert [r.name for r in ds.records] == expected
    assert ds.group(0) == "LostAndFound-test" and ds.component_track == "obstacle"
    valid = build_dataset("lost_and_found", root, "testValid")  # 1203 - 17 = 1186, the official count
    assert [r.name for r in valid.records] == kept and len(valid) == 1186
    with pytest.raises(DatasetError, match="LostAndFound-testNoKnown: found .* the official split has 1043"):
        build_dataset("lost_and_found", root, "testNoKnown")
    # labelIds: 0 void, 1 road -> 0, 2..200 -> 1, the rest void
    np.testing.assert_array_equal(ds[0]["anomaly"], [[255, 0, 1], [1, 255, 255]])


def test_lost_and_found_partial_folder(laf, tmp_path):
    root, fids = laf
    scene = fids[0][: -len("_000000_000000")]
    src = root / "dataset_LostAndFound"
    for sub, suffix in (("leftImg8bit", "_leftImg8bit.png"), ("gtCoarse", "_gtCoarse_labelIds.png")):
        p = tmp_path / sub / "test" / scene / f"{fids[0]}{suffix}"
        p.parent.mkdir(parents=True)
        p.write_bytes((src / sub / "test" / scene / f"{fids[0]}{suffix}").read_bytes())
    with pytest.raises(DatasetError, match="drops frames by their index in the full sorted list of 1203"):
        build_dataset("lost_and_found", tmp_path, "testNoKnown", check_size=False)
    assert len(build_dataset("lost_and_found", tmp_path, "test", check_size=False)) == 1
    (tmp_path / "gtCoarse" / "test" / scene / f"{fids[0]}_gtCoarse_labelIds.png").unlink()
    with pytest.raises(DatasetError, match="gtCoarse_labelIds.png: label of LostAndFound frame"):
        build_dataset("lost_and_found", tmp_path, "test", check_size=False)
    with pytest.raises(DatasetError, match="split 'val' is unknown"):
        build_dataset("lost_and_found", tmp_path, "val")


# -- Fishyscapes LAF ----------------------------------------------------------------------------

def test_fishyscapes_laf_reads_laf_images_and_fishy_labels(tmp_path):
    from anomseg.data.smiyc_frames import FISHY_LAF_VAL  # the frame ids to lay out; the facts are asserted below

    # SMIYC.md 1.4 / tracks_extra.py: 100 frames, the two with invalid LAF labels left out of Obstacle-val
    assert len(FISHY_LAF_VAL) == 100 and FISHY_LAF_VAL[0] == "01_Hanns_Klemm_Str_45_000000_000080"
    assert FISHY_LAF_VAL[-1] == "13_Elly_Beinhorn_Str_000003_000260"
    rng = np.random.default_rng(4)
    laf = tmp_path / "dataset_LostAndFound"
    for i, fid in enumerate(FISHY_LAF_VAL):
        folder = "train" if fid.startswith("04_") else "test"
        scene = fid[: -len("_000000_000000")]
        write_png(laf / "leftImg8bit" / folder / scene / f"{fid}_leftImg8bit.png", random_image(rng, H, W))
        write_png(laf / "gtCoarse" / folder / scene / f"{fid}_gtCoarse_labelIds.png", tiled_label([1, 3], H, W))
        write_png(tmp_path / "dataset_FishyLAF" / "labels" / "val" / f"{fid}_fishy-labels.png", tiled_label([0, 1, 255], H, W))
    ds = build_dataset("fishyscapes_laf", tmp_path, "val")
    assert len(ds) == 100 and [r.name for r in ds.records] == sorted(FISHY_LAF_VAL)
    groups = {ds.records[i].name: ds.group(i) for i in range(len(ds))}
    assert groups["04_Maurener_Weg_8_000000_000030"] == "LostAndFound-train"
    assert groups["13_Elly_Beinhorn_Str_000000_000050"] == "LostAndFound-test"
    np.testing.assert_array_equal(ds[0]["anomaly"], tiled_label([0, 1, 255], H, W))
    obstacle = build_dataset("fishyscapes_laf", tmp_path, "obstacle_val")
    names = {r.name for r in obstacle.records}
    assert len(obstacle) == 98 and "01_Hanns_Klemm_Str_45_000001_000240" not in names
    assert "01_Hanns_Klemm_Str_45_000005_000230" not in names
    np.testing.assert_array_equal(obstacle[0]["anomaly"], tiled_label([0, 1], H, W))  # the LAF labels: 1 -> 0, 3 -> 1
    with pytest.raises(DatasetError, match="test frames are private"):
        build_dataset("fishyscapes_laf", tmp_path, "test")
    (tmp_path / "dataset_FishyLAF" / "labels" / "val" / f"{FISHY_LAF_VAL[5]}_fishy-labels.png").unlink()
    with pytest.raises(DatasetError, match="_fishy-labels.png: Fishyscapes label of"):
        build_dataset("fishyscapes_laf", tmp_path, "val")


# -- RoadAnomaly (Lis et al.) -------------------------------------------------------------------

def test_road_anomaly_frame_list_and_rgb_labels(tmp_path):
    base = tmp_path / "RoadAnomaly_jpg"
    rng = np.random.default_rng(5)
    names = ["animals01_a.jpg", "cones02_b.jpg"]
    grey = tiled_label([0, 2], H, W)
    for name in names:
        write_jpg(base / "frames" / name, random_image(rng, H, W))
        stem = name[:-4]
        write_png(base / "frames" / f"{stem}.labels" / "labels_semantic.png", np.stack([grey] * 3, -1))  # RGB
    (base / "frame_list.json").write_text(json.dumps(names))
    with pytest.raises(DatasetError, match="found 2 frames, the official split has 60"):
        build_dataset("road_anomaly", tmp_path, "test")
    ds = build_dataset("road_anomaly", tmp_path, "test", check_size=False)
    assert [r.name for r in ds.records] == ["animals01_a", "cones02_b"] and ds.group(0) == "RoadAnomaly"
    np.testing.assert_array_equal(ds[1]["anomaly"], tiled_label([0, 1], H, W))  # 2 -> 1
    (base / "frame_list.json").write_text("{not json")
    with pytest.raises(DatasetError, match="frame_list.json: not a readable JSON list"):
        build_dataset("road_anomaly", base, "test", check_size=False)


def test_listed_paths_may_not_leave_the_dataset(tmp_path):
    """A frame list (RoadAnomaly), an odgt index (StreetHazards) or a split list (BDD-Anomaly) naming a file outside
    the dataset root is refused in one line naming the list, even when the file exists."""
    outside = tmp_path / "outside"
    rng = np.random.default_rng(0)
    write_jpg(outside / "x.jpg", random_image(rng, H, W))
    write_png(outside / "x.labels" / "labels_semantic.png", np.stack([tiled_label([0, 2], H, W)] * 3, -1))
    base = tmp_path / "ra" / "RoadAnomaly_jpg"
    (base / "frames").mkdir(parents=True)
    (base / "frame_list.json").write_text(json.dumps(["../../../outside/x.jpg"]))
    with pytest.raises(DatasetError) as e:
        build_dataset("road_anomaly", tmp_path / "ra", "test", check_size=False)
    assert "frame_list.json: lists" in str(e.value) and "leads outside the dataset root" in str(e.value)
    assert "\n" not in str(e.value)
    sh = tmp_path / "sh"  # the odgt index in the root (CAOS / CSAIL layout)
    sh.mkdir()
    (sh / "training.odgt").write_text(json.dumps([{"fpath_img": "../outside/x.jpg", "fpath_segm": "../outside/x.jpg"}]))
    with pytest.raises(DatasetError, match="training.odgt: lists .* leads outside the dataset root"):
        build_dataset("streethazards", sh, "train")
