"""What a person sees of a weak method: a threshold that flags most of an image is not painted (the tile says how
much it would flag), and the table names the rows whose AUROC is below chance."""

import numpy as np

from anomseg import viz
from anomseg.engine.evaluate import markdown_table


def scene(h=64, w=128, seed=0):
    g = np.random.default_rng(seed)
    image = g.integers(0, 255, (h, w, 3), dtype=np.uint8)
    anomaly = np.zeros((h, w), np.uint8)
    anomaly[20:30, 40:60] = 1
    return image, anomaly, g.random((h, w)).astype(np.float32)


def changed(a, b):
    return float((a != b).any(-1).mean())


def test_a_threshold_flagging_most_of_the_image_is_not_painted():
    image, anomaly, score = scene()
    nothing = viz.threshold_view(image, anomaly, score, 2.0)  # flags no pixel: the plain dimmed view
    everything = viz.threshold_view(image, anomaly, score, -1.0)  # flags every pixel
    assert changed(everything, nothing) < 0.1  # only the note's text differs
    # the note is there (yellow text), and a threshold below the limit is painted as before
    assert (everything != nothing).any()
    forty = viz.threshold_view(image, anomaly, score, float(np.quantile(score, 0.6)))
    assert changed(forty, nothing) >= 0.35
    red = forty[score >= np.quantile(score, 0.6)]
    assert (red[:, 0] > red[:, 1]).mean() > 0.95  # painted red (but where the green outline runs)


def test_the_panel_label_still_gives_the_share_flagged():
    image, anomaly, score = scene()
    panel = viz.overlay_panel(image, anomaly, {"m": score}, {"m": -1.0}, "best-F1 threshold")
    assert panel.shape == (2 * image.shape[0], 2 * image.shape[1], 3)


def report(aurocs):
    return {"dataset": "d", "split": "test", "images": 3, "protocol": "per_image", "miou": None,
            "methods": {n: {"auroc": a, "aupr": 0.1, "fpr95": 0.5} for n, a in aurocs.items()}}


def test_the_table_names_rows_below_chance():
    text = markdown_table(report({"msp": 0.74, "rba": 0.29, "eam": 0.499}))
    assert text.splitlines()[-1] == ("Below chance (AUROC < 50: these scores rank the anomalies as more normal than "
                                     "the inliers): rba, eam.")
    assert "Below chance" not in markdown_table(report({"msp": 0.74, "tie": 0.5}))
