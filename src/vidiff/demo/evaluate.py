"""Classical analysis of a generated clip (no learned model): colour, shape, direction, coherence.

Foreground is what differs from the background colour (the median of the border pixels). Per frame the
largest connected component is the object: its mean colour names the colour (nearest palette entry), its
fill of its bounding box names the shape (square ~1, circle ~0.79, triangle ~0.5), and the least-squares
slope of its centroid track names the direction.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .data import COLORS, DIRECTIONS

FG_THRESHOLD = 60.0  # RGB distance from the background that counts as foreground
MIN_AREA = 12  # pixels; smaller specks are noise
MIN_TRAVEL = 4.0  # pixels over the clip, below which the object is static
SQUARE_FILL, CIRCLE_FILL = 0.89, 0.64  # bounding-box fill thresholds between the shapes


@dataclass(frozen=True)
class ClipReport:
    color: str | None
    shape: str | None
    direction: str | None  # None: no object, or it does not move
    coherent_frames: int  # frames where the object is one connected piece
    frames: int

    @property
    def coherence(self) -> float:
        return self.coherent_frames / self.frames


def _foreground(frame: np.ndarray) -> np.ndarray:
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]]).astype(np.float32)
    background = np.median(border, axis=0)
    return np.linalg.norm(frame.astype(np.float32) - background, axis=-1) > FG_THRESHOLD


def _shape(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    return "square" if fill >= SQUARE_FILL else "circle" if fill >= CIRCLE_FILL else "triangle"


def analyse(video: np.ndarray) -> ClipReport:
    """Report on a clip (F, H, W, 3) uint8."""
    palette = np.array(list(COLORS.values()), dtype=np.float32)
    colors, shapes, track = [], [], []
    coherent = 0
    for f, frame in enumerate(video):
        labels, count = ndimage.label(_foreground(frame))
        areas = np.bincount(labels.ravel())[1:]
        pieces = int((areas >= MIN_AREA).sum())
        if pieces == 0:
            continue
        coherent += pieces == 1
        mask = labels == 1 + int(areas.argmax())
        mean = frame[mask].astype(np.float32).mean(axis=0)
        colors.append(list(COLORS)[int(np.linalg.norm(palette - mean, axis=1).argmin())])
        shapes.append(_shape(mask))
        ys, xs = np.nonzero(mask)
        track.append((f, xs.mean(), ys.mean()))
    if not track:
        return ClipReport(None, None, None, 0, len(video))
    return ClipReport(
        Counter(colors).most_common(1)[0][0],
        Counter(shapes).most_common(1)[0][0],
        _direction(track),
        coherent,
        len(video),
    )


def _direction(track: list[tuple[int, float, float]]) -> str | None:
    if len(track) < 2:
        return None
    t, x, y = (np.array(v, dtype=np.float64) for v in zip(*track, strict=True))
    span = t.max() - t.min()
    dx, dy = np.polyfit(t, x, 1)[0] * span, np.polyfit(t, y, 1)[0] * span
    if max(abs(dx), abs(dy)) < MIN_TRAVEL:
        return None
    move = (int(np.sign(dx)), 0) if abs(dx) >= abs(dy) else (0, int(np.sign(dy)))
    return next(name for name, d in DIRECTIONS.items() if d == move)


@dataclass(frozen=True)
class LongClipReport:
    """A long clip as a whole and in consecutive stretches (e.g. one context window of frames each)."""

    whole: ClipReport
    stretches: list[ClipReport]

    @property
    def moving(self) -> float:
        """Fraction of stretches in which the object travels."""
        return sum(r.direction is not None for r in self.stretches) / len(self.stretches)

    @property
    def direction_consistency(self) -> float:
        """Fraction of stretches moving the way the whole clip does."""
        return sum(r.direction == self.whole.direction for r in self.stretches) / len(self.stretches)


def analyse_long(video: np.ndarray, stretch: int = 16) -> LongClipReport:
    """Report on a clip (F, H, W, 3) and on each run of `stretch` frames (the last may be shorter)."""
    return LongClipReport(analyse(video), [analyse(video[i : i + stretch]) for i in range(0, len(video), stretch)])


@dataclass(frozen=True)
class Result:
    combo: tuple[str, str, str]  # (color, shape, direction) prompted
    seed: int
    report: ClipReport
    seconds: float  # generation and decoding of this clip


def evaluate(pipe, combos, seeds, progress: bool = True, **options) -> list[Result]:
    """Generate one clip per (combination, seed) with `pipe` and analyse each."""
    import time

    from tqdm.auto import tqdm

    from .data import caption

    results = []
    jobs = [(c, s) for c in combos for s in seeds]
    for combo, seed in tqdm(jobs, desc="clips", disable=not progress):
        start = time.perf_counter()
        video = pipe(caption(*combo), seed=seed, progress=False, **options).frames[0]  # (F, H, W, 3)
        results.append(Result(combo, seed, analyse(video), time.perf_counter() - start))
    return results


def summarize(results: list[Result]) -> dict[str, float]:
    """Accuracy of colour, shape and direction, all three at once, and the coherent-frame fraction."""
    n = max(len(results), 1)
    hits = {k: 0 for k in ("color", "shape", "direction", "all")}
    for r in results:
        got = (r.report.color, r.report.shape, r.report.direction)
        for i, key in enumerate(("color", "shape", "direction")):
            hits[key] += got[i] == r.combo[i]
        hits["all"] += got == r.combo
    frames = sum(r.report.frames for r in results) or 1
    out = {k: v / n for k, v in hits.items()}
    out["coherent"] = sum(r.report.coherent_frames for r in results) / frames
    out["clips"] = len(results)
    out["s_per_clip"] = sum(r.seconds for r in results) / n
    return out


def noise_independence(results: list[Result]) -> tuple[float, int]:
    """Does the prompt or the noise decide the motion? Over the (colour, shape, seed) groups whose four direction
    prompts were all generated (each seed is one initial noise): the fraction where the four clips move four
    different ways, and the number of groups. A model that reads its direction off the noise scores about 0."""
    groups: dict[tuple, dict[str, str | None]] = {}
    for r in results:
        color, shape, direction = r.combo
        groups.setdefault((color, shape, r.seed), {})[direction] = r.report.direction
    whole = [g for g in groups.values() if len(g) == len(DIRECTIONS)]
    apart = sum(None not in g.values() and len(set(g.values())) == len(DIRECTIONS) for g in whole)
    return apart / max(len(whole), 1), len(whole)


def table(rows: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per (mode, split)."""
    head = f"{'':24} {'clips':>5} {'color':>6} {'shape':>6} {'dir':>6} {'all':>6} {'coherent':>9} {'s/clip':>7}"
    lines = [head]
    for name, m in rows.items():
        lines.append(
            f"{name:24} {m['clips']:5d} {m['color']:6.1%} {m['shape']:6.1%} {m['direction']:6.1%} "
            f"{m['all']:6.1%} {m['coherent']:9.1%} {m['s_per_clip']:7.2f}"
        )
    return "\n".join(lines)
