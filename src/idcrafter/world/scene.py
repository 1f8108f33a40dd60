"""SpriteWorld scenes: backgrounds, actions, clip sampling and rendering with ground truth.

Every action is a function of normalised time u in [0, 1], so a clip of 5 frames is an exact
subsample of the same clip at 9 frames, and the action recogniser can resample tracks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from idcrafter.world.identity import Identity, Split, sample_identities
from idcrafter.world.sprite import Y_BOTTOM, Y_TOP, Pose, draw_sprite

ACTIONS = ["stay", "walk_left", "walk_right", "jump", "wave", "approach", "swap"]
SOLO_ACTIONS = ACTIONS[:5]
PAIR_ACTIONS = ACTIONS[5:]
BACKGROUNDS = ["grass", "beach", "street", "room", "snow", "forest"]
CANVAS = (0.94, 0.94, 0.92)  # the plain light canvas of reference images
CANVAS_RGB = tuple(int(round(c * 255)) for c in CANVAS)  # the same in uint8: (240, 240, 235)
MAX_SUBJECTS = 4


@dataclass
class WorldConfig:
    """Size of the rendered world. The defaults are what the embedded model is trained on."""

    frames: int = 9
    height: int = 48
    width: int = 48
    ref_size: int = 32

    def __post_init__(self) -> None:
        if self.frames < 2 or self.height < 24 or self.width < 24 or self.ref_size < 16:
            raise ValueError("world needs frames >= 2, height/width >= 24 px and ref_size >= 16 px")

    @classmethod
    def of_pipeline(cls, config: Mapping[str, Any]) -> "WorldConfig":
        """The world a generator pipeline renders by default, from its config (a loaded pipeline's
        `.config` or its `model_index.json`): `default_frames`, `default_height`, `default_width`,
        `reference_size`, the class defaults for any it lacks. A non-square size (a real Wan's
        480 x 832) keeps the default 48 x 48, as the judge reads square clips only; sizes below
        the world's floors are raised to them (references are resized by the pipeline anyway)."""
        base = cls()
        get = config.get  # a diffusers FrozenDict or the parsed JSON
        frames = max(int(get("default_frames", base.frames)), 2)
        h, w = int(get("default_height", base.height)), int(get("default_width", base.width))
        if h != w or h < 24:
            h, w = base.height, base.width
        return cls(frames, h, w, max(int(get("reference_size", base.ref_size)), 16))


@dataclass
class SubjectTrack:
    """One subject's identity, action and per-frame placement (feet position, height, pose)."""

    identity: Identity
    action: str
    foot_x: list[float]
    foot_y: list[float]
    height: list[int]
    poses: list[Pose]


@dataclass
class ClipSpec:
    """Everything needed to render a clip deterministically."""

    config: WorldConfig
    background: str
    light: tuple[float, float, float]  # per-channel gain
    light_slope: float  # left-right brightness gradient
    subjects: list[SubjectTrack]
    interaction: tuple[int, int] | None = None  # indices of the pair doing approach / swap

    @property
    def actions(self) -> list[str]:
        return [s.action for s in self.subjects]


@dataclass
class RenderedClip:
    """A rendered clip with its ground truth.

    frames: (T, H, W, 3) uint8; masks: (T, H, W) uint8 with 0 = background, k + 1 = subject k;
    boxes / head_boxes: (T, K, 4) float32 x0, y0, x1, y1 (amodal, clipped to the frame);
    visibility: (T, K) float32 fraction of each subject's own pixels that are visible.
    """

    frames: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    head_boxes: np.ndarray
    visibility: np.ndarray
    spec: ClipSpec = field(repr=False)


# ----------------------------------------------------------------------------- backgrounds

def render_background(name: str, h: int, w: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """(h, w, 3) float32 background in [0, 1]; `rng` adds small texture so no two are equal."""
    yy = (np.arange(h) + 0.5)[:, None] / h
    xx = (np.arange(w) + 0.5)[None, :] / w
    img = np.zeros((h, w, 3), np.float32)
    horizon = 0.55

    def fill(mask, colour):
        img[np.broadcast_to(mask, (h, w))] = colour

    if name == "grass":
        fill(yy < horizon, (0.55, 0.78, 0.95))
        fill(yy >= horizon, (0.30, 0.62, 0.25))
    elif name == "beach":
        fill(yy < 0.40, (0.62, 0.84, 0.97))
        fill((yy >= 0.40) & (yy < horizon), (0.10, 0.45, 0.75))
        fill(yy >= horizon, (0.90, 0.80, 0.55))
    elif name == "street":
        fill(yy < horizon, (0.12, 0.14, 0.30))
        fill(yy >= horizon, (0.35, 0.35, 0.38))
        fill((np.abs(yy - 0.78) < 0.02) & (np.sin(xx * 6 * math.pi) > 0.3), (0.95, 0.95, 0.80))
    elif name == "room":
        fill(yy < 0.62, (0.85, 0.78, 0.62))
        fill(yy >= 0.62, (0.55, 0.38, 0.22))
    elif name == "snow":
        fill(yy < horizon, (0.72, 0.78, 0.88))
        fill(yy >= horizon, (0.97, 0.97, 0.99))
    elif name == "forest":
        fill(yy < horizon, (0.08, 0.30, 0.12))
        fill((yy < horizon) & (np.abs(((xx * 5) % 1) - 0.5) < 0.08), (0.35, 0.22, 0.10))
        fill(yy >= horizon, (0.25, 0.18, 0.10))
    else:
        raise ValueError(f"unknown background {name!r}; choose one of {BACKGROUNDS}")
    if rng is not None:
        img += rng.normal(0, 0.015, (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 1)


# ----------------------------------------------------------------------------- actions

def _pose_at(action: str, u: float, facing: int, phase: float, walking_dir: int) -> tuple[Pose, float]:
    """Pose and vertical lift (in height units) of `action` at normalised time u."""
    if action in ("walk_left", "walk_right", "approach", "swap") and walking_dir != 0:
        leg = math.sin(2 * math.pi * 1.75 * u + phase)
        swing = 0.35 * leg
        return Pose(walking_dir, leg, 0.15 + swing, 0.15 - swing), 0.02 * abs(leg)
    if action == "jump":
        lift = 0.22 * 4 * u * (1 - u)
        arms = 0.2 + 2.2 * min(1.0, 4 * u * (1 - u) * 1.6)
        return Pose(0, 0.0, arms, arms), lift
    if action == "wave":
        return Pose(0, 0.0, 0.15, 2.5 + 0.45 * math.sin(2 * math.pi * 2 * u + phase)), 0.0
    # stay (and approach/swap once arrived): idle sway so that nobody is a frozen cut-out
    sway = 0.3 * math.sin(2 * math.pi * u + phase)
    return Pose(facing, 0.0, 0.25 + sway, 0.25 - sway), 0.015 * (1 + math.sin(4 * math.pi * u + phase))


def _height_range(k: int, h: int) -> tuple[float, float]:
    lo, hi = {1: (26, 34), 2: (24, 32), 3: (21, 29), 4: (19, 26)}[k]
    return lo * h / 48, hi * h / 48


def _sample_positions(rng: np.random.Generator, k: int, w: int, widths: list[float]) -> list[float]:
    """Foot x positions spread over the frame; neighbours may overlap by up to ~half a body."""
    for _ in range(100):
        xs = np.sort(rng.uniform(0.14 * w, 0.86 * w, size=k))
        gaps = np.diff(xs)
        if k == 1 or np.all(gaps >= 0.5 * np.array(widths[:-1])):
            return [float(x) for x in rng.permutation(xs)]
    return [float(x) for x in np.linspace(0.15 * w, 0.85 * w, k)]


def sample_clip(rng: np.random.Generator, config: WorldConfig, k: int, split: Split,
                identities: list[Identity] | None = None, actions: list[str] | None = None) -> ClipSpec:
    """A random clip of k subjects of `split`. Actions may be forced (tests, validation)."""
    if not 1 <= k <= MAX_SUBJECTS:
        raise ValueError(f"a SpriteWorld clip has 1 to {MAX_SUBJECTS} subjects, got {k}")
    cfg = config
    identities = identities or sample_identities(rng, k, split)
    actions = list(actions) if actions else _sample_actions(rng, k)
    lo, hi = _height_range(k, cfg.height)
    heights = [float(rng.uniform(lo, hi)) for _ in range(k)]
    widths = [0.5 * h for h in heights]
    xs = _sample_positions(rng, k, cfg.width, widths)
    interaction = None
    if any(a in PAIR_ACTIONS for a in actions):
        pair = [i for i, a in enumerate(actions) if a in PAIR_ACTIONS]
        assert len(pair) == 2 and actions[pair[0]] == actions[pair[1]], "pair actions come in twos"
        interaction = (pair[0], pair[1])
        # the pair starts on opposite sides (left one first)
        xs[pair[0]] = float(rng.uniform(0.12, 0.28) * cfg.width)
        xs[pair[1]] = float(rng.uniform(0.72, 0.88) * cfg.width)
    subjects = [
        _make_track(rng, cfg, identities[i], actions[i], xs[i], heights[i], lo, hi,
                    partner_x=None if interaction is None or i not in interaction
                    else xs[interaction[1] if i == interaction[0] else interaction[0]])
        for i in range(k)
    ]
    light = tuple(float(g) for g in rng.uniform(0.82, 1.12, 3) * rng.uniform(0.85, 1.1))
    return ClipSpec(cfg, str(rng.choice(BACKGROUNDS)), light, float(rng.uniform(-0.12, 0.12)),
                    subjects, interaction)


def _sample_actions(rng: np.random.Generator, k: int) -> list[str]:
    """Per-subject actions. Two subjects never walk toward each other unless that *is* the
    action (approach / swap), so the labels stay unambiguous from the tracks alone."""
    while True:
        if k >= 2 and rng.random() < 0.3:
            acts = [str(rng.choice(SOLO_ACTIONS)) for _ in range(k)]
            i, j = rng.choice(k, 2, replace=False)
            acts[i] = acts[j] = str(rng.choice(PAIR_ACTIONS))
            if sum(a in ("walk_left", "walk_right") for a in acts) == 0:
                return acts
            continue
        acts = [str(rng.choice(SOLO_ACTIONS)) for _ in range(k)]
        if not ("walk_left" in acts and "walk_right" in acts):
            return acts


def _make_track(rng, cfg: WorldConfig, ident: Identity, action: str, x0: float, height: float,
                lo: float, hi: float, partner_x: float | None) -> SubjectTrack:
    w, h, t = cfg.width, cfg.height, cfg.frames
    depth = (height - lo) / max(hi - lo, 1e-6)  # bigger = nearer = lower in the frame
    y0 = h * (0.80 + 0.16 * depth) + rng.uniform(-0.5, 0.5)
    phase = float(rng.uniform(0, 2 * math.pi))
    facing = int(rng.choice([0, 0, -1, 1]))
    x_end, stop_u = x0, 1.0
    if action in ("walk_left", "walk_right"):
        d = float(rng.uniform(0.25, 0.42)) * w * (-1 if action == "walk_left" else 1)
        x_end = float(np.clip(x0 + d, 0.1 * w, 0.9 * w))
        if abs(x_end - x0) < 0.2 * w:  # too close to the border: turn the walk around
            x0, x_end = x_end, x0
            action = "walk_right" if x_end > x0 else "walk_left"
    elif action == "approach":
        assert partner_x is not None
        mid = (x0 + partner_x) / 2
        x_end = mid + math.copysign(0.22 * height, x0 - mid)
        stop_u = 0.75
    elif action == "swap":
        assert partner_x is not None
        x_end = partner_x
    walking_dir = int(np.sign(x_end - x0)) if abs(x_end - x0) > 1e-3 else 0
    fx, fy, hs, poses = [], [], [], []
    for i in range(t):
        u = i / (t - 1)
        p = min(u / stop_u, 1.0)
        moving = action in ("walk_left", "walk_right", "swap") or (action == "approach" and u < stop_u)
        pose, lift = _pose_at(action if moving or action not in PAIR_ACTIONS else "stay", u,
                              walking_dir if action == "approach" else facing, phase,
                              walking_dir if moving else 0)
        fx.append(x0 + (x_end - x0) * p)
        fy.append(y0 - lift * height)
        hs.append(int(round(height)))
        poses.append(pose)
    return SubjectTrack(ident, action, fx, fy, hs, poses)


# ----------------------------------------------------------------------------- rendering

def _paste(canvas: np.ndarray, owner: np.ndarray, sprite: np.ndarray, left: int, top: int,
           index: int, own: np.ndarray) -> None:
    """Alpha-composite `sprite` at (left, top); record ownership of well-covered pixels."""
    h, w = canvas.shape[:2]
    sh, sw = sprite.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + sh, h), min(left + sw, w)
    if y0 >= y1 or x0 >= x1:
        return
    sp = sprite[y0 - top:y1 - top, x0 - left:x1 - left]
    a = sp[..., 3:4]
    canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + sp[..., :3] * a
    cover = sp[..., 3] > 0.5
    owner[y0:y1, x0:x1][cover] = index + 1
    own[y0:y1, x0:x1] |= cover


def sprite_origin(foot_x: float, foot_y: float, sprite: np.ndarray) -> tuple[int, int]:
    """Top-left pixel of a sprite whose feet centre is at (foot_x, foot_y)."""
    sh, sw = sprite.shape[:2]
    return int(round(foot_x - sw / 2)), int(round(foot_y - sh))


def render_clip(spec: ClipSpec, rng: np.random.Generator | None = None) -> RenderedClip:
    """Render all frames with ground truth. Nearer subjects (lower feet) are drawn last."""
    cfg = spec.config
    t, h, w, k = cfg.frames, cfg.height, cfg.width, len(spec.subjects)
    bg = render_background(spec.background, h, w, rng)
    frames = np.zeros((t, h, w, 3), np.uint8)
    masks = np.zeros((t, h, w), np.uint8)
    boxes = np.zeros((t, k, 4), np.float32)
    heads = np.zeros((t, k, 4), np.float32)
    vis = np.zeros((t, k), np.float32)
    gain = np.array(spec.light, np.float32) * (1 + spec.light_slope * (np.linspace(-1, 1, w)[None, :, None]))
    for f in range(t):
        canvas = bg.copy()
        owner = np.zeros((h, w), np.uint8)
        own = np.zeros((k, h, w), bool)
        order = sorted(range(k), key=lambda i: spec.subjects[i].foot_y[f])
        for i in order:
            s = spec.subjects[i]
            sprite = draw_sprite(s.identity, s.poses[f].quantised(), s.height[f])
            left, top = sprite_origin(s.foot_x[f], s.foot_y[f], sprite)
            _paste(canvas, owner, sprite, left, top, i, own[i])
            boxes[f, i], heads[f, i] = _sprite_boxes(sprite, left, top, w, h)
        for i in range(k):
            vis[f, i] = (owner == i + 1).sum() / max(own[i].sum(), 1)
        frames[f] = np.clip(canvas * gain * 255 + 0.5, 0, 255).astype(np.uint8)
        masks[f] = owner
    return RenderedClip(frames, masks, boxes, heads, vis, spec)


def _sprite_boxes(sprite: np.ndarray, left: int, top: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Whole-body and head boxes of a placed sprite (from its alpha), clipped to the frame."""
    alpha = sprite[..., 3] > 0.5
    rows, cols = np.where(alpha)
    sh = sprite.shape[0]
    body = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)
    # the head (with hair and hat) spans from the sprite's top to the shoulders
    shoulder = int(round((0.34 - Y_TOP) / (Y_BOTTOM - Y_TOP) * sh))
    hr, hc = np.where(alpha[:shoulder])
    head = np.array([hc.min(), hr.min(), hc.max() + 1, shoulder], np.float32)
    off = np.array([left, top, left, top], np.float32)
    lim = np.array([w, h, w, h], np.float32)
    return np.clip(body + off, 0, lim), np.clip(head + off, 0, lim)


def render_reference(ident: Identity, size: int = 32) -> np.ndarray:
    """(size, size, 3) uint8 canonical view: front pose, centred, on the plain light canvas."""
    sprite = draw_sprite(ident, Pose(), int(round(size * 0.84)))
    canvas = np.ones((size, size, 3), np.float32) * np.array(CANVAS, np.float32)
    left, top = sprite_origin(size / 2, size - round(size * 0.05), sprite)
    _paste(canvas, np.zeros((size, size), np.uint8), sprite, left, top, 0, np.zeros((size, size), bool))
    return np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)


def subject_mask(reference: np.ndarray, tolerance: int = 24) -> np.ndarray:
    """(R, R) bool: the pixels of a reference image that are not its light canvas."""
    diff = np.abs(reference.astype(np.int16) - np.array(CANVAS_RGB, np.int16))
    return diff.max(-1) > tolerance


def spec_to_json(spec: ClipSpec) -> dict:
    """JSON-friendly description of a clip (identities as ids and attribute dicts)."""
    return {
        "config": asdict(spec.config),
        "background": spec.background,
        "light": list(spec.light),
        "interaction": list(spec.interaction) if spec.interaction else None,
        "subjects": [
            {"identity": s.identity.id, "attributes": s.identity.attributes(), "action": s.action}
            for s in spec.subjects
        ],
    }
