"""reduce_distributed with 2 gloo processes on CPU equals a single-process evaluation."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from anomseg.metrics import AnomalyMetrics, reduce_distributed  # noqa: E402

SETTINGS = [("per_image", {}), ("caos", {}), ("pooled", {}),
            ("pooled", {"components": True, "min_pred_size": 3, "min_gt_size": 3})]


def data():
    rng = np.random.default_rng(7)
    a = (rng.random((8, 24, 32)) < 0.08).astype(np.uint8)
    a[:, 4:10, 4:12] = 1
    a[:, 20:, :3] = 255
    s = (rng.normal(size=a.shape) + 1.5 * (a == 1)).astype(np.float32)
    return s, a


def evaluate_all(rank=None, world=1):
    s, a = data()
    results = []
    for protocol, options in SETTINGS:
        ev = AnomalyMetrics(protocol, **options)
        for i in range(len(s)):
            if rank is None or i % world == rank:
                ev.update(s[i], a[i], ids=[i])
        results.append(reduce_distributed(ev).compute())
    return results


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = evaluate_all(rank, world)
        if rank == 0:
            with open(out_file, "w") as f:
                json.dump(results, f)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tmp_path):
    out = tmp_path / "out.json"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    merged = json.loads(out.read_text())
    single = json.loads(json.dumps(evaluate_all()))
    assert merged == single
    assert "mean_F1" in merged[-1] and merged[0]["images"] == 8
