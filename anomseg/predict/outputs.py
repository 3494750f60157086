"""What ``anomseg predict`` writes per frame, and the gallery and table of a run.

Per frame (``<name>`` from :mod:`anomseg.predict.sources`):

* ``scores/<name>.npy``: float16 (H, W) score map at the frame's size (higher = more anomalous), or with
  ``scores: png16`` ``scores/<name>.png``, a 16-bit grey PNG with ``score = lo + value / 65535 * (hi - lo)``,
  ``lo`` / ``hi`` the frame's minimum and maximum score, stated in the PNG's text chunk ``anomseg-score-scale``
  and in the CSV's ``score_min`` / ``score_max`` columns (:func:`read_score_png` inverts it);
* ``masks/<name>.png``: 8-bit, 255 where the score reaches the operating threshold, else 0;
* ``panels/<name>.jpg``: the frame with the flagged pixels in red and the anomaly regions outlined in cyan with their
  confidences, beside the heat map, the operating point written on it.

Per run: ``frames.csv`` (frame, source, index, width, height, seconds, flagged_share, regions, threshold,
score_min, score_max, note), ``index.html`` (the gallery), and per video ``videos/<name>.mp4`` (the panels as a
video at the source's frame rate).
"""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, PngImagePlugin

from anomseg.files import OutputError, csv_cell, make_dirs, write_bytes_atomic, write_text_atomic
from anomseg.html_report import STYLE

SCORE_FORMATS = ("npy", "png16", "none")
CSV_FIELDS = ("frame", "source", "index", "width", "height", "seconds", "flagged_share", "regions", "threshold",
              "score_min", "score_max", "note")
PANEL_HEIGHT = 720  #: panels of taller frames are scaled down to this height (the outputs keep the frame's size)


def score_path(out: Path, name: str, fmt: str) -> Path | None:
    return None if fmt == "none" else out / "scores" / f"{name}.{'npy' if fmt == 'npy' else 'png'}"


def frame_paths(out: Path, name: str, fmt: str) -> list[Path]:
    """Every file a frame writes (a frame is done when all exist)."""
    return [p for p in (score_path(out, name, fmt), out / "masks" / f"{name}.png", out / "panels" / f"{name}.jpg") if p]


def write_scores(path: Path, scores: np.ndarray, fmt: str) -> None:
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, scores.astype(np.float16))
        write_bytes_atomic(path, buf.getvalue())
    elif fmt == "png16":
        lo, hi = float(scores.min()), float(scores.max())
        q = np.round((scores.astype(np.float64) - lo) / max(hi - lo, 1e-30) * 65535).astype(np.uint16)
        info = PngImagePlugin.PngInfo()
        info.add_text("anomseg-score-scale", f"{lo!r} {hi!r}")
        buf = io.BytesIO()
        Image.fromarray(q).save(buf, format="PNG", pnginfo=info)
        write_bytes_atomic(path, buf.getvalue())


def read_score_png(path: str | Path) -> np.ndarray:
    """A ``png16`` score map back as float32 (H, W) through its stated scale."""
    with Image.open(path) as img:
        lo, hi = (float(v) for v in img.text["anomseg-score-scale"].split())
        q = np.asarray(img).astype(np.float64)
    return (lo + q / 65535 * (hi - lo)).astype(np.float32)


def _encode(ext: str, rgb_or_grey: np.ndarray, path: Path, params=()) -> bytes:
    img = cv2.cvtColor(rgb_or_grey, cv2.COLOR_RGB2BGR) if rgb_or_grey.ndim == 3 else rgb_or_grey
    ok, buf = cv2.imencode(ext, img, list(params))
    if not ok:
        raise OutputError(f"{path}: could not be encoded as {ext} (an empty or odd-shaped frame?); check the input frame")
    return buf.tobytes()


def write_mask(path: Path, mask: np.ndarray) -> None:
    write_bytes_atomic(path, _encode(".png", mask.astype(np.uint8) * 255, path))


def caption_bar(width: int, lines: list[str]) -> np.ndarray:
    """A dark strip ``width`` wide with ``lines`` of white text, each scaled to fit; uint8 RGB."""
    scale = max(0.35, min(0.6, width / 1400))
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0] for t in lines]
    scales = [scale * min(1.0, (width - 8) / max(w, 1)) for w, _ in sizes]
    step = int(max(h for _, h in sizes) * 1.8) + 2
    bar = np.full((step * len(lines) + 4, width, 3), 24, np.uint8)
    for i, (text, sc) in enumerate(zip(lines, scales)):
        cv2.putText(bar, text, (4, step * (i + 1) - step // 4), cv2.FONT_HERSHEY_SIMPLEX, sc, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return bar


def panel(image: np.ndarray, scores: np.ndarray, threshold: float, caption: list[str], instances=None) -> np.ndarray:
    """``caption`` (lines) above [frame: flagged pixels red, regions outlined | heat map], uint8 RGB; tiles of frames
    taller than :data:`PANEL_HEIGHT` are scaled down to it."""
    from anomseg.viz import heat_map, label_tile, outline_instances

    h, w = scores.shape
    hit = scores >= threshold
    view = (image * 0.6).astype(np.uint8)
    view[hit] = (0.35 * view[hit] + 0.65 * np.array([255, 0, 0])).astype(np.uint8)
    if instances is not None and len(instances.scores):
        view = outline_instances(view, instances.masks, instances.scores)
    heat = heat_map(scores)
    tiles = [view, heat]
    if h > PANEL_HEIGHT:
        size = (max(1, round(w * PANEL_HEIGHT / h)), PANEL_HEIGHT)
        tiles = [cv2.resize(t, size, interpolation=cv2.INTER_AREA) for t in tiles]
    body = np.concatenate([label_tile(tiles[0], "flagged red, regions cyan"),
                           label_tile(tiles[1], "score (heat: 1st..99th percentile)")], 1)
    return np.concatenate([caption_bar(body.shape[1], caption), body], 0)


def write_panel(path: Path, rgb: np.ndarray) -> None:
    write_bytes_atomic(path, _encode(".jpg", rgb, path, (cv2.IMWRITE_JPEG_QUALITY, 90)))


class VideoWriter:
    """Panels as an MP4 (OpenCV's ``mp4v``), written to ``<path>.tmp.mp4`` and moved in place when closed, so an
    interrupted run never leaves a half video under the final name. Panels written by an earlier run are given as
    files (:meth:`add_file`): when no frame of the video is new and the video exists, it is kept as it is."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer, self.size = Path(path), fps, None, None
        self.tmp = self.path.with_name(self.path.stem + ".tmp.mp4")
        self.earlier: list[Path] = []  # panels of frames written before, not yet in the video

    def add_file(self, panel_path: Path) -> None:
        if self.writer is None:
            self.earlier.append(Path(panel_path))
        else:
            self.add(cv2.cvtColor(cv2.imread(str(panel_path)), cv2.COLOR_BGR2RGB))

    def _replay(self) -> None:
        earlier, self.earlier = self.earlier, []
        for f in earlier:
            self.add(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB))

    def add(self, rgb: np.ndarray) -> None:
        h, w = rgb.shape[:2]
        if self.writer is None:
            make_dirs(self.path.parent)
            self.size = (w - w % 2, h - h % 2)  # mp4v wants even sides
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
            if not self.writer.isOpened():
                raise OutputError(f"{self.path}: OpenCV cannot write an MP4 here (no mp4v encoder, or not writable); "
                                  f"choose a writable --out, or install opencv-python-headless with FFmpeg")
            self._replay()
        if (w, h) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))

    def close(self) -> Path | None:
        if self.writer is None:
            if not self.earlier or self.path.is_file():
                return self.path if self.path.is_file() else None  # nothing new: the video is kept
            self._replay()
        self.writer.release()
        self.tmp.replace(self.path)
        return self.path

    def abandon(self) -> None:
        """An interrupted run: the half-written video is removed, the earlier one (if any) kept."""
        if self.writer is not None:
            self.writer.release()
            self.tmp.unlink(missing_ok=True)


def write_csv(path: Path, records: list[dict]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in records:
        w.writerow({k: csv_cell(r.get(k, "")) for k in CSV_FIELDS})
    return write_text_atomic(path, buf.getvalue())


def write_index(out: Path, records: list[dict], summary: dict) -> Path:
    """``index.html``: the run's settings, then every frame's panel with its numbers (the report.html look)."""
    e = html.escape
    info = "".join(f"<li>{e(k)}: <code>{e(str(v))}</code></li>" for k, v in summary.items())
    videos = sorted({r["video"] for r in records if r.get("video")})
    parts = [f"<h1>anomseg predict: {len(records)} frames</h1><ul class=\"note\">{info}</ul>"]
    if videos:
        parts.append('<section id="videos"><h2>Videos</h2><div class="figures">')
        parts += [f'<figure><video src="{e(v)}" controls width="600"></video><figcaption><a href="{e(v)}">{e(v)}</a> '
                  f'(mp4v; a browser that cannot play it: open the file with a player)</figcaption></figure>' for v in videos]
        parts.append("</div></section>")
    parts.append('<section id="gallery"><h2>Frames</h2><p class="note">Red: pixels at or above the operating threshold; '
                 'cyan: the anomaly regions with their confidences; right: the score map.</p><div class="gallery">')
    for r in records:
        src = f"panels/{r['frame']}.jpg"
        parts.append(f'<figure data-frame="{e(r["frame"])}"><img src="{e(src)}" alt="{e(r["frame"])}" width="800" '
                     f'loading="lazy"><figcaption>{e(r["frame"])} ({e(str(r["source"]))}): '
                     f'{100 * float(r["flagged_share"]):.2f} % of pixels flagged, {int(r["regions"])} regions, '
                     f'{float(r["seconds"]):.3f} s{e("; " + r["note"]) if r.get("note") else ""}</figcaption></figure>')
    parts.append("</div></section>")
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>anomseg predict</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body>{"".join(parts)}</body></html>\n')
    return write_text_atomic(out / "index.html", page)
