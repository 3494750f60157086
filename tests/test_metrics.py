"""The evaluator against independent references: scikit-learn, and plain loops over the definitions."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from anomseg.metrics import AnomalyMetrics, MetricInputError, ScoreHistogram, exact_metrics, image_components

TOL = 1e-12


def random_batch(rng, n=6, h=None, w=None, ties=None):
    """Images of varied size and score resolution, with void pockets and some without anomaly."""
    out = []
    for i in range(n):
        hh, ww = h or int(rng.integers(1, 24)), w or int(rng.integers(2, 24))
        kind = ties or ("continuous", "ties", "heavy", "equal")[i % 4]
        if kind == "continuous":
            s = rng.normal(size=(hh, ww))
        elif kind == "ties":
            s = np.round(rng.normal(size=(hh, ww)), 1)
        elif kind == "heavy":
            s = rng.integers(0, 3, (hh, ww)).astype(float)
        else:
            s = np.full((hh, ww), 0.25)
        a = (rng.random((hh, ww)) < rng.uniform(0.05, 0.6)).astype(np.uint8)
        s = s + a * rng.uniform(0, 1.5)
        void = rng.random((hh, ww)) < 0.15
        a[void] = 255
        if i % 5 == 4:
            a[a == 1] = 0  # an image without anomaly
        out.append((s.astype(np.float32), a))
    return out


def sk_first_fpr(y, s, level=0.95):
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr[np.argmax(tpr >= level)]


def caos_fpr_by_definition(y, s, level=0.95):
    """FPR at the PR-curve point whose recall is nearest ``level``, the points taken from the lowest
    threshold reaching full recall up to the highest threshold, first on ties (FORMATS.md)."""
    y = np.asarray(y, bool)
    P, N = int(y.sum()), int((~y).sum())
    points = []
    for t in sorted(set(s.tolist()), reverse=True):
        points.append((int((s[y] >= t).sum()), int((s[~y] >= t).sum())))
    full = next(i for i, (tp, _) in enumerate(points) if tp == P)
    best, best_fp = None, None
    for tp, fp in points[full::-1]:
        d = abs(tp / P - level)
        if best is None or d < best:
            best, best_fp = d, fp
    return best_fp / N


def test_exact_metrics_match_sklearn_on_random_ties():
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(400):
        n = int(rng.integers(2, 80))
        levels = int(rng.integers(1, 6))
        s = rng.integers(0, levels, n).astype(np.float64) if trial % 2 else rng.normal(size=n)
        y = rng.random(n) < rng.uniform(0.02, 0.98)
        if y.all() or not y.any():
            continue
        m = exact_metrics(s[y], s[~y])
        assert abs(m["auroc"] - roc_auc_score(y, s)) < TOL
        assert abs(m["aupr"] - average_precision_score(y, s)) < TOL
        assert abs(m["fpr95"] - sk_first_fpr(y, s)) < TOL
        assert abs(m["fpr95_nearest"] - caos_fpr_by_definition(y, s)) < TOL
        checked += 1
    assert checked > 350


def test_all_equal_scores():
    m = exact_metrics(np.zeros(3), np.zeros(7))
    assert m["auroc"] == 0.5 and abs(m["aupr"] - 0.3) < TOL and m["fpr95"] == 1.0 and m["fpr95_nearest"] == 1.0


@pytest.mark.parametrize("protocol", ["per_image", "caos"])
def test_per_image_protocols_against_sklearn(protocol):
    rng = np.random.default_rng(1)
    batch = random_batch(rng, n=40)
    ev = AnomalyMetrics(protocol)
    for s, a in batch:
        ev.update(s, a)
    ref, skipped = {"auroc": [], "aupr": [], "fpr95": []}, 0
    for s, a in batch:
        if protocol == "caos":
            keep = np.ones(a.shape, bool)  # void counted as inlier
        else:
            keep = a != 255
        y, x = (a[keep] == 1), s[keep]
        if y.all() or not y.any():
            skipped += 1
            continue
        ref["auroc"].append(roc_auc_score(y, x))
        ref["aupr"].append(average_precision_score(y, x))
        ref["fpr95"].append(caos_fpr_by_definition(y, x) if protocol == "caos" else sk_first_fpr(y, x))
    out = ev.compute()
    assert out["skipped"] == skipped and out["images"] == len(batch) - skipped > 20
    for key, values in ref.items():
        assert abs(out[key] - np.mean(values)) < 1e-12
        assert abs(out[f"{key}_std"] - np.std(values)) < 1e-12
    assert len(ev.per_image()) == out["images"]


def test_pooled_exact_and_histogram_against_sklearn():
    rng = np.random.default_rng(2)
    batch = random_batch(rng, n=30, ties="continuous")
    exact, approx = AnomalyMetrics("pooled", exact=True), AnomalyMetrics("pooled")
    for s, a in batch:
        exact.update(s, a)
        approx.update(s, a)
    s = np.concatenate([s.ravel() for s, _ in batch])
    a = np.concatenate([a.ravel() for _, a in batch])
    y, x = a[a != 255] == 1, s[a != 255]
    e, h = exact.compute(), approx.compute()
    assert abs(e["auroc"] - roc_auc_score(y, x)) < TOL
    assert abs(e["aupr"] - average_precision_score(y, x)) < TOL
    assert abs(e["fpr95"] - sk_first_fpr(y, x)) < TOL
    assert e["images"] == 30 and e["skipped"] == 0
    # the histogram's values lie within its documented bounds of the exact ones
    assert abs(h["auroc"] - e["auroc"]) <= h["auroc_bound"] + TOL
    assert h["aupr_low"] - TOL <= e["aupr"] <= h["aupr_high"] + TOL
    assert h["fpr95_low"] - TOL <= e["fpr95"] <= h["fpr95"] + TOL


@pytest.mark.parametrize("bits", [0, 2, 6, 11])
def test_histogram_bounds_hold_at_every_resolution(bits):
    """Coarse bins make the binned values differ; the exact values must stay within the bounds."""
    rng = np.random.default_rng(bits)
    for trial in range(20):
        n = int(rng.integers(50, 3000))
        y = rng.random(n) < rng.uniform(0.02, 0.5)
        if not y.any() or y.all():
            continue
        s = (rng.normal(size=n) * rng.uniform(0.01, 100) + y * rng.uniform(0, 2)).astype(np.float32)
        h = ScoreHistogram(mantissa_bits=bits, buffer_size=97)
        for chunk in np.array_split(np.arange(n), 7):
            h.update(s[chunk], y[chunk].astype(np.uint8))
        m, e = h.metrics(), exact_metrics(s[y], s[~y])
        assert abs(m["auroc"] - e["auroc"]) <= m["auroc_bound"] + TOL
        assert m["aupr_low"] - TOL <= e["aupr"] <= m["aupr_high"] + TOL
        assert m["fpr95_low"] - TOL <= e["fpr95"] <= m["fpr95"] + TOL


def test_histogram_handles_any_score_range_and_signed_zero():
    s = np.array([-1e30, -2.0, -0.0, 0.0, 1e-38, 3.0, 1e30], np.float32)
    a = np.array([0, 0, 1, 0, 0, 1, 1], np.uint8)
    h = ScoreHistogram(mantissa_bits=11)
    h.update(s, a)
    m, e = h.metrics(), exact_metrics(s[a == 1], s[a == 0])
    assert abs(m["auroc"] - e["auroc"]) <= m["auroc_bound"] + TOL
    assert h.counts.nbytes <= 64 * 2**20 and h.nbytes <= 64 * 2**20


@pytest.mark.parametrize("protocol,exact", [("per_image", False), ("caos", False), ("pooled", False), ("pooled", True)])
def test_batches_and_shards_equal_one_run(protocol, exact):
    rng = np.random.default_rng(3)
    batch = random_batch(rng, n=12, h=16, w=20)
    scores = np.stack([s for s, _ in batch])
    targets = np.stack([a for _, a in batch])
    whole = AnomalyMetrics(protocol, exact=exact)
    whole.update(scores, targets)
    streamed = AnomalyMetrics(protocol, exact=exact)
    for i in range(0, 12, 5):
        streamed.update(scores[i:i + 5], targets[i:i + 5])
    shard_a, shard_b = AnomalyMetrics(protocol, exact=exact), AnomalyMetrics(protocol, exact=exact)
    order = rng.permutation(12)
    for i in order[:7]:
        shard_b.update(scores[i], targets[i], ids=[i])
    for i in order[7:]:
        shard_a.update(scores[i], targets[i], ids=[i])
    shard_a.merge(shard_b)
    ref = whole.compute()
    assert streamed.compute() == ref
    assert shard_a.compute() == ref  # bit for bit: sums are exactly rounded, order-free
    revived = AnomalyMetrics.from_state(shard_a.state_dict())
    assert revived.compute() == ref


def test_bad_input_names_the_image():
    ev = AnomalyMetrics()
    good = np.zeros((4, 4), np.uint8)
    with pytest.raises(MetricInputError, match="image 0: scores shape"):
        ev.update(np.zeros((4, 5), np.float32), good)
    s = np.zeros((2, 4, 4), np.float32)
    s[1, 0, 0] = np.nan
    with pytest.raises(MetricInputError, match="image 1: 1 scores are NaN or infinite"):
        ev.update(s, np.zeros((2, 4, 4), np.uint8))
    bad = good.copy()
    bad[0, 0] = 2
    with pytest.raises(MetricInputError, match=r"image 2: target values \[2\]"):
        ev.update(np.zeros((4, 4), np.float32), bad, ids=[2])
    with pytest.raises(MetricInputError, match="protocol='fishy' is unknown"):
        AnomalyMetrics("fishy")
    ev.update(np.zeros((4, 4), np.float32), good, ids=[7])
    with pytest.raises(MetricInputError, match="image id 7 was already evaluated"):
        ev.update(np.zeros((4, 4), np.float32), good, ids=[7])


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    s, a = random_batch(rng, n=1, h=8, w=8, ties="continuous")[0]
    a[0, 0], a[0, 1] = 1, 0
    ev_np, ev_t = AnomalyMetrics(), AnomalyMetrics()
    ev_np.update(s, a)
    ev_t.update(torch.from_numpy(s), torch.from_numpy(a))
    assert ev_np.compute() == ev_t.compute()


# --- component metrics -------------------------------------------------------------------------

def components_by_definition(score, anomaly, t, min_pred, min_gt):
    """sIoU / PPV with scipy's labelling and plain loops over the definitions (FORMATS.md), in the
    reference's order (road-anomaly-benchmark ``default_instancer``): label and size-filter the
    prediction on the full map first, then void the small GT components and restrict to the rest."""
    eight = np.ones((3, 3))
    pr_lab, n_pr = ndimage.label((score >= t) & (anomaly != 255), structure=eight)
    for c in range(1, n_pr + 1):
        if (pr_lab == c).sum() < min_pred:
            pr_lab[pr_lab == c] = 0
    gt_lab, n_gt = ndimage.label(anomaly == 1, structure=eight)
    roi = anomaly != 255
    gts = []
    for k in range(1, n_gt + 1):
        comp = gt_lab == k
        if comp.sum() < min_gt:
            roi &= ~comp
        else:
            gts.append(comp)
    preds = [(pr_lab == c) & roi for c in np.unique(pr_lab[roi]) if c > 0]
    all_gt = np.zeros(anomaly.shape, bool)
    for g in gts:
        all_gt |= g
    siou = []
    for g in gts:
        touching = [p for p in preds if (p & g).any()]
        P = np.zeros(anomaly.shape, bool)
        for p in touching:
            P |= p
        inter = (g & P).sum()
        A = (P & all_gt & ~g).sum()
        siou.append(inter / (P.sum() + g.sum() - inter - A))
    ppv = [(p & all_gt).sum() / p.sum() for p in preds]
    return np.array(siou), np.array(ppv)


def test_components_match_the_definition():
    rng = np.random.default_rng(5)
    for trial in range(25):
        h, w = 40, 50
        a = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(0, 5))):
            y, x, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, 8)
            a[max(0, y - r): y + r, max(0, x - r): x + r] = 1
        a[rng.random((h, w)) < 0.03] = 255
        s = ndimage.gaussian_filter(rng.normal(size=(h, w)) + 2.0 * (a == 1), 1.0).astype(np.float32)
        t = float(np.quantile(s, rng.uniform(0.7, 0.95)))
        mine = image_components(s, a, t, min_pred_size=4, min_gt_size=6)
        ref = components_by_definition(s, a, t, 4, 6)
        np.testing.assert_allclose(np.sort(mine[0]), np.sort(ref[0]), atol=1e-12)  # labelling orders differ
        np.testing.assert_allclose(np.sort(mine[1]), np.sort(ref[1]), atol=1e-12)


def test_component_order_is_the_references():
    """A 12-px predicted blob, 4 px of it on a 4-px GT component (voided as < 6 px): labelled first it
    is 12 px >= 10 and kept (8 px remain in the region); voiding first would leave 8 px and drop it."""
    a = np.zeros((20, 20), np.uint8)
    a[2:4, 2:4] = 1                      # small GT component (4 px < min_gt 6)
    a[12:18, 12:18] = 1                  # a kept GT component (36 px)
    s = np.zeros((20, 20), np.float32)
    s[2:4, 2:8] = 1.0                    # 12-px prediction, 4 px on the small GT
    s[12:18, 12:18] = 1.0
    siou, ppv = image_components(s, a, 0.5, min_pred_size=10, min_gt_size=6)
    ref = components_by_definition(s, a, 0.5, 10, 6)
    assert len(ppv) == 2 and sorted(ppv.tolist()) == [0.0, 1.0] and siou.tolist() == [1.0]
    np.testing.assert_allclose(np.sort(ppv), np.sort(ref[1]))


def test_component_f1_and_best_f1_threshold():
    a = np.zeros((60, 60), np.uint8)
    a[10:30, 10:30] = 1  # one GT component of 400 px
    s = np.zeros((60, 60), np.float32)
    s[10:30, 10:30] = 1.0  # a perfect prediction
    s[45:50, 45:50] = 1.0  # plus a 25-px false blob
    ev = AnomalyMetrics("pooled", exact=True, components=True, min_pred_size=10, min_gt_size=10)
    ev.update(s, a)
    out = ev.compute()
    # best pixel F1 selects score >= 1.0; the GT component has sIoU 1, the blob PPV 0:
    # every t gives TP 1, FN 0, FP 1 -> F1 = 2/3
    assert out["component_threshold"] == 1.0
    assert out["sIoU"] == 1.0 and out["PPV"] == 0.5 and abs(out["mean_F1"] - 2 / 3) < TOL
    fixed = AnomalyMetrics("pooled", exact=True, components=True, component_threshold=0.5, min_pred_size=10, min_gt_size=10)
    fixed.update(s, a)
    assert fixed.compute()["mean_F1"] == out["mean_F1"]
    # under the anomaly track's sizes (500 / 100 px) both predicted components (400 and 25 px) are
    # dropped: the GT component is missed (FN 1, TP 0) and no prediction is left to be a FP
    track = AnomalyMetrics("pooled", exact=True, components=True, component_threshold=0.5)
    track.update(s, a)
    out = track.compute()
    assert out["mean_F1"] == 0.0 and out["pred_components"] == 0 and out["gt_components"] == 1


def test_component_spill_survives_a_resume(tmp_path):
    """With a spill folder, a state saved mid-stream and restored later still sees every image's map."""
    rng = np.random.default_rng(6)
    maps = [(rng.normal(size=(30, 30)).astype(np.float32), np.zeros((30, 30), np.uint8)) for _ in range(4)]
    for s, a in maps:
        a[5:15, 5:15] = 1
        s[5:15, 5:15] += 2.5
    opts = dict(components=True, min_pred_size=5, min_gt_size=5, spill_dir=tmp_path / "spill")
    whole = AnomalyMetrics("pooled", **opts)
    for i, (s, a) in enumerate(maps):
        whole.update(s, a, ids=[i])
    first = AnomalyMetrics("pooled", **opts)
    for i, (s, a) in enumerate(maps[:2]):
        first.update(s, a, ids=[i])
    state = first.state_dict()
    del first  # the process that wrote it is gone
    resumed = AnomalyMetrics("pooled", **opts)
    resumed.merge(AnomalyMetrics.from_state(state))
    for i, (s, a) in enumerate(maps[2:], 2):
        resumed.update(s, a, ids=[i])
    assert resumed.compute() == whole.compute()


def test_histogram_bin_edges_vectorised_equal_the_float_bits():
    """bin_lower_edges: the float32 whose order-preserving key is the bin's first key, decoded independently
    with struct (sign bit set in the key: a positive float; clear: a negative one, all bits flipped)."""
    import struct

    from anomseg.metrics import ScoreHistogram

    for bits in (0, 7, 11):
        h = ScoreHistogram(bits)
        bins = np.arange(0, 1 << (9 + bits), max(1, (1 << (9 + bits)) // 5000))
        got = h.bin_lower_edges(bins)
        for b, v in zip(bins, got):
            key = int(b) << (32 - h.bits)
            raw = key ^ 0x80000000 if key & 0x80000000 else ~key & 0xFFFFFFFF
            want = struct.unpack("<f", struct.pack("<I", raw))[0]
            assert (np.isnan(v) and np.isnan(want)) or v == want, (bits, b)
            assert np.isnan(v) and np.isnan(h.bin_lower_edge(b)) or h.bin_lower_edge(b) == v
