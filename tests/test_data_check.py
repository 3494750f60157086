"""``anomseg data check`` on fixture trees in the real layouts, one kind of fault each, and the evaluation running the
same check first."""

import json

import numpy as np
import pytest
from PIL import Image

from anomseg.cli import main as cli
from tests.conftest import random_image, write_png
from tests.test_data_smiyc import anomaly_track  # noqa: F401 (a fixture)
from tests.test_data_streethazards import make_tree


def _check(capsys, *args):
    rc = cli(["data", "check", *args, "--quiet"])
    return rc, capsys.readouterr().out.strip().splitlines()


def test_a_partial_copy_is_counted_against_the_official_split(tmp_path, rng, capsys):
    root, _ = make_tree(tmp_path / "sh", rng)
    rc, lines = _check(capsys, "streethazards", str(root))
    assert rc == 1 and len(lines) == 3  # train, val, test: each smaller than the official split
    assert any("split 'train' has 6 frames, the official split has 5125; a partial or wrong copy? re-extract "
               "streethazards_train.tar" in ln for ln in lines), lines


def test_a_synthetic_set_is_complete(tiny_demo, capsys):
    rc, lines = _check(capsys, "streethazards", str(tiny_demo["out"] / "data"))
    assert rc == 0 and len(lines) == 1 and "streethazards is complete" in lines[0]


def test_missing_root_and_missing_folders(tmp_path, capsys):
    rc, lines = _check(capsys, "streethazards", str(tmp_path / "nowhere"))
    assert rc == 1 and lines == [f"{tmp_path / 'nowhere'}: folder not found; give the folder the dataset was extracted into"]
    (tmp_path / "cs").mkdir()
    rc, lines = _check(capsys, "cityscapes", str(tmp_path / "cs"))
    assert rc == 1 and len(lines) >= 1 and all("expected layout" in ln for ln in lines)


@pytest.fixture
def synthetic_copy(tiny_demo, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_demo["out"] / "data", root)
    return root


def _labels(root, split="test"):
    return sorted((root / "test" / "annotations" / split).rglob("*.png"))


def test_a_missing_label_is_one_line_naming_the_archive(synthetic_copy, capsys):
    lab = _labels(synthetic_copy)[0]
    lab.unlink()
    rc, lines = _check(capsys, "streethazards", str(synthetic_copy))
    assert rc == 1
    hits = [ln for ln in lines if str(lab) in ln]
    assert len(hits) == 1 and "not found" in hits[0] and "streethazards_train.tar and streethazards_test.tar" in hits[0]


def test_many_files_with_one_problem_fold_into_one_line(synthetic_copy, capsys):
    labels = _labels(synthetic_copy)
    for lab in labels[:3]:
        arr = np.asarray(Image.open(lab))
        Image.fromarray(arr[:-2]).save(lab)  # 2 rows short: not the image's size
    rc, lines = _check(capsys, "streethazards", str(synthetic_copy))
    assert rc == 1
    hits = [ln for ln in lines if "the files do not belong together" in ln]
    assert len(hits) == 1 and hits[0].startswith(f"{labels[0]} and 2 more files: label size differs")
    assert "(first: label 128x62, image 0.png 128x64 (WxH))" in hits[0]


def test_label_values_outside_the_table(synthetic_copy, capsys):
    lab = _labels(synthetic_copy)[1]
    arr = np.asarray(Image.open(lab)).copy()
    arr[0, 0] = 200
    Image.fromarray(arr).save(lab)
    rc, lines = _check(capsys, "streethazards", str(synthetic_copy))
    hits = [ln for ln in lines if str(lab) in ln]
    assert rc == 1 and len(hits) == 1 and "label values [200] are not in the StreetHazards" in hits[0]
    rc, lines = _check(capsys, "streethazards", str(synthetic_copy), "--quick")  # headers only: not seen
    assert rc == 0


def test_an_unreadable_image(synthetic_copy, capsys):
    img = sorted((synthetic_copy / "test" / "images" / "test").rglob("*.png"))[2]
    img.write_bytes(b"\x89PNG broken")
    rc, lines = _check(capsys, "streethazards", str(synthetic_copy), "--split", "test")
    hits = [ln for ln in lines if str(img) in ln]
    assert rc == 1 and len(hits) == 1 and "image unreadable (" in hits[0]


def test_a_partial_smiyc_set_is_refused_by_its_own_count(tmp_path, rng, capsys):
    base = tmp_path / "ra" / "dataset_AnomalyTrack"
    for i in range(3):
        write_png(base / "images" / f"x{i}.png", random_image(rng, 8, 8))
        Image.fromarray(random_image(rng, 8, 8)).save(base / "images" / f"x{i}.jpg")
    rc, lines = _check(capsys, "road_anomaly21", str(tmp_path / "ra"))
    assert rc == 1 and any("found 3 frames, the official split has 110" in ln for ln in lines), lines


def test_evaluation_runs_the_same_check_first(tiny_demo, synthetic_copy, tmp_path, capsys):
    lab = _labels(synthetic_copy)[0]
    Image.fromarray(np.asarray(Image.open(lab))[:-1]).save(lab)  # one row short: read only when its frame is reached
    out = tmp_path / "eval"
    rc = cli(["eval", "--config", "eval_synthetic_tiny", f"data.root={synthetic_copy}", f"out={out}",
              f"backbone.checkpoint={tiny_demo['out'] / 'seg' / 'checkpoints' / 'best.pth'}", "methods=[{name: msp}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(lab) in err[0] and "anomseg data check streethazards" in err[0]
    assert not out.exists()  # refused before anything was written


def test_a_count_warning_is_kept_in_the_report(tiny_demo, synthetic_copy, tmp_path, capsys):
    marker = synthetic_copy / "synthetic.json"
    meta = json.loads(marker.read_text())
    meta["counts"]["test"] += 1  # as if a frame were lost
    marker.write_text(json.dumps(meta))
    out = tmp_path / "eval"
    rc = cli(["eval", "--config", "eval_synthetic_tiny", f"data.root={synthetic_copy}", f"out={out}",
              f"backbone.checkpoint={tiny_demo['out'] / 'seg' / 'checkpoints' / 'best.pth'}", "methods=[{name: msp}]",
              "protocol=per_image", "overlays.images=0"])
    err = capsys.readouterr().err
    assert rc == 0 and "warning: " in err and "the synthetic set was generated with" in err
    report = json.loads((out / "report.json").read_text())
    assert len(report["data_check"]) == 1 and "regenerate it" in report["data_check"][0]


def test_unknown_dataset_and_bad_option(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(["data", "check", "imagenet", str(tmp_path)])
    capsys.readouterr()
    (tmp_path / "x").mkdir()
    rc = cli(["data", "check", "cityscapes", str(tmp_path / "x"), "--option", "bogus=1", "--quiet"])
    out = capsys.readouterr()
    assert rc in (1, 2) and ("bogus" in out.out + out.err)


def test_cityscapes_counts_per_split(tmp_path, rng, capsys):
    from tests.test_data_cityscapes import make_tree as cityscapes_tree

    root = cityscapes_tree(tmp_path / "cs", rng)
    rc, lines = _check(capsys, "cityscapes", str(root), "--option", "num_val=2")
    assert rc == 1 and len(lines) == 2  # val: num_val frames held out of train, as many as asked
    assert "split 'train' has 5 frames, the official split has 2973" in lines[0]  # 2975 train images - num_val
    assert "split 'test' has 3 frames, the official split has 500" in lines[1]
    assert "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip" in lines[0]


def test_a_complete_smiyc_set_and_a_wrong_label_value(anomaly_track, tmp_path, capsys):
    import shutil

    root = tmp_path / "smiyc"
    shutil.copytree(anomaly_track[0], root)
    rc, lines = _check(capsys, "road_anomaly21", str(root))
    assert rc == 0 and lines == [f"{root}: road_anomaly21 is complete (every split checked: layout, counts, files, sizes, "
                                 f"label values)"]
    lab = root / "dataset_AnomalyTrack" / "labels_masks" / "validation0003_labels_semantic.png"
    arr = np.asarray(Image.open(lab)).copy()
    arr[arr == 1] = 2  # the 0/1/2 vs 0/1/255 kind of mix-up
    Image.fromarray(arr).save(lab)
    rc, lines = _check(capsys, "road_anomaly21", str(root))
    assert rc == 1 and len(lines) == 1 and lines[0].startswith(f"{lab}: label values [2] are not in the")
