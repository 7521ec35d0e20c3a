"""The memory preflight: its estimate against measured peaks, and the refusal (with what would fit) or --force."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import cli

from vidiff import GenerationRequest, RenderJob, preflight
from vidiff.renderer import Renderer

FACTOR = 2.0  # the estimate (weights + denoising + decoding) is within this factor of the measured peak


MEASURE = """
import json, sys
from vidiff import GenerationRequest, LoadSettings, RenderJob
from vidiff.renderer import Renderer
size, frames, extra = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])  # extra: dtype, model
request = GenerationRequest("a red circle moving right", frames=frames, steps=2, seed=0, height=size, width=size)
job = RenderJob(request, output=sys.argv[4], load=LoadSettings(**extra))
renderer = Renderer()
est = renderer.preflight(job)
result = renderer.render(job)
print(json.dumps([est.weights, est.denoise + est.decode, result.weights_bytes, result.peak_bytes]))
"""


@pytest.mark.parametrize(
    "dtype, model, size, frames",
    [("float32", "demo", 64, 16), ("float32", "demo", 128, 16), ("float32", "demo", 64, 40),
     ("float32", "tiny", 128, 16), ("bfloat16", "demo", 64, 16), ("bfloat16", "demo", 128, 16),
     ("bfloat16", "tiny", 128, 16)],
)  # fmt: skip
def test_estimate_is_near_the_measured_peak(tmp_path, sd1_folder, adapter_folder, dtype, model, size, frames):
    """Measured in a fresh process (an allocator that ran before reuses its memory): the loaded weights plus
    the highest resident set above them while denoising and decoding; 40 frames run in windows of 16. The dtype
    is pinned, so the case is the same on every CPU (`auto` would pick bfloat16 on some)."""
    extra = {"dtype": dtype}
    extra |= {} if model == "demo" else {"model": str(sd1_folder), "motion_module": str(adapter_folder)}
    argv = [sys.executable, "-c", MEASURE, str(size), str(frames), json.dumps(extra), str(tmp_path / "clip.mp4")]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    est_weights, est_working, weights, working = json.loads(proc.stdout.strip().splitlines()[-1])
    estimated, measured = est_weights + est_working, weights + working
    mib = 2**20
    print(
        f"{dtype} {model} {size}px {frames} frames: estimate {estimated / mib:.0f} MiB, measured {measured / mib:.0f}"
    )
    assert abs(est_weights - weights) <= 0.05 * weights  # weights from the files' headers
    assert measured / FACTOR <= estimated <= measured * FACTOR


def test_refused_with_what_would_fit_unless_forced(tmp_path, monkeypatch, capsys):
    """With less memory free than the estimate the run is refused before loading, naming the options that would
    fit; --force runs it anyway. (The free memory is set: half the decoding estimate short of the total.)"""
    import vidiff.renderer

    monkeypatch.setattr(vidiff.renderer, "current_bytes", lambda device: 0)
    request = GenerationRequest("a red circle", frames=8, steps=1, height=128, width=128)
    est = Renderer().preflight(RenderJob(request, output=str(tmp_path / "o.mp4")))
    monkeypatch.setattr(preflight, "free_bytes", lambda device: est.total - est.decode // 2)
    args = ["generate", "a red circle", "--frames", "8", "--height", "128", "--width", "128", "--steps", "1",
            "-o", tmp_path / "o.mp4", "--quiet"]  # fmt: skip
    assert cli(*args) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("vidiff: error: --force: this run needs about") and "GiB is free" in line
    assert "would fit: --decode-chunk-size 1" in line
    assert not any(tmp_path.iterdir())
    assert cli(*args, "--decode-chunk-size", "1") == 0  # the option it named fits
    assert cli(*args, "--force", "-o", tmp_path / "forced.mp4") == 0
    assert (tmp_path / "forced.mp4").is_file()
