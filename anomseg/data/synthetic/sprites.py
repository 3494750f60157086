"""Sprites: small procedurally drawn objects made of coloured, textured parts.

A :class:`Sprite` is a local part map (uint8 (h, w), 0 = transparent, p = part p) with one
colour and one raw label value per part, and an anchor (the point that touches the ground).
Shapes are drawn with OpenCV's rasterisers, which are deterministic and fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Raw annotation values of the StreetHazards layout (class = raw - 1); see ../streethazards.py.
RAW = {
    "unlabeled": 1, "building": 2, "fence": 3, "other": 4, "pedestrian": 5, "pole": 6,
    "road line": 7, "road": 8, "sidewalk": 9, "vegetation": 10, "car": 11, "wall": 12,
    "traffic sign": 13, "anomaly": 14,
}

# Base colours (RGB) of the known classes; objects jitter around them.
PALETTE = {
    "road": [(70, 70, 74), (90, 88, 86), (55, 57, 62), (105, 100, 95)],
    "sidewalk": [(150, 145, 140), (170, 160, 150), (140, 120, 110), (120, 125, 130)],
    "building": [(140, 110, 90), (170, 160, 140), (110, 105, 110), (190, 180, 160), (120, 80, 70), (90, 95, 100)],
    "vegetation": [(60, 110, 45), (40, 85, 35), (90, 130, 55), (70, 95, 40)],
    "car": [(180, 20, 25), (30, 40, 120), (220, 220, 220), (25, 25, 28), (120, 125, 130), (200, 170, 30), (20, 90, 60)],
    "skin": [(230, 190, 160), (190, 140, 110), (120, 85, 60), (250, 215, 190)],
    "cloth": [(30, 30, 35), (40, 60, 130), (150, 30, 40), (200, 200, 195), (90, 70, 50), (60, 110, 70), (210, 160, 40)],
    "pole": [(100, 100, 105), (60, 62, 60), (140, 140, 135)],
    "sign": [(200, 30, 30), (30, 70, 170), (230, 200, 40), (235, 235, 235)],
    "wall": [(160, 155, 145), (130, 125, 120), (180, 170, 150)],
    "fence": [(90, 80, 70), (130, 130, 130), (60, 90, 60)],
    "other": [(40, 90, 50), (160, 150, 40), (90, 60, 40), (170, 40, 40), (60, 60, 60)],
}


def jitter(rng: np.random.Generator, rgb, amount: float = 18.0) -> np.ndarray:
    """An RGB colour (float32 (3,)) near ``rgb``."""
    return np.clip(np.asarray(rgb, np.float32) + rng.normal(0, amount, 3), 0, 255).astype(np.float32)


def pick(rng: np.random.Generator, name: str, amount: float = 18.0) -> np.ndarray:
    pal = PALETTE[name]
    return jitter(rng, pal[rng.integers(len(pal))], amount)


def random_color(rng: np.random.Generator) -> np.ndarray:
    """Any colour, or (40%) a colour of a known class, so that colour alone does not give anomalies away."""
    if rng.random() < 0.4:
        name = ("road", "sidewalk", "building", "vegetation", "car", "cloth")[rng.integers(6)]
        return pick(rng, name, 12)
    return rng.uniform(0, 255, 3).astype(np.float32)


def texture(rng: np.random.Generator, h: int, w: int, kind: str | None = None) -> np.ndarray:
    """A multiplicative texture, float32 (h, w) around 1: flat, noise, stripes, checker or spots."""
    kind = kind or ("flat", "noise", "stripes", "checker", "spots")[rng.integers(5)]
    if kind == "flat":
        return np.ones((h, w), np.float32)
    if kind == "noise":
        return (1 + rng.normal(0, 0.12, (h, w))).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(3, 12)
    if kind == "stripes":
        theta = rng.uniform(0, np.pi)
        phase = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
        return (1 + rng.uniform(0.2, 0.5) * np.sign(phase)).astype(np.float32)
    if kind == "checker":
        cells = (np.floor(xx / period) + np.floor(yy / period)) % 2
        return (1 - rng.uniform(0.25, 0.6) * cells).astype(np.float32)
    spots = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(3, 12))):
        r = max(1, int(rng.uniform(0.05, 0.2) * min(h, w)))
        cv2.circle(spots, (int(rng.integers(w)), int(rng.integers(h))), r, 1, -1)
    return (1 - rng.uniform(0.3, 0.7) * spots).astype(np.float32)


@dataclass
class Sprite:
    """Local part map with per-part colours and raw labels.

    Attributes:
        parts: uint8 (h, w); 0 transparent, p > 0 belongs to part p.
        colors: float32 (P + 1, 3) RGB per part id (row 0 unused).
        raws: uint8 (P + 1,) raw label value per part id.
        textures: per part id, a float32 (h, w) multiplicative texture or None.
        anchor: (x, y) local point placed on the ground point when drawn.
    """

    parts: np.ndarray
    colors: np.ndarray
    raws: np.ndarray
    textures: list
    anchor: tuple[float, float]


class SpriteBuilder:
    """Draw parts into an (h, w) local map: ``b.poly(pts, part)``, ``b.circle(...)`` and so on."""

    def __init__(self, h: int, w: int):
        self.h, self.w = max(1, int(h)), max(1, int(w))
        self.parts = np.zeros((self.h, self.w), np.uint8)
        self.colors: dict[int, np.ndarray] = {}
        self.raws: dict[int, int] = {}
        self.tex: dict[int, np.ndarray] = {}

    def part(self, pid: int, color, raw: int, tex: np.ndarray | None = None) -> int:
        self.colors[pid] = np.asarray(color, np.float32)
        self.raws[pid] = raw
        if tex is not None:
            self.tex[pid] = tex
        return pid

    def poly(self, pts, pid: int):
        cv2.fillPoly(self.parts, [np.round(np.asarray(pts, np.float32)).astype(np.int32)], int(pid))

    def rect(self, x0, y0, x1, y1, pid: int):
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], pid)

    def circle(self, cx, cy, r, pid: int, thickness: int = -1):
        cv2.circle(self.parts, (int(round(cx)), int(round(cy))), max(1, int(round(r))), int(pid), thickness)

    def ellipse(self, cx, cy, ax, ay, angle, pid: int):
        cv2.ellipse(self.parts, (int(round(cx)), int(round(cy))), (max(1, int(round(ax))), max(1, int(round(ay)))),
                    float(angle), 0, 360, int(pid), -1)

    def line(self, p0, p1, pid: int, thickness: float):
        cv2.line(self.parts, tuple(int(round(v)) for v in p0), tuple(int(round(v)) for v in p1), int(pid),
                 max(1, int(round(thickness))))

    def build(self, anchor=None) -> Sprite:
        n = max(self.colors, default=0) + 1
        colors = np.zeros((n, 3), np.float32)
        raws = np.zeros(n, np.uint8)
        textures = [None] * n
        for pid, c in self.colors.items():
            colors[pid], raws[pid] = c, self.raws[pid]
            textures[pid] = self.tex.get(pid)
        return Sprite(self.parts, colors, raws, textures, anchor or (self.w / 2, self.h - 1))


# --- known classes -------------------------------------------------------------------------

def car(rng, width: float) -> Sprite:
    w = max(4, width)
    h = w * rng.uniform(0.6, 0.85)
    b = SpriteBuilder(h, w)
    body = b.part(1, pick(rng, "car", 10), RAW["car"], texture(rng, b.h, b.w, "noise"))
    glass = b.part(2, jitter(rng, (40, 50, 60), 10), RAW["car"])
    wheel = b.part(3, jitter(rng, (20, 20, 20), 5), RAW["car"])
    light = b.part(4, jitter(rng, (200, 30, 30) if rng.random() < 0.7 else (230, 180, 40), 15), RAW["car"])
    b.poly([(0.18 * w, 0.38 * h), (0.27 * w, 0.02 * h), (0.73 * w, 0.02 * h), (0.82 * w, 0.38 * h)], body)
    b.poly([(0.24 * w, 0.36 * h), (0.31 * w, 0.08 * h), (0.69 * w, 0.08 * h), (0.76 * w, 0.36 * h)], glass)
    b.rect(0, 0.35 * h, w - 1, 0.85 * h, body)
    b.rect(0.04 * w, 0.75 * h, 0.24 * w, h - 1, wheel)
    b.rect(0.76 * w, 0.75 * h, 0.96 * w, h - 1, wheel)
    b.rect(0.04 * w, 0.45 * h, 0.16 * w, 0.55 * h, light)
    b.rect(0.84 * w, 0.45 * h, 0.96 * w, 0.55 * h, light)
    return b.build()


def pedestrian(rng, height: float) -> Sprite:
    h = max(6, height)
    w = h * rng.uniform(0.32, 0.42)
    b = SpriteBuilder(h, w)
    skin = b.part(1, pick(rng, "skin", 10), RAW["pedestrian"])
    top = b.part(2, pick(rng, "cloth"), RAW["pedestrian"], texture(rng, b.h, b.w, ("flat", "stripes", "noise")[rng.integers(3)]))
    legs = b.part(3, pick(rng, "cloth"), RAW["pedestrian"])
    b.circle(w / 2, 0.09 * h, 0.08 * h, skin)
    b.poly([(0.22 * w, 0.18 * h), (0.78 * w, 0.18 * h), (0.72 * w, 0.55 * h), (0.28 * w, 0.55 * h)], top)
    b.line((0.24 * w, 0.2 * h), (0.08 * w, 0.5 * h), top, 0.07 * h)
    b.line((0.76 * w, 0.2 * h), (0.92 * w, 0.5 * h), top, 0.07 * h)
    stride = rng.uniform(0, 0.2) * w
    b.line((0.42 * w, 0.54 * h), (0.4 * w - stride, h - 1), legs, 0.09 * h)
    b.line((0.58 * w, 0.54 * h), (0.6 * w + stride, h - 1), legs, 0.09 * h)
    return b.build()


def pole(rng, height: float, with_sign: bool) -> Sprite:
    h = max(8, height)
    pw = max(1.0, h * 0.018)
    sign_r = h * rng.uniform(0.05, 0.08) if with_sign else 0
    w = max(pw, 2 * sign_r) + 2
    b = SpriteBuilder(h, w)
    stem = b.part(1, pick(rng, "pole", 8), RAW["pole"])
    b.rect(w / 2 - pw / 2, 0, w / 2 + pw / 2, h - 1, stem)
    if with_sign:
        sign = b.part(2, pick(rng, "sign", 15), RAW["traffic sign"])
        cy = sign_r + 1
        shape = rng.integers(3)
        if shape == 0:
            b.circle(w / 2, cy, sign_r, sign)
        elif shape == 1:
            b.poly([(w / 2, cy - sign_r), (w / 2 + sign_r, cy + sign_r * 0.8), (w / 2 - sign_r, cy + sign_r * 0.8)], sign)
        else:
            b.rect(w / 2 - sign_r, cy - sign_r * 0.7, w / 2 + sign_r, cy + sign_r * 0.7, sign)
    return b.build()


def tree(rng, height: float) -> Sprite:
    h = max(8, height)
    w = h * rng.uniform(0.45, 0.7)
    b = SpriteBuilder(h, w)
    trunk = b.part(1, jitter(rng, (90, 65, 45), 12), RAW["vegetation"])
    leaves = b.part(2, pick(rng, "vegetation", 15), RAW["vegetation"], texture(rng, b.h, b.w, "spots"))
    b.rect(w / 2 - 0.04 * w - 1, 0.45 * h, w / 2 + 0.04 * w + 1, h - 1, trunk)
    for _ in range(int(rng.integers(4, 8))):
        b.circle(w / 2 + rng.uniform(-0.25, 0.25) * w, rng.uniform(0.15, 0.45) * h, rng.uniform(0.15, 0.25) * w, leaves)
    return b.build()


def street_clutter(rng, height: float) -> Sprite:
    """Class "other": bins, benches and hydrants."""
    h = max(4, height)
    kind = rng.integers(3)
    if kind == 0:  # bin
        w = h * 0.6
        b = SpriteBuilder(h, w)
        body = b.part(1, pick(rng, "other"), RAW["other"], texture(rng, b.h, b.w, "stripes"))
        lid = b.part(2, jitter(rng, (50, 50, 50), 10), RAW["other"])
        b.rect(0.1 * w, 0.15 * h, 0.9 * w, h - 1, body)
        b.rect(0, 0, w - 1, 0.15 * h, lid)
    elif kind == 1:  # bench
        w = h * 2.2
        b = SpriteBuilder(h, w)
        wood = b.part(1, pick(rng, "other"), RAW["other"], texture(rng, b.h, b.w, "stripes"))
        b.rect(0, 0.1 * h, w - 1, 0.35 * h, wood)
        b.rect(0, 0.45 * h, w - 1, 0.6 * h, wood)
        b.rect(0.08 * w, 0.6 * h, 0.14 * w, h - 1, wood)
        b.rect(0.86 * w, 0.6 * h, 0.92 * w, h - 1, wood)
    else:  # hydrant
        w = h * 0.5
        b = SpriteBuilder(h, w)
        body = b.part(1, jitter(rng, (190, 40, 30) if rng.random() < 0.6 else (220, 190, 40), 15), RAW["other"])
        b.rect(0.2 * w, 0.2 * h, 0.8 * w, h - 1, body)
        b.circle(w / 2, 0.2 * h, 0.3 * w, body)
        b.rect(0, 0.4 * h, w - 1, 0.55 * h, body)
    return b.build()


# --- anomalies (val/test only): kinds never seen in training --------------------------------

def _anomaly_parts(b: SpriteBuilder, rng, n: int) -> list[int]:
    return [b.part(i + 1, random_color(rng), RAW["anomaly"], texture(rng, b.h, b.w)) for i in range(n)]


def animal(rng, size: float) -> Sprite:
    w = max(8, size * rng.uniform(1.1, 1.5))
    h = max(6, size)
    b = SpriteBuilder(h, w)
    body, head = _anomaly_parts(b, rng, 2)
    b.ellipse(0.5 * w, 0.4 * h, 0.3 * w, 0.17 * h, rng.uniform(-8, 8), body)
    for fx in (0.27, 0.37, 0.63, 0.73):
        b.line((fx * w, 0.45 * h), (fx * w + rng.uniform(-0.04, 0.04) * w, h - 1), body, 0.05 * w)
    side = 1 if rng.random() < 0.5 else -1
    hx = 0.5 * w + side * 0.36 * w
    b.line((0.5 * w + side * 0.25 * w, 0.35 * h), (hx, 0.15 * h), body, 0.07 * w)
    b.ellipse(hx + side * 0.04 * w, 0.13 * h, 0.09 * w, 0.08 * h, 0, head)
    b.line((0.5 * w - side * 0.28 * w, 0.35 * h), (0.5 * w - side * 0.42 * w, 0.5 * h), body, 0.02 * w)
    return b.build()


def stroller(rng, size: float) -> Sprite:
    h = max(8, size)
    w = h * rng.uniform(0.8, 1.1)
    b = SpriteBuilder(h, w)
    frame, hood, wheel = _anomaly_parts(b, rng, 3)
    b.line((0.15 * w, 0.75 * h), (0.85 * w, 0.75 * h), frame, 0.04 * h)
    b.line((0.85 * w, 0.75 * h), (0.98 * w, 0.1 * h), frame, 0.04 * h)
    b.poly([(0.12 * w, 0.35 * h), (0.8 * w, 0.35 * h), (0.72 * w, 0.7 * h), (0.2 * w, 0.7 * h)], frame)
    cv2.ellipse(b.parts, (int(0.3 * w), int(0.38 * h)), (max(1, int(0.22 * w)), max(1, int(0.3 * h))), 0, 180, 360, hood, -1)
    for fx in (0.2, 0.75):
        b.circle(fx * w, 0.88 * h, 0.11 * h, wheel, thickness=max(1, int(0.04 * h)))
    return b.build()


def crate(rng, size: float) -> Sprite:
    w = max(6, size * rng.uniform(0.9, 1.6))
    h = max(6, size)
    b = SpriteBuilder(h, w)
    b.part(1, random_color(rng), RAW["anomaly"], texture(rng, b.h, b.w, "stripes"))
    top = b.part(2, random_color(rng), RAW["anomaly"], texture(rng, b.h, b.w, "noise"))
    d = 0.25 * h
    b.rect(0, d, w - 1 - d, h - 1, 1)
    b.poly([(0, d), (d, 0), (w - 1, 0), (w - 1 - d, d)], top)
    b.poly([(w - 1 - d, d), (w - 1, 0), (w - 1, h - 1 - d), (w - 1 - d, h - 1)], top)
    return b.build()


def barrel(rng, size: float) -> Sprite:
    h = max(6, size)
    w = h * rng.uniform(0.5, 0.8)
    b = SpriteBuilder(h, w)
    body, ring = _anomaly_parts(b, rng, 2)
    b.rect(0, 0.08 * h, w - 1, 0.92 * h, body)
    b.ellipse(w / 2, 0.08 * h, w / 2, 0.08 * h, 0, ring)
    b.ellipse(w / 2, 0.92 * h, w / 2, 0.08 * h, 0, body)
    for fy in (0.35, 0.65):
        b.rect(0, fy * h, w - 1, fy * h + 0.06 * h, ring)
    return b.build()


def debris(rng, size: float) -> Sprite:
    w = max(6, size * rng.uniform(1.0, 2.0))
    h = max(4, size * rng.uniform(0.4, 0.8))
    b = SpriteBuilder(h, w)
    (rock,) = _anomaly_parts(b, rng, 1)
    n = int(rng.integers(7, 13))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(0.6, 1.0, n)
    pts = np.stack([w / 2 + np.cos(ang) * rad * w / 2, h / 2 + np.sin(ang) * rad * h / 2], 1)
    b.poly(np.clip(pts, 0, [w - 1, h - 1]), rock)
    return b.build()


def tire(rng, size: float) -> Sprite:
    h = max(6, size)
    w = h * rng.uniform(0.8, 1.0)
    b = SpriteBuilder(h, w)
    rubber = b.part(1, jitter(rng, (25, 25, 25), 10) if rng.random() < 0.6 else random_color(rng), RAW["anomaly"],
                    texture(rng, b.h, b.w, "noise"))
    hub = b.part(2, random_color(rng), RAW["anomaly"])
    b.ellipse(w / 2, h / 2, w / 2 - 1, h / 2 - 1, 0, rubber)
    b.ellipse(w / 2, h / 2, w / 5, h / 5, 0, hub)
    return b.build()


ANOMALY_KINDS = {"animal": animal, "stroller": stroller, "crate": crate, "barrel": barrel, "debris": debris, "tire": tire}


# --- outlier-exposure pool: other kinds, never the test anomalies ---------------------------

def star(rng, size: float) -> Sprite:
    b = SpriteBuilder(size, size)
    (p,) = _anomaly_parts(b, rng, 1)
    n = int(rng.integers(4, 9))
    ang = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) + rng.uniform(0, np.pi)
    rad = np.where(np.arange(2 * n) % 2 == 0, 0.48, rng.uniform(0.15, 0.3)) * size
    b.poly(np.stack([size / 2 + np.cos(ang) * rad, size / 2 + np.sin(ang) * rad], 1), p)
    return b.build()


def glyph(rng, size: float) -> Sprite:
    b = SpriteBuilder(size, size)
    (p,) = _anomaly_parts(b, rng, 1)
    ch = "AEFGHKMNRSWXZ23458"[rng.integers(18)]
    scale = size / 30.0
    thick = max(1, int(size / 10))
    (tw, th), _ = cv2.getTextSize(ch, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    cv2.putText(b.parts, ch, (max(0, int((size - tw) / 2)), int((size + th) / 2)), cv2.FONT_HERSHEY_SIMPLEX, scale, p, thick)
    return b.build()


def disc_cluster(rng, size: float) -> Sprite:
    b = SpriteBuilder(size, size)
    parts = _anomaly_parts(b, rng, 2)
    for _ in range(int(rng.integers(3, 8))):
        r = rng.uniform(0.08, 0.2) * size
        b.circle(rng.uniform(r, size - r), rng.uniform(r, size - r), r, parts[rng.integers(2)])
    return b.build()


def crescent(rng, size: float) -> Sprite:
    b = SpriteBuilder(size, size)
    (p,) = _anomaly_parts(b, rng, 1)
    b.circle(size / 2, size / 2, size * 0.45, p)
    b.circle(size / 2 + size * rng.uniform(0.15, 0.3), size / 2 - size * 0.1, size * 0.38, 0)
    return b.build()


def zigzag(rng, size: float) -> Sprite:
    b = SpriteBuilder(size, size)
    (p,) = _anomaly_parts(b, rng, 1)
    n = int(rng.integers(3, 7))
    xs = np.linspace(0.08, 0.92, n + 1) * size
    ys = np.where(np.arange(n + 1) % 2 == 0, 0.2, 0.8) * size
    for i in range(n):
        b.line((xs[i], ys[i]), (xs[i + 1], ys[i + 1]), p, size * 0.1)
    return b.build()


OUTLIER_KINDS = {"star": star, "glyph": glyph, "disc_cluster": disc_cluster, "crescent": crescent, "zigzag": zigzag}
