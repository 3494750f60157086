"""Exact per-image metrics in torch (anomseg.metrics.device) against the numpy reference and scikit-learn,
on 3000 random maps with ties, constant maps, single anomalous pixels, all-void maps and float16 scores."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from anomseg.metrics import exact_metrics
from anomseg.metrics.device import CPU_PATHS, cpu_path, measure_cpu_paths, per_image_metrics


def random_batch(rng, b=50, h=24, w=32):
    a = (rng.random((b, h, w)) < rng.uniform(0.01, 0.3, (b, 1, 1))).astype(np.uint8)
    a[rng.random((b, h, w)) < 0.1] = 255
    s = rng.normal(size=(b, h, w)) + 1.5 * (a == 1)
    kind = rng.integers(0, 5, b)
    s[kind == 1] = np.round(s[kind == 1] * 3) / 3  # heavy ties
    s[kind == 2] = 0.25  # constant maps
    one = np.flatnonzero(kind == 3)
    a[one] = np.where(a[one] == 1, 0, a[one])
    a[one, 0, 0] = 1  # a single anomalous pixel
    a[kind == 4] = np.where(rng.random((int((kind == 4).sum()), h, w)) < 0.5, 255, a[kind == 4])
    a[0] = 255  # an all-void map
    a[1] = np.where(a[1] == 1, 0, a[1])  # a map without anomaly
    return s.astype(np.float16 if rng.random() < 0.3 else np.float32), a


@pytest.mark.parametrize("per_row,path", [(None, "torch"), (False, "torch"), (None, "numpy")],
                         ids=["cpu-path", "accelerator-path", "numpy-path"])
@pytest.mark.parametrize("protocol", ["per_image", "caos"])
def test_torch_equals_numpy_on_3000_maps(protocol, per_row, path):
    """Every branch (CPU: row by row; the accelerator's: batched sorts and searches; the numpy path), half the batches with a
    shared (1, H, W) target, half with the targets also given on the host."""
    rng = np.random.default_rng(0 if protocol == "per_image" else 1)
    compared = 0
    for k in range(60):  # 3000 maps
        s, a = random_batch(rng)
        if k % 2:  # one target shared by every map of the batch (several methods of one image)
            a = np.broadcast_to(a[2:3], a.shape).copy()
        target = torch.from_numpy(a[:1] if k % 2 else a)
        got = per_image_metrics(torch.from_numpy(s), target, protocol, memory_budget=1 << 20, per_row=per_row,
                                host_anomaly=target.clone() if k % 4 >= 2 else None, path=path)
        for i in range(len(s)):
            pos = s[i][a[i] == 1].astype(np.float32)
            neg = s[i][(a[i] != 1) if protocol == "caos" else (a[i] == 0)].astype(np.float32)
            assert int(got["anomaly_px"][i]) == pos.size and int(got["inlier_px"][i]) == neg.size
            if pos.size == 0 or neg.size == 0:
                assert np.isnan(float(got["auroc"][i]))
                continue
            ref = exact_metrics(pos, neg)
            assert abs(float(got["auroc"][i]) - ref["auroc"]) <= 1e-12
            assert abs(float(got["aupr"][i]) - ref["aupr"]) <= 1e-12
            want = ref["fpr95_nearest"] if protocol == "caos" else ref["fpr95"]
            assert abs(float(got["fpr95"][i]) - want) <= 1e-12
            compared += 1
    assert compared > 2500


def test_torch_equals_scikit_learn():
    rng = np.random.default_rng(2)
    s, a = random_batch(rng, b=20)
    got = per_image_metrics(torch.from_numpy(s), torch.from_numpy(a))
    for i in range(len(s)):
        keep = a[i] != 255
        y, x = a[i][keep] == 1, s[i][keep].astype(np.float64)
        if y.all() or not y.any():
            continue
        assert abs(float(got["auroc"][i]) - roc_auc_score(y, x)) <= 1e-12
        assert abs(float(got["aupr"][i]) - average_precision_score(y, x)) <= 1e-12


def ap_of_map(got, b):
    """Map b's AP from the flat per-anomaly-pixel terms, summed as the evaluator sums them."""
    px = got["anomaly_px"].numpy()
    at = int(px[:b].sum())
    return float(np.sum(got["ap_terms"][at:at + px[b]].numpy()[got["ap_last"][at:at + px[b]].numpy()]))


def test_flat_ap_terms_are_each_maps_reference_terms():
    rng = np.random.default_rng(9)
    s, a = random_batch(rng, b=30)
    got = per_image_metrics(torch.from_numpy(s), torch.from_numpy(a))
    assert got["ap_terms"].shape == got["ap_last"].shape == (int(got["anomaly_px"].sum()),)
    for b in range(len(s)):
        pos, neg = s[b][a[b] == 1].astype(np.float32), s[b][a[b] == 0].astype(np.float32)
        if pos.size and neg.size:
            assert ap_of_map(got, b) == exact_metrics(pos, neg)["aupr"]  # bit for bit
            assert int(got["ap_last"][int(got["anomaly_px"][:b].sum()):][:pos.size].sum()) == len(np.unique(pos))


@pytest.mark.parametrize("protocol", ["per_image", "caos"])
def test_with_host_targets_the_device_is_never_waited_for(protocol):
    """On the meta device (shapes, no data) every operation whose size or result needs the device's values
    (nonzero, unique, item, a bool of a tensor, a max read back) fails: with the targets on the host, the whole
    batched computation runs there, so on an accelerator it is queued without one wait. Without them, finding
    the anomaly pixels is the one operation that needs the device's values."""
    rng = np.random.default_rng(10)
    a = torch.from_numpy((rng.random((1, 24, 32)) < 0.1).astype(np.uint8))
    s = torch.randn(5, 24, 32)
    out = per_image_metrics(s.to("meta"), a.to("meta"), protocol, check_finite=False, host_anomaly=a)
    assert out["auroc"].shape == (5,) and out["ap_terms"].shape == (5 * int((a == 1).sum()),)
    with pytest.raises(NotImplementedError, match="nonzero"):
        per_image_metrics(s.to("meta"), a.to("meta"), protocol, check_finite=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_metrics_do_not_synchronise():
    rng = np.random.default_rng(11)
    a = torch.from_numpy((rng.random((1, 64, 64)) < 0.1).astype(np.uint8))
    s = torch.randn(6, 64, 64, device="cuda")
    want, a_cuda = per_image_metrics(s.cpu(), a), a.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        got = per_image_metrics(s, a_cuda, check_finite=False, host_anomaly=a)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for k in ("auroc", "fpr95"):
        torch.testing.assert_close(got[k].cpu(), want[k], rtol=0, atol=0, equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_measure_batch_does_not_synchronise():
    """The evaluation loop's call: every method of one image, the target also on the host; one event after."""
    from anomseg.metrics import AnomalyMetrics, measure_batch

    rng = np.random.default_rng(12)
    a = torch.from_numpy((rng.random((1, 64, 64)) < 0.1).astype(np.uint8))
    maps = [torch.randn(1, 64, 64, device="cuda") for _ in range(3)]
    evs = [AnomalyMetrics(p) for p in ("per_image", "caos", "per_image")]
    a_cuda = a.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        measured = measure_batch([(ev, m) for ev, m in zip(evs, maps)], a_cuda, ids=[0], host_anomaly=a)
        done = torch.cuda.Event()
        done.record()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    done.synchronize()
    for ev, m, got in zip(evs, maps, measured):
        ev.commit(got)
        ref = AnomalyMetrics(ev.protocol)
        ref.update(m.cpu(), a)
        assert ev.per_image() == ref.per_image()


def test_bad_input():
    with pytest.raises(ValueError, match="finite"):
        per_image_metrics(torch.full((1, 2, 2), float("nan")), torch.zeros(1, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="protocol='pooled'"):
        per_image_metrics(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.uint8), "pooled")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    rng = np.random.default_rng(3)
    s, a = random_batch(rng, b=40, h=64, w=64)
    cpu = per_image_metrics(torch.from_numpy(s), torch.from_numpy(a))
    gpu = per_image_metrics(torch.from_numpy(s).cuda(), torch.from_numpy(a).cuda())
    for k in ("auroc", "aupr", "fpr95"):
        torch.testing.assert_close(gpu[k].cpu(), cpu[k], rtol=0, atol=1e-12, equal_nan=True)


def test_bfloat16_and_signed_zero_maps():
    """bfloat16 maps (heavy ties) and maps mixing -0.0 and +0.0 (equal scores, as numpy compares them)."""
    rng = np.random.default_rng(4)
    s, a = random_batch(rng, b=30)
    s = torch.from_numpy(s.astype(np.float32)).to(torch.bfloat16)
    z = torch.zeros(4, 24, 32)
    z[:, ::2] = -0.0
    z[:, :, :5] = 1.0
    s = torch.cat([s, z.to(torch.bfloat16)])
    a = np.concatenate([a, (rng.random((4, 24, 32)) < 0.3).astype(np.uint8)])
    got = per_image_metrics(s, torch.from_numpy(a))
    ref_s = s.float().numpy()
    for i in range(len(a)):
        pos, neg = ref_s[i][a[i] == 1], ref_s[i][a[i] == 0]
        if pos.size and neg.size:
            ref = exact_metrics(pos, neg)
            for k in ("auroc", "aupr", "fpr95"):
                assert abs(float(got[k][i]) - ref[k]) <= 1e-12, (i, k)


@pytest.mark.parametrize("protocol", ["per_image", "caos"])
def test_evaluator_records_equal_the_numpy_reference_bit_for_bit(protocol):
    """AnomalyMetrics on torch batches: every per-image value == the numpy reference's (what makes report.json
    identical to the numpy evaluator's), several evaluators measured in one batched call."""
    from anomseg.metrics import AnomalyMetrics, measure_batch

    rng = np.random.default_rng(5)
    s, a = random_batch(rng, b=40)
    s2 = s.astype(np.float32) * 2 + 1  # a second "method"
    e1, e2 = AnomalyMetrics(protocol), AnomalyMetrics(protocol)
    ids = list(range(100, 140))
    for ev, m in zip((e1, e2), measure_batch([(e1, torch.from_numpy(s)), (e2, torch.from_numpy(s2))], a, ids=ids)):
        ev.commit(m)
    for ev, scores in ((e1, s), (e2, s2)):
        recs = {r["id"]: r for r in ev.per_image()}
        for b, i in enumerate(ids):
            inl = (a[b] != 1) if protocol == "caos" else (a[b] == 0)
            pos, neg = scores[b][a[b] == 1].astype(np.float32), scores[b][inl].astype(np.float32)
            if pos.size == 0 or neg.size == 0:
                assert i in ev.skipped
                continue
            ref = exact_metrics(pos, neg)
            want = {"auroc": ref["auroc"], "aupr": ref["aupr"],
                    "fpr95": ref["fpr95_nearest"] if protocol == "caos" else ref["fpr95"]}
            assert {k: recs[i][k] for k in want} == want
            assert (recs[i]["anomaly_px"], recs[i]["inlier_px"]) == (pos.size, neg.size)


def test_histogram_device_counts_equal_the_numpy_counts():
    """The histogram's device path (run here on CPU tensors) counts exactly what its numpy path counts."""
    from anomseg.metrics import ScoreHistogram

    rng = np.random.default_rng(6)
    s, a = random_batch(rng, b=10)
    s = np.concatenate([s.astype(np.float32).ravel(), [-0.0, 0.0, -1e-30, 3e38, -3e38]]).astype(np.float32)
    a = np.concatenate([a.ravel(), [0, 1, 1, 0, 255]]).astype(np.uint8)
    for bits in (0, 7, 11):
        host, dev = ScoreHistogram(bits), ScoreHistogram(bits)
        host.update(s, a)
        dev._update_device(torch.from_numpy(s), torch.from_numpy(a))
        dev.flush()
        host.flush()
        np.testing.assert_array_equal(dev.counts, host.counts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_evaluator_and_histogram_equal_cpu():
    from anomseg.metrics import AnomalyMetrics

    rng = np.random.default_rng(7)
    s, a = random_batch(rng, b=30, h=64, w=64)
    for protocol in ("per_image", "caos", "pooled"):
        cpu, gpu = AnomalyMetrics(protocol), AnomalyMetrics(protocol)
        cpu.update(torch.from_numpy(s), torch.from_numpy(a))
        gpu.update(torch.from_numpy(s).cuda(), torch.from_numpy(a).cuda())
        if protocol == "pooled":
            np.testing.assert_array_equal(gpu.hist.groups()[1], cpu.hist.groups()[1])
            np.testing.assert_array_equal(gpu.hist.groups()[2], cpu.hist.groups()[2])
        else:
            assert gpu.per_image() == cpu.per_image()


def test_the_accelerator_branches_on_cpu():
    """The batched sort and the index_add_ label counts that CUDA takes equal the CPU's row-by-row ones."""
    from anomseg.metrics.device import _sort_rows, label_counts

    g = torch.Generator().manual_seed(8)
    keys = torch.randint(-2**31, 2**31 - 1, (5, 3001), dtype=torch.int32, generator=g)
    keys[:, :100] = 0x7FFFFFFF
    assert torch.equal(_sort_rows(keys, per_row=False), _sort_rows(keys, per_row=True))
    assert torch.equal(_sort_rows(keys, per_row=True), torch.from_numpy(np.sort(keys.numpy(), axis=1)))
    a = torch.randint(0, 256, (4, 17, 9), dtype=torch.int64, generator=g).to(torch.uint8)
    want = torch.from_numpy(np.stack([np.bincount(r.ravel(), minlength=256) for r in a.numpy()]))
    assert torch.equal(label_counts(a, per_row=False), want) and torch.equal(label_counts(a, per_row=True), want)


def test_both_cpu_paths_give_the_same_metrics_bit_for_bit(monkeypatch):
    """On CPU the torch computation and the numpy reference (numpy_metrics) give every output to the last bit, the
    AP terms in the same layout: whichever the one-time measurement picks, the numbers are the same."""
    rng = np.random.default_rng(5)
    for k in range(6):
        s, a = random_batch(rng)
        if k % 2:  # one target shared by every map
            a = np.broadcast_to(a[2:3], a.shape).copy()
        target = torch.from_numpy(a[:1] if k % 2 else a)
        for protocol in ("per_image", "caos"):
            got = {path: per_image_metrics(torch.from_numpy(s), target, protocol, path=path, check_finite=False,
                                           host_anomaly=target.clone())
                   for path in CPU_PATHS}
            assert got["torch"].keys() == got["numpy"].keys()
            for key, v in got["torch"].items():
                w = got["numpy"][key]
                assert v.dtype == w.dtype and v.shape == w.shape, key
                if key == "aupr":  # the torch path's own sum is a scatter: equal up to rounding; the value the
                    # evaluator records is numpy's sum of the terms, checked below to the last bit
                    assert torch.allclose(v.nan_to_num(-1), w.nan_to_num(-1), rtol=0, atol=1e-12)
                    continue
                assert torch.equal(v.nan_to_num(-1) if v.is_floating_point() else v,
                                   w.nan_to_num(-1) if w.is_floating_point() else w), (key, protocol)
            for b in range(len(s)):  # the recorded AP: the same on both paths, and the numpy path's aupr itself
                n = int(got["numpy"]["anomaly_px"][b])
                if n and not np.isnan(float(got["numpy"]["aupr"][b])):
                    part = slice(int(got["numpy"]["ap_start"][b]), int(got["numpy"]["ap_start"][b]) + n)
                    sums = [float(np.sum(got[p]["ap_terms"][part].numpy()[got[p]["ap_last"][part].numpy()]))
                            for p in CPU_PATHS]
                    assert sums[0] == sums[1] == float(got["numpy"]["aupr"][b])
    # the environment variable sets the path; a bad value is one line
    monkeypatch.setenv("ANOMSEG_CPU_METRICS", "numpy")
    assert cpu_path() == "numpy"
    monkeypatch.setenv("ANOMSEG_CPU_METRICS", "quick")
    with pytest.raises(ValueError, match="ANOMSEG_CPU_METRICS='quick': choose one of torch, numpy"):
        cpu_path()


def test_the_numpy_path_refuses_non_finite_maps_as_the_torch_path_does():
    s = torch.zeros((2, 8, 8))
    s[1, 0, 0] = float("nan")  # on a void pixel: still refused, as finite_rows does over the whole map
    a = torch.zeros((2, 8, 8), dtype=torch.uint8)
    a[:, 0, 0], a[:, 4, 4] = 255, 1
    for path in CPU_PATHS:
        assert per_image_metrics(s, a, path=path, check_finite=False)["finite"].tolist() == [True, False]
        with pytest.raises(ValueError, match="1 of 2 maps hold NaN"):
            per_image_metrics(s, a, path=path)


def test_the_cpu_path_is_measured_once(monkeypatch):
    monkeypatch.delenv("ANOMSEG_CPU_METRICS", raising=False)
    seconds = measure_cpu_paths((64, 96), repeats=1)
    assert set(seconds) == set(CPU_PATHS) and all(t > 0 for t in seconds.values())
    assert cpu_path() in CPU_PATHS and cpu_path() == cpu_path((8, 8))
