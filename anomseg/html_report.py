"""``report.html``: one self-contained page per evaluation folder, for a person to look at in a browser.

It reads what the evaluation wrote (``report.json``, ``per_image.csv``, ``roc.png``, ``pr.png``,
``hist_<method>.png``, ``overlays/*.png``, ``worst/*.png``) and links the figures relatively, so the folder
can be copied or served as it is; nothing is fetched from the network, the little JavaScript (sorting
the table by any column) is inline. Sections: the metric table, ROC and PR curves, the score histograms,
the overlay gallery with each image's metrics, and for each method the images where it does worst.
Every number shown carries its exact value in ``data-value`` (the table sorts on it; the tests compare
it with report.json).
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

from anomseg.errors import AnomsegError
from anomseg.files import write_text_atomic
from anomseg.metrics.evaluator import pixel_protocols
from anomseg.viz import safe_name

COLUMNS = [("auroc", "AUROC"), ("aupr", "AUPR"), ("fpr95", "FPR95")]
INSTANCE_COLUMNS = [("AP50", "AP50"), ("AP", "AP"), ("mean_F1", "instances' comp. F1")]
COMPONENT_COLUMNS = [("sIoU", "sIoU"), ("PPV", "PPV"), ("mean_F1", "mean F1")]

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .9em; }
th, td { padding: .25em .7em; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
#metrics-table th { cursor: pointer; user-select: none; background: #f6f6f6; }
#metrics-table th.sorted-asc::after { content: " \\25B2"; } #metrics-table th.sorted-desc::after { content: " \\25BC"; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85em; color: #555; }
.gallery figure { max-width: 100%; margin-bottom: 1.5em; }
.note { color: #666; font-size: .85em; }
"""

SCRIPT = """
(function () {
  var table = document.getElementById('metrics-table');
  if (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener('click', function () {
        var asc = !th.classList.contains('sorted-asc');
        Array.prototype.forEach.call(heads, function (h) { h.classList.remove('sorted-asc', 'sorted-desc'); });
        th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
        var rows = Array.prototype.slice.call(table.tBodies[0].rows);
        rows.sort(function (a, b) {
          var x = a.cells[col].getAttribute('data-value'), y = b.cells[col].getAttribute('data-value');
          var fx = parseFloat(x), fy = parseFloat(y);
          var c = (!isNaN(fx) && !isNaN(fy)) ? fx - fy : String(x).localeCompare(String(y));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { table.tBodies[0].appendChild(r); });
      });
    });
  }
  document.body.setAttribute('data-ready', '1');
})();
"""


def _pct(v) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{100 * v:.2f}" if math.isfinite(v) else "-"
    return "-" if v is None else str(v)  # a report.json read back may hold anything: shown as text, escaped


def _cell(v, text: str | None = None) -> str:
    value = "" if v is None else repr(float(v)) if isinstance(v, (int, float)) else html.escape(str(v))
    return f'<td data-value="{value}">{html.escape(text if text is not None else _pct(v))}</td>'


def read_per_image(path: Path) -> dict[str, dict[int, dict]]:
    """method -> image index -> its row of ``per_image.csv``."""
    out: dict[str, dict[int, dict]] = {}
    if path.is_file():
        with open(path, newline="", errors="replace") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                try:
                    out.setdefault(str(row["method"]), {})[int(row["image"])] = row
                except (KeyError, TypeError, ValueError):
                    raise AnomsegError(f"{path}: row {line} has no method or image index of its own (not the file the "
                                       f"evaluation wrote); run the evaluation again to rewrite it") from None
    return out


def _number(v) -> float | None:
    """A CSV cell as a number, or None when it is not one (a file read back may hold anything)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _metrics_table(report: dict) -> str:
    methods = report["methods"]
    first = next(iter(methods.values()), {})
    protocols = list(first.get("protocols", {})) or pixel_protocols(report.get("protocol"))
    components = [c for c in COMPONENT_COLUMNS if c[0] in first]
    head = ['<th data-key="method">method</th>']
    for p in protocols:
        prefix = f"{p} " if len(protocols) > 1 else ""
        head += [f'<th data-key="{html.escape(f"{p}.{k}")}">{html.escape(prefix + label)}</th>' for k, label in COLUMNS]
    head += [f'<th data-key="{html.escape(k)}">{html.escape(label)}</th>' for k, label in components]
    inst = isinstance(first.get("instances"), dict)  # protocol instances: OoDIS AP50 / AP, the instances' F1
    if inst:
        head += [f'<th data-key="instances.{k}">{label}</th>' for k, label in INSTANCE_COLUMNS]
    head += ['<th data-key="images">images</th>']
    rows = []
    for name, r in methods.items():
        cells = [f'<td data-value="{html.escape(name)}">{html.escape(name)}</td>']
        for p in protocols:
            src = r["protocols"][p] if len(protocols) > 1 else r
            cells += [_cell(src.get(k)) for k, _ in COLUMNS]
        cells += [_cell(r.get(k)) for k, _ in components]
        if inst:
            i = r.get("instances") if isinstance(r.get("instances"), dict) else {}
            comp = i.get("components") if isinstance(i.get("components"), dict) else {}
            cells += [_cell(i.get("AP50")), _cell(i.get("AP")), _cell(comp.get("mean_F1"))]
        cells.append(_cell(r.get("images"), str(r.get("images"))))
        rows.append(f'<tr data-method="{html.escape(name)}">{"".join(cells)}</tr>')
    arithmetic = "".join(f"<li><code>{html.escape(p)}</code>: {html.escape((r['protocols'][p] if len(protocols) > 1 else r).get('arithmetic', ''))}</li>"
                         for p in protocols for r in [first])
    return (f'<table id="metrics-table"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f'<p class="note">Percent; higher is better except FPR95. Click a column to sort. </p><ul class="note">{arithmetic}</ul>')


def _image_metrics(per_image: dict, index: int, methods) -> str:
    rows = []
    for m in methods:
        rec = per_image.get(m, {}).get(index)
        if rec is None:
            rows.append(f'<tr><td>{html.escape(m)}</td><td colspan="3">skipped (no anomaly or no inlier pixel)</td></tr>')
            continue
        rows.append(f'<tr data-method="{html.escape(m)}"><td>{html.escape(m)}</td>'
                    + "".join(_cell(_number(rec.get(k))) for k, _ in COLUMNS) + "</tr>")
    head = "".join(f"<th>{label}</th>" for _, label in COLUMNS)
    return f'<table class="image-metrics"><tr><th>method</th>{head}</tr>{"".join(rows)}</table>'


def write_html_report(eval_dir: str | Path, worst: dict[str, list[int]] | None = None) -> Path:
    """Write ``<eval_dir>/report.html`` from the files an evaluation wrote there.

    Args:
        worst: method -> the image indices where it does worst (its lowest per-image AUROC first); default:
            read from ``per_image.csv`` (the 3 lowest per method). Their panels are ``worst/<method>_<i>.png``.
    """
    eval_dir = Path(eval_dir)
    report = json.loads((eval_dir / "report.json").read_text())
    per_image = read_per_image(eval_dir / "per_image.csv")
    names = list(report["methods"])
    if worst is None:
        worst = worst_images(per_image, names)
    title = f"anomseg: {report['dataset']} / {report.get('split') or 'all'}"
    info = [f"protocol <code>{html.escape(str(report['protocol']))}</code>", f"{html.escape(str(report['images']))} images"]
    if report.get("miou") is not None:
        info.append(f"closed-set mIoU {100 * report['miou']:.1f}")
    info.append(f"backbone <code>{html.escape(str(report.get('backbone')))}</code>")
    if report.get("checkpoint"):
        info.append(f"checkpoint <code>{html.escape(str(report['checkpoint']))}</code>")
    parts = [f"<h1>{html.escape(title)}</h1>", f'<p>{" &middot; ".join(info)}</p>',
             '<section id="metrics"><h2>Metrics</h2>', _metrics_table(report), "</section>"]
    parts.append('<section id="curves"><h2>ROC and PR curves (pooled pixels)</h2><div class="figures">')
    for f in ("roc.png", "pr.png"):
        if (eval_dir / f).is_file():
            parts.append(f'<figure><img src="{f}" alt="{f}"></figure>')
    parts.append("</div></section>")
    parts.append('<section id="histograms"><h2>Score histograms</h2><div class="figures">')
    for m in names:
        f = f"hist_{safe_name(m)}.png"
        if (eval_dir / f).is_file():
            parts.append(f'<figure><img src="{f}" alt="{html.escape(m)}" width="360"><figcaption>{html.escape(m)}</figcaption></figure>')
    parts.append("</div></section>")
    threshold = report.get("config", {}).get("overlays", {}).get("threshold", "best_f1")
    parts.append(f'<section id="gallery"><h2>Overlays</h2><p class="note">Per method its heat map and the pixels at or '
                 f'above its <code>{html.escape(str(threshold))}</code> threshold (red); anomalies outlined in green, '
                 f'void grey.</p><div class="gallery">')
    for png in sorted((eval_dir / "overlays").glob("*.png")):
        if not png.stem.split("_", 1)[0].isdigit():  # not a panel the evaluation wrote: not shown
            continue
        index = int(png.stem.split("_", 1)[0])
        parts.append(f'<figure data-image="{index}"><img src="overlays/{html.escape(png.name)}" alt="{html.escape(png.name)}" '
                     f'width="600"><figcaption>image {index} ({html.escape(png.stem.split("_", 1)[-1])})</figcaption>'
                     f'{_image_metrics(per_image, index, names)}</figure>')
    parts.append("</div></section>")
    parts.append('<section id="worst"><h2>Where each method does worst</h2><p class="note">The images with the lowest '
                 'per-image AUROC of each method.</p>')
    for m in names:
        items = []
        for i in worst.get(m, []):
            rec = per_image.get(m, {}).get(i)
            if rec is None:
                continue
            png = f"worst/{safe_name(m)}_{i}.png"
            img = f'<img src="{html.escape(png)}" alt="{html.escape(png)}" width="360">' if (eval_dir / png).is_file() else ""
            vals = "".join(_cell(_number(rec.get(k))) for k, _ in COLUMNS)
            items.append(f'<figure data-method="{html.escape(m)}" data-image="{i}">{img}<figcaption>image {i} '
                         f'({html.escape(rec["name"])})</figcaption><table class="image-metrics"><tr>'
                         + "".join(f"<th>{label}</th>" for _, label in COLUMNS) + f"</tr><tr>{vals}</tr></table></figure>")
        parts.append(f'<h3>{html.escape(m)}</h3><div class="figures">{"".join(items) or "<p>no evaluated image</p>"}</div>')
    parts.append("</section>")
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body data-ready="0">{"".join(parts)}<script>{SCRIPT}</script></body></html>\n')
    return write_text_atomic(eval_dir / "report.html", page)


def worst_images(per_image: dict[str, dict[int, dict]], methods, k: int = 3) -> dict[str, list[int]]:
    """method -> its ``k`` images with the lowest per-image AUROC (ties: lower index first)."""
    out = {}
    for m in methods:
        recs = per_image.get(m, {})
        auroc = {i: _number(recs[i].get("auroc")) for i in recs}  # a cell that is not a number ranks last
        out[m] = sorted(recs, key=lambda i: (auroc[i] if auroc[i] is not None and math.isfinite(auroc[i]) else math.inf,
                                             i))[:k]
    return out
