"""EvaluationRecorder: one object owns an evaluation's state; recorded in parts, saved and loaded, or merged
from shards, it reports exactly what one uninterrupted run reports (and the per-image values are sklearn's)."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomseg.engine.recorder import EvaluationRecorder
from anomseg.metrics import MetricInputError

NAMES = ["a", "b"]
K = 3


def images(n=8, h=24, w=32, seed=0):
    """(id, {method: float32 (1, H, W)}, uint8 (1, H, W) target, int64 (K, K) confusion) per image."""
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        target = (g.random((1, h, w)) < 0.1).astype(np.uint8)
        target[0, :2] = 255  # void rows
        target[0, 5, 5], target[0, 6, 6] = 1, 0  # both classes on every image
        scores = {"a": (g.normal(size=(1, h, w)) + 1.5 * (target == 1)).astype(np.float32),
                  "b": g.random((1, h, w)).astype(np.float32)}
        conf = torch.from_numpy(g.integers(0, 5, (K, K)))
        out.append((i, {k: torch.from_numpy(v) for k, v in scores.items()}, torch.from_numpy(target), conf))
    return out


def recorder(tmp_path, protocols, name="r", rank=0):
    return EvaluationRecorder(NAMES, protocols, num_classes=K, components=True, component_track="obstacle",
                              spill_root=tmp_path / name / "spill", rank=rank)


def feed(rec, items):
    for i, scores, target, conf in items:
        rec.record(i, scores, target, rec.measure(scores, target, i, host_anomaly=target.numpy()), conf)


def report(rec):
    return rec.results(), rec.per_image_rows(str), rec.conf.tolist(), sorted(rec.done), rec.miou()


def same(x, y):
    """Equal, NaN equal to NaN (a metric over nothing)."""
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(same(a, b) for a, b in zip(x, y))
    if isinstance(x, float) and math.isnan(x):
        return isinstance(y, float) and math.isnan(y)
    return x == y


PROTOCOL_SETS = [["per_image"], ["pooled", "per_image", "caos"], ["smiyc", "pooled"]]


@pytest.mark.parametrize("protocols", PROTOCOL_SETS, ids=["+".join(p) for p in PROTOCOL_SETS])
def test_saved_loaded_and_continued_equals_one_run(tmp_path, protocols):
    items = images()
    one = recorder(tmp_path, protocols, "one")
    feed(one, items)
    first = recorder(tmp_path, protocols, "parts")
    feed(first, items[:3])
    path = first.save(tmp_path / "state" / "rank0.npz", {"version": 2})
    saved = EvaluationRecorder.read(path)
    assert saved["fingerprint"] == {"version": 2}
    resumed = recorder(tmp_path, protocols, "parts")
    resumed.load_state_dict(saved)
    assert resumed.done == {0, 1, 2}
    feed(resumed, items[3:])
    assert same(report(resumed), report(one))


@pytest.mark.parametrize("protocols", PROTOCOL_SETS, ids=["+".join(p) for p in PROTOCOL_SETS])
def test_merged_shards_equal_one_run(tmp_path, protocols):
    items = images()
    one = recorder(tmp_path, protocols, "one")
    feed(one, items)
    shards = [recorder(tmp_path, protocols, "shards", rank=r) for r in range(2)]
    for r, rec in enumerate(shards):
        feed(rec, [it for it in items if it[0] % 2 == r])
    shards[0].merge(shards[1])
    assert same(report(shards[0]), report(one))


def test_per_image_values_are_sklearns_and_conf_is_summed(tmp_path):
    items = images(n=4)
    rec = recorder(tmp_path, ["per_image"])
    feed(rec, items)
    rows = {(r[0], r[2]): r for r in rec.per_image_rows(str)}
    for i, scores, target, _ in items:
        t = target.numpy().ravel()
        keep = t != 255
        for n in NAMES:
            want = roc_auc_score(t[keep], scores[n].numpy().ravel()[keep])
            assert rows[(i, n)][3] == pytest.approx(want, abs=1e-12)
    assert rec.conf.tolist() == sum(it[3] for it in items).tolist()
    assert rec.anomaly_pixels() == sum(int((it[2] == 1).sum()) for it in items)


def test_hidden_labels_mark_images_done_without_counting(tmp_path):
    rec = recorder(tmp_path, ["per_image"])
    i, scores, target, conf = images(n=1)[0]
    rec.record(i, scores, target, {}, conf)
    assert rec.done == {0} and rec.anomaly_pixels() == 0 and int(rec.conf.sum()) == 0


def test_merge_refuses_other_methods(tmp_path):
    a = recorder(tmp_path, ["per_image"])
    b = EvaluationRecorder(["a"], ["per_image"], num_classes=K)
    with pytest.raises(MetricInputError, match="other methods"):
        a.merge(b)
