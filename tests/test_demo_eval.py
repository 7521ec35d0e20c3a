"""The evaluator on clips with known truth: every combination, a wrong-way clip, an empty clip, two objects."""

from __future__ import annotations

import numpy as np
import pytest

from vidiff.demo.data import ALL_COMBOS, BACKGROUND, COLORS, HELD_OUT, SEEN, render_clip, shape_mask
from vidiff.demo.evaluate import Result, analyse, analyse_long, noise_independence


def test_held_out_split():
    assert len(HELD_OUT) >= 0.1 * len(ALL_COMBOS)
    assert set(HELD_OUT) <= set(ALL_COMBOS) and not set(HELD_OUT) & set(SEEN)
    for i in range(3):  # every colour, shape and direction is still seen in training
        assert {c[i] for c in SEEN} == {c[i] for c in ALL_COMBOS}


@pytest.mark.parametrize("combo", ALL_COMBOS)
def test_every_combination_is_read_back(combo):
    rng = np.random.default_rng(hash(combo) % 2**32)
    for _ in range(2):
        clip = render_clip(*combo, rng)
        assert clip.frames.shape == (16, 64, 64, 3)
        report = analyse(clip.frames)
        assert (report.color, report.shape, report.direction) == combo
        assert report.coherent_frames == 16


def test_a_clip_played_backwards_moves_the_other_way():
    clip = render_clip("red", "circle", "right", np.random.default_rng(0))
    assert analyse(clip.frames[::-1]).direction == "left"
    clip = render_clip("blue", "square", "up", np.random.default_rng(1))
    assert analyse(clip.frames[::-1]).direction == "down"


def test_no_object():
    empty = np.full((16, 64, 64, 3), BACKGROUND, dtype=np.uint8)
    report = analyse(empty)
    assert (report.color, report.shape, report.direction, report.coherent_frames) == (None, None, None, 0)


def test_a_static_object_has_no_direction():
    clip = render_clip("green", "triangle", "left", np.random.default_rng(2))
    still = np.repeat(clip.frames[:1], 16, axis=0)
    assert analyse(still).direction is None


def test_a_split_object_is_not_coherent():
    frames = np.full((16, 64, 64, 3), BACKGROUND, dtype=np.uint8)
    for f in range(16):
        frames[f][shape_mask("circle", 12 + 2 * f, 16, 6)] = COLORS["white"]
        if f % 2:
            frames[f][shape_mask("square", 12 + 2 * f, 48, 6)] = COLORS["white"]
    report = analyse(frames)
    assert report.coherent_frames == 8 and report.direction == "right"


def test_a_long_clip_is_read_per_stretch():
    """64 frames: a circle moves right for 48 frames, then stops: 3 of 4 stretches move, all of them right."""
    frames = np.full((64, 64, 64, 3), BACKGROUND, dtype=np.uint8)
    for f in range(64):
        frames[f][shape_mask("circle", 8 + min(f, 47), 32, 6)] = COLORS["red"]
    report = analyse_long(frames, 16)
    assert report.whole.direction == "right" and report.whole.coherent_frames == 64
    assert [r.direction for r in report.stretches] == ["right", "right", "right", None]
    assert report.moving == 0.75 and report.direction_consistency == 0.75


def test_noise_independence_counts_noises_whose_four_prompts_move_four_ways():
    """Ground-truth clips: per (colour, shape, seed), the four direction prompts. Truth moves four ways (1.0);
    a model that moves every prompt the same way for one noise scores 0; incomplete groups are not counted."""
    rng = np.random.default_rng(0)

    def results(direction_of):
        out = []
        for seed in range(3):
            for d in ("left", "right", "up", "down"):
                clip = render_clip("red", "circle", direction_of(d, seed), rng)
                out.append(Result(("red", "circle", d), seed, analyse(clip.frames), 0.0))
        return out

    assert noise_independence(results(lambda d, seed: d)) == (1.0, 3)
    same = results(lambda d, seed: ("left", "right", "up")[seed])  # the noise decides
    assert noise_independence(same) == (0.0, 3)
    assert noise_independence(same[:7]) == (0.0, 1)  # seed 1 lacks a prompt


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_crossing_clips_go_edge_to_edge(direction):
    """`--data demo-crossing`: the direction word alone fixes the track along its axis (first frame at one
    edge, last at the other), whatever the seed; the evaluator reads them like any clip."""
    from vidiff.train.data import open_data

    tracks = []
    for seed in range(3):
        clip = render_clip("red", "circle", direction, np.random.default_rng(seed), crossing=True)
        assert analyse(clip.frames).direction == direction
        mask = (clip.frames != BACKGROUND).any(-1)  # (F, H, W)
        across = 0 if direction in ("left", "right") else 1  # columns (x) or rows (y) where the object is
        centres = [np.nonzero(m.any(across))[0].mean() for m in mask]  # along the travel axis, per frame
        tracks.append(np.array(centres))
    first, last = (0, -1) if direction in ("right", "down") else (-1, 0)
    assert all(t[first] < 12 and t[last] > 51 for t in tracks)  # 64 pixels: near one edge, then the other
    assert np.abs(tracks[0] - tracks[1]).max() < 4  # the same track up to the object's size
    videos, captions = open_data("demo-crossing", 16, 64).clips(np.random.default_rng(0), 2)
    assert videos.shape == (2, 16, 3, 64, 64) and all(c.startswith("a ") for c in captions)
