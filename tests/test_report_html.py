"""report.html of an evaluation: every referenced file exists, every number equals report.json /
per_image.csv, the worst images are the lowest per-image AUROC; rendered by headless Chromium where one exists."""

import csv
import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from anomseg.data import generate_synthetic

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = {"name": "smp:FPN:resnet18", "options": {"encoder_depth": 3, "decoder_segmentation_channels": 32,
                                                   "decoder_pyramid_channels": 32}}


class Page(HTMLParser):
    """The page's references, its metric-table cells and its sections (by id)."""

    def __init__(self):
        super().__init__()
        self.refs, self.sections, self.rows, self.figures = [], [], [], []
        self._stack, self._row, self._cell, self._table = [], None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a:
                self.refs.append(a[key])
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "table":
            self._table = a.get("id") or a.get("class")
        if tag == "tr" and self._table == "metrics-table" and "data-method" in a:
            self._row = {"method": a["data-method"], "cells": []}
            self.rows.append(self._row)
        if tag == "td" and self._row is not None:
            self._cell = {"value": a.get("data-value"), "text": ""}
            self._row["cells"].append(self._cell)
        if tag == "figure":
            self.figures.append(a)

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        if tag == "tr":
            self._row = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    data = tmp / "data"
    generate_synthetic(data, num_train=2, num_val=1, num_test=5, num_outliers=2, height=64, width=128, workers=1,
                       progress=False)
    cfg = {"out": str(tmp / "eval"), "data": {"name": "streethazards", "root": str(data), "split": "test"},
           "backbone": BACKBONE, "workers": 0, "overlays": {"images": 2},
           "methods": [{"name": "msp"}, {"name": "energy"}, {"name": "entropy"}]}
    (tmp / "eval.yaml").write_text(yaml.safe_dump(cfg))
    sys.path.insert(0, str(ROOT / "tools"))
    import eval_caos

    assert eval_caos.main(["--config", str(tmp / "eval.yaml")]) == 0
    return tmp / "eval"


def test_every_reference_exists_and_every_number_is_the_reports(evaluation):
    page = Page()
    page.feed((evaluation / "report.html").read_text())
    assert page.sections == ["metrics", "curves", "histograms", "gallery", "worst"]
    assert page.refs and all(not r.startswith(("http:", "https:", "//")) for r in page.refs)  # nothing from the network
    for ref in page.refs:
        assert (evaluation / ref).is_file(), ref
    assert {"roc.png", "pr.png", "hist_msp.png"} <= set(page.refs)
    report = json.loads((evaluation / "report.json").read_text())
    assert [r["method"] for r in page.rows] == list(report["methods"])
    for row in page.rows:
        r = report["methods"][row["method"]]
        for cell, key in zip(row["cells"][1:4], ("auroc", "aupr", "fpr95")):
            assert float(cell["value"]) == r[key]  # the exact value, as report.json has it
            assert cell["text"] == f"{100 * r[key]:.2f}"
    per_image = list(csv.DictReader(open(evaluation / "per_image.csv")))
    for method in report["methods"]:
        rows = [r for r in per_image if r["method"] == method]
        lowest = sorted(rows, key=lambda r: (float(r["auroc"]), int(r["image"])))[:3]
        shown = [int(f["data-image"]) for f in page.figures if f.get("data-method") == method]
        assert shown == [int(r["image"]) for r in lowest]
        for i in shown:
            assert (evaluation / "worst" / f"{method}_{i}.png").is_file()
    gallery = [int(f["data-image"]) for f in page.figures if "data-image" in f and "data-method" not in f]
    assert gallery == [0, 1]


def test_visualize_regenerates_the_page(evaluation):
    (evaluation / "report.html").unlink()
    sys.path.insert(0, str(ROOT / "tools"))
    import visualize

    assert visualize.main([str(evaluation), "--images", "0", "3", "--threshold", "tpr95"]) == 0
    page = Page()
    page.feed((evaluation / "report.html").read_text())
    assert "overlays/0003_t5_3.png" in page.refs or any(r.startswith("overlays/0003_") for r in page.refs)


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="no Chromium here")
def test_chromium_renders_the_page_and_runs_its_script(evaluation, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={tmp_path}", "--dump-dom", (evaluation / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-ready="1"' in proc.stdout  # the inline script ran to its end: no JavaScript error before it
    assert 'id="metrics-table"' in proc.stdout


def test_what_the_page_and_the_csv_read_back_is_escaped(evaluation, tmp_path):
    """A report.json / per_image.csv planted in a shared folder: every field reaches the page escaped (no tag, no
    attribute break-out), and the CSV the evaluation writes neutralises cells a spreadsheet would run (OWASP)."""
    from anomseg.files import csv_cell
    from anomseg.html_report import write_html_report

    planted = tmp_path / "planted"
    shutil.copytree(evaluation, planted)
    report = json.loads((planted / "report.json").read_text())
    attack = '"><script>alert(1)</script>'
    report["protocol"], report["images"], report["backbone"] = attack, attack, attack
    first = next(iter(report["methods"].values()))
    first["auroc"] = attack
    (planted / "report.json").write_text(json.dumps(report))
    page = write_html_report(planted).read_text()
    assert "<script>alert(1)" not in page and '"><script' not in page
    assert page.count("<script>") == 1  # the page's own sorting script only
    Page().feed(page)  # still parses
    assert [csv_cell(v) for v in ("=HYPERLINK(1)", "+1", "-2", "@x", "\tx", "\rx", "name", 0.5, -0.5)] == \
        ["'=HYPERLINK(1)", "'+1", "'-2", "'@x", "'\tx", "'\rx", "name", 0.5, -0.5]
    rows = list(csv.reader((evaluation / "per_image.csv").open()))
    assert rows[0][:3] == ["image", "name", "method"]
