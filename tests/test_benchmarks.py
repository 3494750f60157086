"""The benchmark scripts run end to end at small sizes and print their last lines; the bench's trapezoid AUPR
(its reference for pytorch-ood's AUPR) equals scikit-learn's area under the PR curve."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools" / "bench"
sys.path.insert(0, str(TOOLS))


def test_trapezoid_aupr_is_sklearns_area_under_the_pr_curve():
    from bench_metrics import trapezoid_aupr
    from sklearn.metrics import auc, precision_recall_curve

    rng = np.random.default_rng(3)
    for decimals in (0, 1, 3, None):  # heavy ties to none
        a = (rng.random(4000) < 0.05).astype(np.uint8)
        a[:200] = 255  # void: excluded
        s = (rng.normal(size=4000) + 1.5 * (a == 1)).astype(np.float32)
        if decimals is not None:
            s = np.round(s, decimals)
        keep = a != 255
        precision, recall, _ = precision_recall_curve(a[keep] == 1, s[keep])
        assert trapezoid_aupr(s, a) == pytest.approx(auc(recall, precision), abs=1e-14)


def test_bench_metrics_runs_and_prints_its_ratio_line(capsys):
    import bench_metrics

    bench_metrics.main(["--images", "2", "--batch", "2", "--repeats", "1", "--peer-images", "1", "--pooled-images", "1"])
    out = capsys.readouterr().out
    assert re.search(r"torch-cpu .* max \|difference\| to numpy 0\.0e\+00", out)  # the evaluator equals numpy
    for path in ("cpu/torch", "cpu/numpy"):  # both CPU paths, each equal to numpy
        assert re.search(path + r" .* max \|difference\| to numpy 0\.0e\+00", out), path
    assert re.search(r"CPU: torch \w+, numpy \w+; the torch path on \d+ threads, the numpy path on 1; the evaluator "
                     r"takes the (torch|numpy) path here", out)
    assert "exact values inside the bounds: True" in out
    assert re.fullmatch(r"metrics/numpy: torch-cpu \d+\.\d\d cuda (\d+\.\d\d|n/a)", out.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_pipeline_runs_the_thirteen_methods_and_prints_its_ratio_line(capsys, tmp_path):
    import bench_pipeline

    bench_pipeline.main(["--height", "64", "--width", "128", "--images", "2", "--repeats", "1", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "13 methods: msp, max_logit, entropy, energy, sml, kl_matching, cores, opengan_fea, cls_fea, uem, pixood" in out
    assert "score dias_fea" in out and "metrics" in out  # the per-stage breakdown
    assert re.fullmatch(r"pipeline/forward: evaluation \d+\.\d\d extraction \d+\.\d\d", out.strip().splitlines()[-1])
