"""``anomseg predict`` on the tiny demo's pipeline file: a folder of mixed frames and an OpenCV-written MP4, the
outputs checked against the segmenter called directly and against scipy / OpenCV; resume, refusals, the EMA filter,
and the operating-point rules against exact pixel counts and sklearn."""

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import anomseg
from anomseg.cli import main as cli
from anomseg.predict import read_score_png

FRAMES = 6  # of the test video


def _frames_of(demo_out, n):
    test = anomseg.build_dataset("streethazards", demo_out / "data", "test")
    return [test[i % len(test)]["image"] for i in range(n)]


@pytest.fixture(scope="module")
def inputs(tiny_demo, tmp_path_factory):
    """A folder: a JPEG, a PNG of another size in a subfolder, a grey PNG, an RGBA PNG, a 1080 x 1920 phone JPEG
    stored sideways with EXIF orientation 6, and an MP4 written by OpenCV."""
    root = tmp_path_factory.mktemp("predict_in")
    imgs = _frames_of(tiny_demo["out"], FRAMES)
    (root / "sub").mkdir()
    Image.fromarray(imgs[0]).save(root / "a.jpg", quality=92)
    Image.fromarray(cv2.resize(imgs[1], (150, 90))).save(root / "sub" / "b.png")
    Image.fromarray(imgs[2]).convert("L").save(root / "grey.png")
    Image.fromarray(imgs[3]).convert("RGBA").save(root / "rgba.png")
    phone = cv2.resize(imgs[4], (1080, 1920))  # stored 1080 wide, 1920 tall; EXIF 6 = shown rotated 90 deg clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(phone).save(root / "phone.jpg", quality=90, exif=exif)
    w = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 64))
    for im in imgs:
        w.write(cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    w.release()
    return root


def _decoded_video(path):
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            return out
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


@pytest.fixture(scope="module")
def run(tiny_demo, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict_out") / "p"
    pipeline = tiny_demo["out"] / "pipeline.pt"
    assert cli(["predict", "--pipeline", str(pipeline), str(inputs), "--out", str(out), "--quiet"]) == 0
    return out, pipeline


def _rows(out):
    with open(out / "frames.csv", newline="") as f:
        return {r["frame"]: r for r in csv.DictReader(f)}


def test_predict_writes_every_output_as_the_segmenter_scores(run, inputs, capsys):
    out, pipeline = run
    seg = anomseg.AnomalySegmenter.load(pipeline, device="cpu")
    t = seg.operating_point["threshold"]
    assert seg.operating_point["rule"] == "tpr" and seg.operating_point["target"] == 0.95
    rows = _rows(out)
    names = ["a", "clip/" + "000000", "grey", "phone", "rgba", "sub/b"]
    assert set(names) <= set(rows) and len(rows) == 5 + FRAMES
    expected_images = {"a": np.asarray(Image.open(inputs / "a.jpg").convert("RGB")),
                       "sub/b": np.asarray(Image.open(inputs / "sub" / "b.png").convert("RGB")),
                       "grey": np.stack([np.asarray(Image.open(inputs / "grey.png"))] * 3, -1),
                       "rgba": np.asarray(Image.open(inputs / "rgba.png"))[..., :3],
                       # EXIF 6: the stored pixels turned 90 degrees clockwise (np.rot90 k=-1), as a viewer shows them
                       "phone": np.rot90(np.asarray(Image.open(inputs / "phone.jpg").convert("RGB")), -1)}
    for i, frame in enumerate(_decoded_video(inputs / "clip.mp4")):
        expected_images[f"clip/{i:06d}"] = frame
    assert len(expected_images) == len(rows)
    for name, image in expected_images.items():
        scores = np.load(out / "scores" / f"{name}.npy")
        assert scores.dtype == np.float16 and scores.shape == image.shape[:2], name
        direct = seg(np.ascontiguousarray(image))
        np.testing.assert_allclose(scores.astype(np.float32), direct, rtol=2e-3, atol=2e-3, err_msg=name)
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        flagged = direct >= t
        border = np.abs(direct - t) < 2e-3 * (1 + abs(t))  # float16 storage: only pixels at the threshold may differ
        assert ((mask == 255) == flagged)[~border].all(), name
        r = rows[name]
        assert (int(r["width"]), int(r["height"])) == (image.shape[1], image.shape[0])
        assert float(r["flagged_share"]) == pytest.approx((mask == 255).mean(), abs=1e-9)
        labelled, n = ndimage.label(mask == 255, structure=np.ones((3, 3)))  # 8-connected, >= 10 px (min_size)
        assert int(r["regions"]) == int((np.bincount(labelled.ravel())[1:] >= 10).sum()), name
        assert float(r["threshold"]) == t and float(r["seconds"]) > 0
        assert (out / "panels" / f"{name}.jpg").is_file()
    assert "grey converted to RGB" in rows["grey"]["note"] and "alpha" in rows["rgba"]["note"]
    assert "EXIF orientation 6" in rows["phone"]["note"]
    video = _decoded_video(out / "videos" / "clip.mp4")
    assert len(video) == FRAMES
    page = (out / "index.html").read_text()
    assert all(f'panels/{n}.jpg' in page for n in rows) and "videos/clip.mp4" in page
    assert "TPR 95 %" in page  # the operating point, as in every panel
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == len(rows) and summary["scored now"] == len(rows) and summary["fps"] > 0


def test_a_rerun_skips_what_is_written_and_redoes_what_is_missing(run, inputs, tmp_path, capsys):
    out0, pipeline = run
    out = tmp_path / "p"
    shutil.copytree(out0, out)
    (out / "masks" / "grey.png").unlink()  # one frame half written
    with open(out / "frames.jsonl", "a") as f:
        f.write('{"frame": "torn')  # a run killed mid-line
    stamps = {p: p.stat().st_mtime_ns for p in (out / "scores").rglob("*.npy")}
    video_stamp = (out / "videos" / "clip.mp4").stat().st_mtime_ns
    capsys.readouterr()
    assert cli(["predict", "--pipeline", str(pipeline), str(inputs), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "(1 scored now, " in printed and "frames/s" in printed
    assert (out / "masks" / "grey.png").is_file()
    changed = [p.name for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert changed == ["grey.npy"]
    assert len(_rows(out)) == len(_rows(out0)) and len(_decoded_video(out / "videos" / "clip.mp4")) == FRAMES
    assert (out / "videos" / "clip.mp4").stat().st_mtime_ns == video_stamp  # no frame of it was new: kept
    (out / "panels" / "clip" / "000003.jpg").unlink()  # one video frame missing: it is scored, the video rebuilt
    assert cli(["predict", "--pipeline", str(pipeline), str(inputs), "--out", str(out), "--quiet"]) == 0
    assert "(1 scored now, " in capsys.readouterr().out
    assert len(_decoded_video(out / "videos" / "clip.mp4")) == FRAMES
    assert (out / "videos" / "clip.mp4").stat().st_mtime_ns != video_stamp
    # other settings into the same folder: refused, nothing rewritten
    assert cli(["predict", "--pipeline", str(pipeline), str(inputs), "--out", str(out), "--quiet",
                "--threshold", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made with other inputs (changed: operating_point)" in err[0]


def test_png16_scores_state_their_scale(run, inputs, tmp_path):
    out0, pipeline = run
    out = tmp_path / "p"
    assert cli(["predict", "--pipeline", str(pipeline), str(inputs / "a.jpg"), "--out", str(out), "--quiet",
                "--scores", "png16"]) == 0
    back = read_score_png(out / "scores" / "a.png")
    ref = np.load(out0 / "scores" / "a.npy").astype(np.float32)
    row = _rows(out)["a"]
    span = float(row["score_max"]) - float(row["score_min"])
    assert back.min() == pytest.approx(float(row["score_min"]), abs=1e-6)
    np.testing.assert_allclose(back, ref, atol=span / 65535 + 2e-3 * np.abs(ref).max())


def test_the_ema_filter_follows_its_formula(run, inputs, tmp_path):
    out0, pipeline = run
    out = tmp_path / "p"
    assert cli(["predict", "--pipeline", str(pipeline), str(inputs / "clip.mp4"), "--out", str(out), "--quiet",
                "--ema", "0.5"]) == 0
    raw = [np.load(out0 / "scores" / "clip" / f"{i:06d}.npy").astype(np.float64) for i in range(FRAMES)]
    f = raw[0]
    for i in range(FRAMES):
        f = raw[0] if i == 0 else 0.5 * f + 0.5 * raw[i]
        got = np.load(out / "scores" / "clip" / f"{i:06d}.npy").astype(np.float64)
        np.testing.assert_allclose(got, f, atol=4e-3 * (1 + np.abs(f).max()))


@pytest.mark.parametrize("make, args, message", [
    (lambda d: Image.fromarray(np.zeros((8, 8), np.uint16)).save(d / "deep.png"), ["deep.png"],
     "deep.png: a I;16 image (16-bit or float); convert it to 8-bit RGB"),
    (lambda d: (d / "notes.md").write_text("x"), ["notes.md"], "notes.md: not an image"),
    (lambda d: (d / "empty").mkdir(), ["empty"], "empty: folder holds no image or video file"),
    (lambda d: None, ["nothing_*.jpg"], "nothing_*.jpg: the pattern matches no image or video file"),
    (lambda d: (d / "list.txt").write_text("missing.jpg\n"), ["list.txt"], "missing.jpg (listed in"),
    (lambda d: (d / "bad.mp4").write_bytes(b"not a video"), ["bad.mp4"], "bad.mp4: OpenCV cannot open this video"),
    (lambda d: [(d / "x").mkdir(), Image.new("RGB", (8, 8)).save(d / "x" / "f.png"), Image.new("RGB", (8, 8)).save(d / "f.png")],
     ["x/f.png", "f.png"], "would both write outputs named 'f'"),
])
def test_bad_inputs_are_one_line(run, tmp_path, capsys, monkeypatch, make, args, message):
    _, pipeline = run
    monkeypatch.chdir(tmp_path)
    make(tmp_path)
    assert cli(["predict", "--pipeline", str(pipeline), *args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_pipeline_without_operating_point_needs_a_threshold(tiny_demo, inputs, tmp_path, capsys):
    ckpt = str(tiny_demo["out"] / "seg" / "checkpoints" / "best.pth")
    args = ["predict", "--checkpoint", ckpt, "--method", "max_logit", str(inputs / "a.jpg"), "--quiet"]
    assert cli([*args, "--out", str(tmp_path / "o")]) == 2
    assert "no operating point: pass --threshold" in capsys.readouterr().err
    assert cli([*args, "--out", str(tmp_path / "o"), "--threshold", "1.5"]) == 0
    assert "threshold 1.5 (a number: given to predict)" in (tmp_path / "o" / "index.html").read_text()


def test_operating_point_rules_against_exact_counts(tiny_demo):
    from sklearn.metrics import precision_recall_curve

    out = tiny_demo["out"]
    seg = anomseg.AnomalySegmenter.from_files(checkpoint=str(out / "seg" / "checkpoints" / "best.pth"),
                                              method="max_logit", device="cpu")
    val = anomseg.build_dataset("streethazards", out / "data", "val")
    s = np.concatenate([seg(val[i]["image"]).ravel() for i in range(len(val))])
    a = np.concatenate([val[i]["anomaly"].ravel() for i in range(len(val))])
    s, y = s[a != 255], a[a != 255] == 1
    edge = 2.0 ** -11 * 4  # histogram bins: 2^11 per octave; a neighbouring threshold is within a few bin widths
    op = seg.calibrate(val, tpr=0.9)
    assert op["rule"] == "tpr" and (s[y] >= op["threshold"]).mean() >= 0.9
    assert (s[y] >= op["threshold"] + edge * (1 + abs(op["threshold"]))).mean() < 0.9
    op = seg.calibrate(val, tpr=None, fpr=0.1)
    assert op["rule"] == "fpr" and (s[~y] >= op["threshold"]).mean() <= 0.1
    assert (s[~y] >= op["threshold"] - edge * (1 + abs(op["threshold"]))).mean() > 0.1
    op = seg.calibrate(val, tpr=None, best_f1=True)
    p, r, _ = precision_recall_curve(y, s)
    best = np.nanmax(2 * p * r / np.maximum(p + r, 1e-12))
    got = s >= op["threshold"]
    f1 = 2 * (got & y).sum() / (got.sum() + y.sum())
    assert f1 == pytest.approx(best, abs=2e-3)
    assert seg.describe_operating_point().endswith("(best pixel F1 on 3 images of StreetHazardsDataset val)")
    with pytest.raises(anomseg.PipelineError, match="give one rule"):
        seg.calibrate(val, fpr=0.1, best_f1=True)


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "batch_size=0: give a whole number >= 1"),
    (["--ema", "1"], "ema=1.0: give the weight of the past frames, a number in [0, 1)"),
    (["--ema", "nan"], "ema=nan: give the weight of the past frames"),
    (["--short-side", "3"], "short_side=3: give a whole number of pixels >= 16"),
    (["--threshold", "inf"], "threshold=inf: give a finite number"),
    (["--device", "cuda:99"], "device='cuda:99': no such CUDA device here"),
    (["--device", "foo"], "device='foo': not a device; give cpu, cuda or cuda:<index>"),
])
def test_bad_settings_are_one_line(run, inputs, tmp_path, capsys, extra, message):
    _, pipeline = run
    assert cli(["predict", "--pipeline", str(pipeline), str(inputs / "a.jpg"), "--out", str(tmp_path / "o"), "--quiet",
                *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_short_side_scores_a_smaller_copy_and_returns_the_frame_size(run, inputs, tmp_path):
    """A 1920 x 1080 (upright) phone frame scored at short side 64: the map has the frame's size and equals the
    segmenter's map of the 64 x 114 copy (area-resized by OpenCV here), bilinearly enlarged."""
    out0, pipeline = run
    out = tmp_path / "p"
    assert cli(["predict", "--pipeline", str(pipeline), str(inputs / "phone.jpg"), "--out", str(out), "--quiet",
                "--short-side", "64"]) == 0
    got = np.load(out / "scores" / "phone.npy").astype(np.float32)
    image = np.ascontiguousarray(np.rot90(np.asarray(Image.open(inputs / "phone.jpg").convert("RGB")), -1))
    assert got.shape == image.shape[:2] == (1080, 1920)
    small = cv2.resize(image, (round(1920 * 64 / 1080), 64), interpolation=cv2.INTER_AREA)
    seg = anomseg.AnomalySegmenter.load(pipeline, device="cpu")
    ref = cv2.resize(seg(small), (1920, 1080), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3)
