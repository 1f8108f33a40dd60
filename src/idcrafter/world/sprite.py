"""Drawing one SpriteWorld character as an anti-aliased RGBA sprite.

Geometry is written in units of the character's height (feet at y = 1, top of the head at
y = 0; hats and spikes reach y < 0). Primitives are rasterised at `SUPERSAMPLE` x the target
resolution and box-filtered down, which gives smooth edges at 20-40 px heights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from idcrafter.world.identity import (
    ACCESSORIES, CLOTH_COLOURS, EYES, HAIR_COLOURS, HAIR_STYLES, HEAD_SHAPES, PANTS_COLOURS, PATTERNS, SKINS,
    Identity,
)

SUPERSAMPLE = 3
Y_TOP, Y_BOTTOM, X_HALF = -0.12, 1.0, 0.38  # sprite canvas in height units
HAT = (0.22, 0.20, 0.24)
BOW = (0.95, 0.20, 0.55)
SHOE = (0.12, 0.10, 0.10)
EYE_DARK = (0.05, 0.05, 0.08)


@dataclass(frozen=True)
class Pose:
    """Everything about a character's look that changes over time.

    facing: -1 left, 0 front, +1 right (eyes and hair part shift that way).
    leg: -1..1 stride phase; arm_l / arm_r: angle in radians from hanging down (outward > 0).
    """

    facing: int = 0
    leg: float = 0.0
    arm_l: float = 0.15
    arm_r: float = 0.15

    def quantised(self) -> "Pose":
        # Quantise so that the sprite cache is effective; 0.1 rad / 0.25 stride is below a pixel.
        return Pose(self.facing, round(self.leg * 4) / 4, round(self.arm_l, 1), round(self.arm_r, 1))


class _Canvas:
    """Supersampled RGBA canvas with primitive painters (coordinates in height units)."""

    def __init__(self, height_px: int):
        self.h = height_px
        s = SUPERSAMPLE * height_px
        self.rows = int(math.ceil((Y_BOTTOM - Y_TOP) * s))
        self.cols = int(math.ceil(2 * X_HALF * s))
        # pixel centres in height units
        self.y = Y_TOP + (np.arange(self.rows) + 0.5) / s
        self.x = -X_HALF + (np.arange(self.cols) + 0.5) / s
        self.rgb = np.zeros((self.rows, self.cols, 3), np.float32)
        self.alpha = np.zeros((self.rows, self.cols), np.float32)

    def _window(self, x0: float, x1: float, y0: float, y1: float):
        s = SUPERSAMPLE * self.h
        r0 = max(int((y0 - Y_TOP) * s) - 1, 0)
        r1 = min(int((y1 - Y_TOP) * s) + 2, self.rows)
        c0 = max(int((x0 + X_HALF) * s) - 1, 0)
        c1 = min(int((x1 + X_HALF) * s) + 2, self.cols)
        return slice(r0, r1), slice(c0, c1)

    def paint(self, mask: np.ndarray, win, colour) -> None:
        self.rgb[win][mask] = colour
        self.alpha[win][mask] = 1.0

    def ellipse(self, cx, cy, rx, ry, colour, power: float = 2.0, where=None) -> None:
        win = self._window(cx - rx, cx + rx, cy - ry, cy + ry)
        yy, xx = self.y[win[0], None], self.x[None, win[1]]
        mask = (np.abs(xx - cx) / rx) ** power + (np.abs(yy - cy) / ry) ** power <= 1.0
        if where is not None:
            mask &= where(xx, yy)
        self.paint(mask, win, colour)

    def rect(self, x0, y0, x1, y1, colour) -> None:
        win = self._window(x0, x1, y0, y1)
        yy, xx = self.y[win[0], None], self.x[None, win[1]]
        self.paint((xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1), win, colour)

    def capsule(self, ax, ay, bx, by, r, colour) -> None:
        win = self._window(min(ax, bx) - r, max(ax, bx) + r, min(ay, by) - r, max(ay, by) + r)
        yy, xx = self.y[win[0], None], self.x[None, win[1]]
        dx, dy = bx - ax, by - ay
        t = np.clip(((xx - ax) * dx + (yy - ay) * dy) / max(dx * dx + dy * dy, 1e-9), 0, 1)
        self.paint((xx - ax - t * dx) ** 2 + (yy - ay - t * dy) ** 2 <= r * r, win, colour)

    def triangle(self, pts, colour) -> None:
        (x0, y0), (x1, y1), (x2, y2) = pts
        win = self._window(min(x0, x1, x2), max(x0, x1, x2), min(y0, y1, y2), max(y0, y1, y2))
        yy, xx = self.y[win[0], None], self.x[None, win[1]]

        def side(ax, ay, bx, by):
            return (bx - ax) * (yy - ay) - (by - ay) * (xx - ax)

        d0, d1, d2 = side(x0, y0, x1, y1), side(x1, y1, x2, y2), side(x2, y2, x0, y0)
        neg = (d0 < 0) | (d1 < 0) | (d2 < 0)
        pos = (d0 > 0) | (d1 > 0) | (d2 > 0)
        self.paint(~(neg & pos), win, colour)

    def downsample(self) -> np.ndarray:
        """(h, w, 4) float32 RGBA, premultiplied colour box-filtered then un-premultiplied."""
        s = SUPERSAMPLE
        r, c = self.rows // s * s, self.cols // s * s
        a = self.alpha[:r, :c].reshape(r // s, s, c // s, s).mean(axis=(1, 3))
        rgb = (self.rgb[:r, :c] * self.alpha[:r, :c, None]).reshape(r // s, s, c // s, s, 3)
        rgb = rgb.mean(axis=(1, 3)) / np.maximum(a[..., None], 1e-6)
        return np.concatenate([rgb, a[..., None]], axis=-1).astype(np.float32)


def _head_radii(shape: str) -> tuple[float, float, float]:
    return {"round": (0.15, 0.15, 2.0), "square": (0.145, 0.145, 4.0), "oval": (0.12, 0.17, 2.0)}[shape]


def _draw_hair_back(cv: _Canvas, ident: Identity, rx: float) -> None:
    if HAIR_STYLES[ident.hair_style] == "long":
        colour = HAIR_COLOURS[ident.hair_colour][1]
        cv.rect(-rx - 0.035, 0.10, rx + 0.035, 0.44, colour)


def _draw_hair_top(cv: _Canvas, ident: Identity, rx: float, ry: float, power: float, facing: int) -> None:
    style = HAIR_STYLES[ident.hair_style]
    if style == "bald":
        return
    colour = HAIR_COLOURS[ident.hair_colour][1]
    hy = 0.17  # head centre
    part = 0.03 * facing  # the fringe leans toward where the character looks
    cv.ellipse(0.0, hy, rx + 0.025, ry + 0.025, colour, power,
               where=lambda xx, yy: yy < hy - 0.045 + 0.04 * np.clip((xx - part) / rx, -1, 1) ** 2)
    if style == "spiky":
        for x in (-0.10, 0.0, 0.10):
            cv.triangle([(x - 0.06, 0.06), (x + 0.06, 0.06), (x + 0.01 * facing, -0.08)], colour)
    elif style == "bun":
        cv.ellipse(0.0, hy - ry - 0.035, 0.075, 0.065, colour)
    elif style == "long":
        for sx in (-1, 1):
            cv.rect(sx * (rx + 0.035) - (0.06 if sx > 0 else 0), 0.12, sx * (rx + 0.035) + (0.06 if sx < 0 else 0), 0.40, colour)


def _draw_face(cv: _Canvas, ident: Identity, facing: int, eyes: str) -> None:
    ex = 0.055
    shift = 0.045 * facing
    for sx in (-1, 1):
        cx = sx * ex + shift
        if eyes == "dot":
            cv.ellipse(cx, 0.19, 0.024, 0.028, EYE_DARK)
        elif eyes == "wide":
            cv.ellipse(cx, 0.19, 0.042, 0.042, (1.0, 1.0, 1.0))
            cv.ellipse(cx + 0.012 * facing, 0.19, 0.022, 0.022, EYE_DARK)
        else:  # sleepy
            cv.rect(cx - 0.035, 0.185, cx + 0.035, 0.205, EYE_DARK)


def _draw_accessory(cv: _Canvas, accessory: str, rx: float, ry: float, facing: int) -> None:
    hy = 0.17
    if accessory == "hat":
        cv.rect(-rx - 0.06, hy - ry + 0.015, rx + 0.06, hy - ry + 0.05, HAT)
        cv.rect(-0.11, hy - ry - 0.10, 0.11, hy - ry + 0.02, HAT)
    elif accessory == "glasses":
        shift = 0.045 * facing
        cv.rect(-0.11 + shift, 0.178, 0.11 + shift, 0.198, EYE_DARK)
        for sx in (-1, 1):
            cv.ellipse(sx * 0.055 + shift, 0.19, 0.045, 0.035, EYE_DARK)
    elif accessory == "bow":
        bx, by = rx * 0.75, hy - ry + 0.01
        cv.triangle([(bx, by), (bx + 0.09, by - 0.05), (bx + 0.09, by + 0.05)], BOW)
        cv.triangle([(bx, by), (bx - 0.09, by - 0.05), (bx - 0.09, by + 0.05)], BOW)


def _draw_body(cv: _Canvas, ident: Identity, pose: Pose) -> None:
    skin = SKINS[ident.skin][1]
    shirt = np.array(CLOTH_COLOURS[ident.shirt][1], np.float32)
    pants = PANTS_COLOURS[ident.pants][1]
    # legs: capsules hip -> foot, stride shifts the feet in opposite directions
    for sx in (-1, 1):
        foot_x = sx * 0.065 + sx * pose.leg * 0.09
        cv.capsule(sx * 0.065, 0.64, foot_x, 0.94, 0.055, pants)
        cv.rect(foot_x - 0.06 + 0.03 * pose.facing, 0.93, foot_x + 0.06 + 0.03 * pose.facing, 1.0, SHOE)
    # torso with the pattern painted row- or column-wise
    pattern = PATTERNS[ident.pattern]
    cv.ellipse(0.0, 0.355, 0.15, 0.04, tuple(shirt))  # shoulders
    cv.rect(-0.145, 0.35, 0.145, 0.65, tuple(shirt))
    if pattern == "striped":
        dark = tuple(shirt * 0.45)
        for y0 in (0.40, 0.48, 0.56):
            cv.rect(-0.145, y0, 0.145, y0 + 0.04, dark)
    elif pattern == "two-tone":
        light = tuple(shirt * 0.45 + 0.55)
        cv.rect(0.0, 0.35, 0.145, 0.65, light)
    # arms: sleeves in shirt colour ending in a hand
    for sx, angle in ((-1, pose.arm_l), (1, pose.arm_r)):
        ax, ay = sx * 0.16, 0.38
        bx, by = ax + sx * 0.25 * math.sin(angle), ay + 0.25 * math.cos(angle)
        cv.capsule(ax, ay, bx, by, 0.045, tuple(shirt * 0.85))
        cv.ellipse(bx, by, 0.042, 0.042, skin)


@lru_cache(maxsize=4096)
def draw_sprite(ident: Identity, pose: Pose, height_px: int) -> np.ndarray:
    """(h, w, 4) float32 RGBA sprite of `ident` in `pose`, `height_px` pixels from head to feet.

    Row `round(-Y_TOP * height_px)` is the top of the head; the last row is the feet.
    """
    cv = _Canvas(height_px)
    rx, ry, power = _head_radii(HEAD_SHAPES[ident.head])
    skin = SKINS[ident.skin][1]
    _draw_hair_back(cv, ident, rx)
    _draw_body(cv, ident, pose)
    cv.ellipse(0.0, 0.17, rx, ry, skin, power)
    _draw_hair_top(cv, ident, rx, ry, power, pose.facing)
    _draw_face(cv, ident, pose.facing, EYES[ident.eyes])
    _draw_accessory(cv, ACCESSORIES[ident.accessory], rx, ry, pose.facing)
    out = cv.downsample()
    out.setflags(write=False)  # cached: callers must not modify it
    return out


def head_fraction() -> float:
    """Fraction of the sprite's box height (hat to feet) taken by the head and hair."""
    return (0.42 - Y_TOP) / (Y_BOTTOM - Y_TOP)
