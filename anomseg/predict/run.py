"""``anomseg predict``: an :class:`~anomseg.segmenter.AnomalySegmenter` over files, folders, globs, lists and videos.

Streaming: one batch of frames (of one size) is in memory at a time, and each frame's outputs are written as soon as
it is scored, so memory stays flat in the number of frames (``tools/bench/bench_predict.py`` measures it). The
frames' records go to ``frames.jsonl`` as they finish (one JSON line each, flushed): a rerun into the same folder
skips every frame whose record and files exist, and rewrites ``frames.csv`` / ``index.html`` from all records. The
settings that change the outputs (pipeline weights, method, threshold, EMA, size, score format) are saved in
``predict.json`` and a rerun with other settings is refused (new ``--out``, or delete the folder).

Sizes: a frame is scored at its own size, through the pipeline's inference settings (its resize preset, scales,
sliding window); a backbone whose network needs sides divisible by its stride pads and crops itself
(:class:`~anomseg.models.smp_backbone.SMPBackbone`, Mask2Former). ``short_side`` resizes each frame first
(shorter side = that many pixels, area interpolation when shrinking) and the score map is resized back bilinearly:
what to use when the model was trained at another scale than the frames (the demo's model: 128 x 256).

Temporal filter (videos only, off by default): ``ema=a`` replaces each frame's map by
``f_t = a * f_(t-1) + (1 - a) * s_t``, ``f_0 = s_0``. It damps single-frame flicker (a false positive lasting one
frame is scaled by ``1 - a``) and makes an object that stays put stand out steadily; the price is lag: a new object
reaches half of its score after ``log(0.5) / log(a)`` frames (1 frame at a = 0.5, 3.1 at 0.8), and moving objects
leave a trail. With ``ema`` on, a partly written video is scored again from its first frame (the filter's state needs
every frame); frames already written are not rewritten.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from anomseg.files import check_fingerprint, make_dirs, output_lock, write_json_atomic
from anomseg.predict.outputs import (SCORE_FORMATS, VideoWriter, frame_paths, panel, score_path, write_csv, write_index,
                                     write_mask, write_panel, write_scores)
from anomseg.predict.sources import PredictError, Source, expand_inputs, read_frame, video_frames, video_info


def _progress(total, enabled):
    from tqdm import tqdm

    return tqdm(total=total or None, unit="frame", disable=not enabled, dynamic_ncols=True)


def _read_records(path: Path) -> dict[str, dict]:
    """frame name -> record of ``frames.jsonl``; a torn last line (a killed run) is dropped."""
    out = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                r = json.loads(line)
                out[str(r["frame"])] = r
            except (ValueError, KeyError, TypeError):
                continue
    return out


def _resize(image: np.ndarray, short_side: int | None) -> np.ndarray:
    if not short_side:
        return image
    h, w = image.shape[:2]
    s = short_side / min(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def _frames(sources: list[Source], skip):
    """(source, frame name, index, image or None, note, skipped) for every frame, ``skipped = skip(name)``; a skipped
    image is not decoded (None), a video's frames are decoded in order either way."""
    for src in sources:
        if src.kind == "image":
            if skip(src.name):
                yield src, src.name, 0, None, "", True
            else:
                image, note = read_frame(src.path)
                yield src, src.name, 0, image, note, False
        else:
            for i, image in enumerate(video_frames(src.path)):
                name = f"{src.name}/{i:06d}"
                yield src, name, i, image, "", skip(name)


def run_predict(segmenter, inputs, out, *, threshold: float | None = None, scores: str = "npy", batch_size: int = 4,
                ema: float | None = None, short_side: int | None = None, progress: bool = True,
                settings: dict | None = None) -> dict:
    """Score every frame of ``inputs`` (:func:`~anomseg.predict.sources.expand_inputs`) with ``segmenter`` and write
    the outputs of :mod:`anomseg.predict.outputs` under ``out``; returns the run's summary (frames, fps, ...).

    Args:
        threshold: the operating threshold; default the segmenter's operating point (an error without one).
        scores: ``npy`` (float16), ``png16`` or ``none``.
        batch_size: frames scored together (consecutive frames of one size).
        ema: the temporal filter's weight of the past in [0, 1) for videos (module docstring); None = off.
        short_side: resize frames to this shorter side before scoring (module docstring); None = native size.
        settings: what else to record in ``predict.json`` (the CLI's arguments).
    """
    from anomseg.instances import build_refiner, image_instances
    from anomseg.segmenter import describe_operating_point

    if scores not in SCORE_FORMATS:
        raise PredictError(f"scores={scores!r}: choose one of {', '.join(SCORE_FORMATS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PredictError(f"batch_size={batch_size!r}: give a whole number >= 1")
    if ema is not None and (isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1):
        raise PredictError(f"ema={ema!r}: give the weight of the past frames, a number in [0, 1) (e.g. 0.5), or leave "
                           f"it off")
    if short_side is not None and (isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 16):
        raise PredictError(f"short_side={short_side!r}: give a whole number of pixels >= 16")
    if threshold is None:
        if not segmenter.operating_point:
            raise PredictError("the pipeline has no operating point: pass --threshold NUMBER, or calibrate it "
                               "(AnomalySegmenter.calibrate(dataset, tpr=0.95)) and save the pipeline again")
        op = dict(segmenter.operating_point)
    else:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise PredictError(f"threshold={threshold!r}: give a finite number")
        op = {"threshold": float(threshold), "rule": "number", "target": None, "note": "given to predict"}
    t = float(op["threshold"])
    described = describe_operating_point(op)
    sources = expand_inputs(inputs)
    out = Path(out)
    make_dirs(out)
    from anomseg.models.identity import weights_hash

    fingerprint = {"weights": weights_hash(segmenter.model), "method": segmenter.method.name,
                   "method_options": json.loads(json.dumps(getattr(segmenter.method, "options", {}), default=str)),
                   "inference": segmenter.inference, "operating_point": op, "scores": scores, "ema": ema,
                   "short_side": short_side, "instances": segmenter.instance_settings}
    with output_lock(out):
        saved = out / "predict.json"
        if saved.is_file():
            try:
                old = json.loads(saved.read_text()).get("fingerprint", {})
            except ValueError:
                old = {}
            check_fingerprint(out, old, json.loads(json.dumps(fingerprint)),
                              "choose a new --out, or delete the folder to score these frames again")
        write_json_atomic(saved, {"fingerprint": fingerprint, "settings": settings or {},
                                  "operating_point_text": described, "backbone": segmenter.backbone})
        log_path = out / "frames.jsonl"
        done = _read_records(log_path)

        def skip(name: str) -> bool:
            return name in done and all(p.is_file() for p in frame_paths(out, name, scores))

        refiner = build_refiner(segmenter.instance_settings, segmenter.device)
        # the filter needs every frame of a video: a partly written video is scored again
        videos_with_ema = {s.name for s in sources if s.kind == "video"} if ema is not None else set()
        videos = {s.name: video_info(s.path) for s in sources if s.kind == "video"}  # (fps, frames), opened once
        total = sum(videos[s.name][1] if s.kind == "video" else 1 for s in sources)
        bar = _progress(total, progress)
        records: dict[str, dict] = {}
        state = {"ema": None, "video": None, "writer": None, "scored": 0}
        log = open(log_path, "a")

        def finish_video():
            if state["writer"] is not None:
                state["writer"].close()
            state.update(writer=None, video=None, ema=None)

        def emit(batch):
            """Score a batch [(src, name, index, image, note, skipped)] and write its frames."""
            todo = [b for b in batch if b[3] is not None]
            maps = {}
            if todo:
                t0 = time.perf_counter()
                scaled = [_resize(b[3], short_side) for b in todo]
                with torch.no_grad():
                    s = segmenter.predict(np.stack(scaled))
                for b, m in zip(todo, s.numpy()):
                    h, w = b[3].shape[:2]
                    if m.shape != (h, w):
                        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
                    maps[b[1]] = m.astype(np.float32)
                per = (time.perf_counter() - t0) / len(todo)
            for src, name, index, image, note, skipped in batch:
                if src.kind != "video" and state["video"] is not None:
                    finish_video()  # the video before this image is complete
                if src.kind == "video" and state["video"] != src.name:
                    finish_video()
                    state["video"] = src.name
                    state["writer"] = VideoWriter(out / "videos" / f"{src.name}.mp4", videos[src.name][0])
                if image is None:  # written before: only the video gets its panel back (if it is rewritten)
                    if state["writer"] is not None:
                        state["writer"].add_file(out / "panels" / f"{name}.jpg")
                    records[name] = done[name]
                    bar.update(1)
                    continue
                t1 = time.perf_counter()
                m = maps[name]
                if ema is not None and src.kind == "video":
                    m = m if state["ema"] is None else (ema * state["ema"] + (1 - ema) * m).astype(np.float32)
                    state["ema"] = m
                inst = image_instances(m, t, segmenter.instance_settings, image=image if refiner else None,
                                       refiner=refiner)
                hit = m >= t
                pan = panel(image, m, t, [f"{name}: {segmenter.method.name}, {100 * float(hit.mean()):.1f} % of pixels "
                                          f"flagged, {len(inst.scores)} regions", described], inst)
                if state["writer"] is not None:
                    state["writer"].add(pan)
                if skipped:  # scored only for the filter's state (ema): files kept as written
                    records[name] = done[name]
                    bar.update(1)
                    continue
                sp = score_path(out, name, scores)
                if sp is not None:
                    write_scores(sp, m, scores)
                write_mask(out / "masks" / f"{name}.png", hit)
                write_panel(out / "panels" / f"{name}.jpg", pan)
                rec = {"frame": name, "source": str(src.path), "index": index, "width": int(m.shape[1]),
                       "height": int(m.shape[0]), "seconds": round(per + time.perf_counter() - t1, 4),
                       "flagged_share": float(hit.mean()), "regions": int(len(inst.scores)), "threshold": t,
                       "score_min": float(m.min()), "score_max": float(m.max()), "note": note,
                       **({"video": f"videos/{src.name}.mp4"} if src.kind == "video" else {})}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                records[name] = done[name] = rec
                state["scored"] += 1
                bar.update(1)

        t_start = time.perf_counter()
        try:
            batch = []
            for src, name, index, image, note, skipped in _frames(sources, skip):
                if skipped and src.kind == "video" and src.name not in videos_with_ema:
                    image = None  # decoded (videos are read in order) but not scored again
                shapes = {b[3].shape for b in batch if b[3] is not None}
                if batch and (len(batch) >= batch_size or batch[-1][0] != src
                              or image is not None and shapes and image.shape not in shapes):
                    emit(batch)
                    batch = []
                batch.append((src, name, index, image, note, skipped))
            if batch:
                emit(batch)
            finish_video()
        finally:
            log.close()
            bar.close()
            if state["writer"] is not None:  # interrupted: no half video under the final name
                state["writer"].abandon()
        seconds = time.perf_counter() - t_start
        ordered = list(records.values())
        summary = {"frames": len(ordered), "scored now": state["scored"], "skipped (written before)": len(ordered) - state["scored"],
                   "seconds": round(seconds, 2), "fps": round(state["scored"] / seconds, 2) if state["scored"] and seconds else None,
                   "method": segmenter.method.name, "operating point": described,
                   "backbone": segmenter.backbone.get("name") or segmenter.backbone.get("checkpoint"),
                   "device": str(segmenter.device), "amp": segmenter.inference.get("amp"),
                   "scores": scores, "ema": ema, "short_side": short_side}
        write_csv(out / "frames.csv", ordered)
        write_index(out, ordered, summary)
        write_json_atomic(out / "summary.json", summary)
        return summary


__all__ = ["run_predict", "PredictError"]
