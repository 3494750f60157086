"""One procedural street scene: a road in perspective and what stands on it.

The ground plane is modelled by the row ``y``: ``depth_scale(y) = (y - horizon) / (H - horizon)``
is 0 at the horizon and 1 at the bottom row, and an object standing at row ``y`` is drawn with
its size multiplied by that scale, so the whole scene shares one vanishing point.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anomseg.data.synthetic import sprites as sp
from anomseg.data.synthetic.sprites import RAW, Sprite


class Canvas:
    """An image (float32 (H, W, 3), RGB 0..255), its raw label map (uint8 (H, W)) and its anomaly
    instance ids (uint16 (H, W): 0 none, k the k-th anomalous object; a nearer object drawn over one
    takes its pixels)."""

    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        self.img = np.zeros((height, width, 3), np.float32)
        self.lab = np.zeros((height, width), np.uint8)
        self.inst = np.zeros((height, width), np.uint16)

    def _poly_mask(self, pts) -> tuple[slice, slice, np.ndarray] | None:
        """Rasterise a polygon inside its clipped bounding box: (rows, cols, bool mask) or None."""
        pts = np.round(np.asarray(pts, np.float32)).astype(np.int32)
        x0, y0 = np.maximum(pts.min(0), 0)
        x1, y1 = np.minimum(pts.max(0) + 1, (self.w, self.h))
        if x0 >= x1 or y0 >= y1:
            return None
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(mask, [pts - (x0, y0)], 1)
        return slice(y0, y1), slice(x0, x1), mask.astype(bool)

    def fill_poly(self, pts, color, raw: int, tex=None) -> None:
        """Fill a polygon (points (x, y)) with a colour times an optional multiplicative texture.

        ``tex`` is a full-canvas float32 (H, W) array, or a callable ``(h, w) -> (h, w)`` evaluated
        over the polygon's bounding box only.
        """
        box = self._poly_mask(pts)
        if box is None:
            return
        rows, cols, m = box
        col = np.asarray(color, np.float32)
        if callable(tex):
            tex = tex(*m.shape)[m]
        elif tex is not None:
            tex = tex[rows, cols][m]
        self.img[rows, cols][m] = col if tex is None else col[None, :] * tex[:, None]
        self.lab[rows, cols][m] = raw

    def darken_poly(self, pts, factor: float) -> None:
        """Multiply the image inside a polygon by ``factor`` (a shadow); labels unchanged."""
        box = self._poly_mask(pts)
        if box is not None:
            rows, cols, m = box
            self.img[rows, cols][m] *= factor

    def blit(self, sprite: Sprite, x: float, y: float, instance: int = 0) -> None:
        """Draw ``sprite`` with its anchor at canvas point (x, y), clipped to the canvas; its pixels get
        anomaly instance id ``instance`` (0: not an anomaly)."""
        sh, sw = sprite.parts.shape
        x0 = int(round(x - sprite.anchor[0]))
        y0 = int(round(y - sprite.anchor[1]))
        cx0, cy0 = max(0, x0), max(0, y0)
        cx1, cy1 = min(self.w, x0 + sw), min(self.h, y0 + sh)
        if cx0 >= cx1 or cy0 >= cy1:
            return
        local = sprite.parts[cy0 - y0: cy1 - y0, cx0 - x0: cx1 - x0]
        img = self.img[cy0:cy1, cx0:cx1]
        lab = self.lab[cy0:cy1, cx0:cx1]
        inst = self.inst[cy0:cy1, cx0:cx1]
        for pid in np.unique(local):
            if pid == 0:
                continue
            m = local == pid
            col = sprite.colors[pid]
            tex = sprite.textures[pid]
            if tex is None:
                img[m] = col
            else:
                t = tex[cy0 - y0: cy1 - y0, cx0 - x0: cx1 - x0][m]
                img[m] = col[None, :] * t[:, None]
            lab[m] = sprite.raws[pid]
            inst[m] = instance


@dataclass
class Layout:
    """The scene's geometry: horizon row, vanishing point, road and sidewalk half-widths at the bottom row."""

    h: int
    w: int
    horizon: float
    vx: float
    road: float
    side: float

    def scale(self, y: float) -> float:
        return max(0.0, (y - self.horizon) / (self.h - self.horizon))

    def x_at(self, y: float, lateral: float) -> float:
        """Column at row ``y`` of the ground line ``lateral`` road half-widths from the centre."""
        return self.vx + lateral * self.road * self.scale(y)

    def ground_y(self, x: float, lateral_edge: float) -> float:
        """Row where the ground line at ``lateral_edge`` half-widths crosses column ``x``."""
        reach = abs(lateral_edge) * self.road
        return self.horizon + abs(x - self.vx) / reach * (self.h - self.horizon)


def _noise_field(rng, h, w, amp, cells=16):
    small = rng.normal(0, amp, (max(2, h // cells), max(2, w // cells))).astype(np.float32)
    return 1 + cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) + rng.normal(0, amp / 2, (h, w)).astype(np.float32)


def draw_scene(rng: np.random.Generator, height: int, width: int, anomalies: int = 0,
               anomaly_kinds: tuple[str, ...] = tuple(sp.ANOMALY_KINDS),
               with_instances: bool = False) -> tuple[np.ndarray, ...]:
    """Draw one scene.

    Args:
        rng: the scene's own random generator (the scene is a pure function of its state).
        height, width: image size.
        anomalies: how many anomalous objects to place (0 for training scenes).
        anomaly_kinds: which sprite kinds of :data:`sprites.ANOMALY_KINDS` to draw them from.
        with_instances: also return the anomaly instance ids (the random stream is the same either way).
    Returns:
        image uint8 (H, W, 3) RGB and raw label uint8 (H, W) with StreetHazards raw values 1..14; with
        ``with_instances`` also uint16 (H, W) instance ids (0 none, k = the k-th anomaly placed; an
        anomaly fully hidden by a nearer object has no pixel).
    """
    H, W = height, width
    cv = Canvas(H, W)
    lay = Layout(h=H, w=W, horizon=H * rng.uniform(0.36, 0.5), vx=W * rng.uniform(0.38, 0.62),
                 road=W * rng.uniform(0.3, 0.55), side=rng.uniform(1.3, 1.7))
    hz = lay.horizon

    # Sky ("unlabeled", as in StreetHazards) and the ground below the horizon (grass).
    dusk = rng.random() < 0.25
    top = sp.jitter(rng, (200, 120, 90) if dusk else (90, 140, 215), 20)
    low = sp.jitter(rng, (240, 190, 150) if dusk else (200, 220, 240), 15)
    t = np.clip(np.arange(H, dtype=np.float32) / max(hz, 1), 0, 1)[:, None, None]
    cv.img[:] = top * (1 - t) + low * t
    cv.img *= _noise_field(rng, H, W, 0.03, cells=32)[:, :, None]
    cv.lab[:] = RAW["unlabeled"]
    cv.fill_poly([(0, hz), (W, hz), (W, H), (0, H)], sp.pick(rng, "vegetation"), RAW["vegetation"],
                 _noise_field(rng, H, W, 0.1))

    # Roadside: buildings, walls, fences and gaps, block by block outward from the vanishing point.
    edge = lay.side
    for direction in (-1, 1):
        x = lay.vx + direction * rng.uniform(0, 6)
        while 0 <= x <= W:
            width_px = rng.uniform(0.15, 0.45) * abs(x - lay.vx) + rng.uniform(4, 12)
            xb = x + direction * width_px
            ga, gb = lay.ground_y(x, edge), lay.ground_y(xb, edge)
            kind = rng.choice(4, p=[0.6, 0.12, 0.12, 0.16])
            if kind == 0:  # building
                hb = rng.uniform(0.5, 2.2) * (H - hz)
                pts = [(x, ga - hb * lay.scale(ga)), (xb, gb - hb * lay.scale(gb)), (xb, gb), (x, ga)]
                kind_tex = ("checker", "stripes", "noise")[rng.integers(3)]
                cv.fill_poly(pts, sp.pick(rng, "building"), RAW["building"], lambda h, w: sp.texture(rng, h, w, kind_tex))
            elif kind in (1, 2):  # wall or fence along the sidewalk's outer edge
                hw = rng.uniform(0.08, 0.22) * (H - hz)
                pts = [(x, ga - hw * lay.scale(ga)), (xb, gb - hw * lay.scale(gb)), (xb, gb), (x, ga)]
                if kind == 1:
                    cv.fill_poly(pts, sp.pick(rng, "wall"), RAW["wall"], lambda h, w: sp.texture(rng, h, w, "noise"))
                else:
                    color = sp.pick(rng, "fence")
                    cv.fill_poly([(x, ga - 0.1 * hw * lay.scale(ga)), (xb, gb - 0.1 * hw * lay.scale(gb)),
                                  (xb, gb - 0.02 * hw * lay.scale(gb)), (x, ga - 0.02 * hw * lay.scale(ga))],
                                 color, RAW["fence"])
                    for bx in np.arange(min(x, xb), max(x, xb), max(2.0, 6 * lay.scale(min(ga, gb)) + 2)):
                        g = lay.ground_y(bx, edge)
                        bw = max(1.0, 1.5 * lay.scale(g))
                        cv.fill_poly([(bx, g - hw * lay.scale(g)), (bx + bw, g - hw * lay.scale(g)), (bx + bw, g), (bx, g)],
                                     color, RAW["fence"])
            x = xb

    # Sidewalks, road, lane marks.
    cv.fill_poly([(lay.vx, hz), (lay.x_at(H, -edge), H), (lay.x_at(H, edge), H)], sp.pick(rng, "sidewalk"),
                 RAW["sidewalk"], sp.texture(rng, H, W, ("noise", "checker")[rng.integers(2)]))
    cv.fill_poly([(lay.vx - 1, hz), (lay.vx + 1, hz), (lay.x_at(H, 1), H), (lay.x_at(H, -1), H)],
                 sp.pick(rng, "road", 10), RAW["road"], _noise_field(rng, H, W, 0.06))
    line_color = sp.jitter(rng, (235, 235, 230) if rng.random() < 0.7 else (230, 190, 40), 10)
    lanes = [0.0] if rng.random() < 0.5 else [-1 / 3, 1 / 3]
    dash_period = rng.uniform(2.0, 4.0)
    for lateral in lanes + [-0.95, 0.95]:
        solid = abs(lateral) > 0.9
        if solid and rng.random() < 0.4:
            continue
        ys = np.linspace(H, hz + 2, 120)
        for y0, y1 in zip(ys[:-1], ys[1:]):
            z = 1.0 / max(lay.scale(y0), 1e-3)
            if not solid and (z * dash_period) % 2 > 1:
                continue
            lw0, lw1 = 0.012 * lay.road * lay.scale(y0), 0.012 * lay.road * lay.scale(y1)
            xa, xb = lay.x_at(y0, lateral), lay.x_at(y1, lateral)
            cv.fill_poly([(xa - lw0, y0), (xa + lw0, y0), (xb + lw1, y1), (xb - lw1, y1)], line_color, RAW["road line"])

    # Objects standing on the ground, drawn far to near.
    objects = []  # (ground row, x, sprite, shadow)

    def on_sidewalk(s_min=0.08):
        y = hz + (H - hz) * rng.uniform(s_min, 1.0)
        lateral = rng.choice([-1, 1]) * rng.uniform(1.05, edge)
        return y, lay.x_at(y, lateral)

    def on_road(s_min=0.1, s_max=1.0):
        y = hz + (H - hz) * rng.uniform(s_min, s_max)
        return y, lay.x_at(y, rng.uniform(-0.75, 0.75))

    for _ in range(int(rng.integers(2, 7))):
        y, x = on_sidewalk()
        objects.append((y, x, sp.pole(rng, lay.scale(y) * H * rng.uniform(0.7, 1.1), rng.random() < 0.6), False))
    for _ in range(int(rng.integers(0, 5))):
        y, x = on_sidewalk()
        objects.append((y, x, sp.tree(rng, lay.scale(y) * H * rng.uniform(0.6, 1.0)), False))
    for _ in range(int(rng.integers(0, 6))):
        y, x = on_road(0.08)
        objects.append((y, x, sp.car(rng, lay.scale(y) * lay.road * rng.uniform(0.5, 0.7)), True))
    for _ in range(int(rng.integers(0, 5))):
        y, x = on_sidewalk(0.15)
        objects.append((y, x, sp.pedestrian(rng, lay.scale(y) * H * rng.uniform(0.35, 0.5)), False))
    for _ in range(int(rng.integers(0, 4))):
        y, x = on_sidewalk(0.15)
        objects.append((y, x, sp.street_clutter(rng, lay.scale(y) * H * rng.uniform(0.08, 0.15)), False))
    for _ in range(anomalies):
        kind = anomaly_kinds[rng.integers(len(anomaly_kinds))]
        y, x = on_road(0.2) if rng.random() < 0.7 else on_sidewalk(0.2)
        size = lay.scale(y) * H * rng.uniform(0.08, 0.3)
        objects.append((y, x, sp.ANOMALY_KINDS[kind](rng, size), False, len(objects)))
    objects = [o if len(o) == 5 else (*o, None) for o in objects]
    anomaly_ids = {pos: k + 1 for k, pos in enumerate(o[4] for o in objects if o[4] is not None)}
    objects.sort(key=lambda o: o[0])
    for y, x, sprite, shadow, pos in objects:
        if shadow:
            half = sprite.parts.shape[1] * 0.6
            depth = 0.08 * sprite.parts.shape[1]
            cv.darken_poly([(x - half, y - depth), (x + half, y - depth), (x + half, y + depth), (x - half, y + depth)], 0.6)
        cv.blit(sprite, x, y, instance=anomaly_ids.get(pos, 0))

    # Light and camera: exposure, white balance, vignetting, sensor noise.
    gain = rng.uniform(0.55, 1.25) * (0.8 if dusk else 1.0)
    tint = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    vignette = 1 - rng.uniform(0, 0.35) * (((xx - W / 2) / W) ** 2 + ((yy - H / 2) / H) ** 2)
    img = cv.img * (gain * tint)[None, None, :] * vignette[:, :, None]
    img += rng.normal(0, rng.uniform(1.5, 5.0), img.shape).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return (image, cv.lab, cv.inst) if with_instances else (image, cv.lab)


def draw_outlier(rng: np.random.Generator, kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One outlier-exposure object: image uint8 (s, s, 3) RGB and mask uint8 (s, s), 1 = object."""
    sprite = sp.OUTLIER_KINDS[kind](rng, float(size))
    cv = Canvas(*sprite.parts.shape)
    cv.img[:] = 127
    cv.blit(sprite, sprite.anchor[0], sprite.anchor[1])
    return np.clip(cv.img, 0, 255).astype(np.uint8), (sprite.parts > 0).astype(np.uint8)
