"""Synthetic clips: one coloured shape moving across a plain background, captioned
`a {color} {shape} moving {direction}`. Some combinations are held out of training to measure generalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 235),
    "yellow": (235, 220, 30),
    "magenta": (220, 40, 220),
    "cyan": (30, 215, 225),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BACKGROUND = (16, 16, 16)
SIZE = 64  # pixels
FRAMES = 16
# 9 of the 84 combinations (11%) never seen in training; every colour, shape and direction still is.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "triangle", "up"),
    ("green", "circle", "left"),
    ("blue", "square", "down"),
    ("yellow", "triangle", "right"),
    ("magenta", "circle", "up"),
    ("cyan", "square", "left"),
    ("white", "triangle", "down"),
    ("red", "square", "right"),
    ("blue", "circle", "up"),
)
ALL_COMBOS = tuple(product(COLORS, SHAPES, DIRECTIONS))
SEEN = tuple(c for c in ALL_COMBOS if c not in HELD_OUT)


@dataclass(frozen=True)
class Clip:
    color: str
    shape: str
    direction: str
    frames: np.ndarray  # (F, H, W, 3) uint8

    @property
    def caption(self) -> str:
        return caption(self.color, self.shape, self.direction)


def caption(color: str, shape: str, direction: str) -> str:
    return f"a {color} {shape} moving {direction}"


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = SIZE) -> np.ndarray:
    """Boolean (size, size) mask of a shape centred at (cx, cy) with half-extent r."""
    y, x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r**2
    if shape == "square":
        return (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    if shape == "triangle":  # apex up, base at the bottom: half the bounding box
        top = cy - r
        inside_y = (y >= top) & (y <= cy + r)
        half_width = (y - top) / 2  # width grows from 0 at the apex to 2r at the base
        return inside_y & (np.abs(x - cx) <= half_width)
    raise ValueError(f"unknown shape {shape!r}")


def render_clip(
    color: str,
    shape: str,
    direction: str,
    rng: np.random.Generator,
    frames: int = FRAMES,
    size: int = SIZE,
    crossing: bool = False,
) -> Clip:
    """A clip with a random size, speed and start position; the shape stays inside the frame throughout.
    `crossing`: it crosses the whole frame, edge to edge, so the direction word alone fixes where it is in
    every frame along its axis (only the other coordinate and the size are random)."""
    r = rng.uniform(6.0, 10.0)
    dx, dy = DIRECTIONS[direction]
    lo, hi = r + 1, size - r - 1
    speed = (hi - lo) / (frames - 1) if crossing else rng.uniform(1.2, 2.2)  # pixels per frame
    travel = speed * (frames - 1)

    def start(d: int) -> float:
        if d == 0:
            return rng.uniform(lo, hi)
        span = max(hi - lo - travel, 0.0)
        offset = rng.uniform(0, span)
        return lo + offset if d > 0 else hi - offset

    cx, cy = start(dx), start(dy)
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    video[:] = BACKGROUND
    for f in range(frames):
        step = min(speed * f, hi - lo)
        video[f][shape_mask(shape, cx + dx * step, cy + dy * step, r, size)] = COLORS[color]
    return Clip(color, shape, direction, video)


def sample_clip(rng: np.random.Generator, combos=SEEN, frames: int = FRAMES) -> Clip:
    color, shape, direction = combos[rng.integers(len(combos))]
    return render_clip(color, shape, direction, rng, frames)
