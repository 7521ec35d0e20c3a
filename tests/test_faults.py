"""Faults while writing: a full disk mid-video and SIGTERM during the VAE decode leave no partial output and a
checkpoint that resumes to the same video."""

from __future__ import annotations

import errno
import os
import signal

import pytest
from helpers import cli

import vidiff.export
from vidiff.pipeline import VideoPipeline

ARGS = ["a red circle moving right", "--frames", "8", "--steps", "3", "--seed", "5", "--quiet"]


@pytest.fixture
def whole(tmp_path_factory):
    """The uninterrupted video."""
    out = tmp_path_factory.mktemp("whole") / "clip.mp4"
    assert cli("generate", *ARGS, "-o", out) == 0
    return out.read_bytes()


@pytest.fixture
def sigterm_handler():
    """main() installs its SIGTERM handler in this process; put the old one back afterwards."""
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def test_full_disk_mid_video_leaves_nothing_partial_and_a_checkpoint(tmp_path, monkeypatch, capsys, whole):
    written = []

    def add(self, frame):
        if len(written) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(frame)

    monkeypatch.setattr(vidiff.export._Mp4, "add", add)
    out = tmp_path / "clip.mp4"
    assert cli("generate", *ARGS, "-o", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--output: writing" in err and "No space left on device" in err
    checkpoint = tmp_path / "clip.mp4.resume.safetensors"
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.name]  # no partial video, no temporary
    assert f"--resume {checkpoint}" in err
    monkeypatch.undo()
    assert cli("generate", "--resume", checkpoint, "-o", out, "--quiet") == 0
    assert out.read_bytes() == whole
    assert not checkpoint.exists()  # the run it kept is complete


def test_sigterm_during_decode_leaves_a_resumable_checkpoint(tmp_path, monkeypatch, capsys, whole, sigterm_handler):
    decode = VideoPipeline.decode

    def decode_then_sigterm(self, latents, chunk_size=8, timings=None):
        for i, frames in enumerate(decode(self, latents, chunk_size, timings)):
            if i == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # as a cluster scheduler stops a job
            yield frames

    monkeypatch.setattr(VideoPipeline, "decode", decode_then_sigterm)
    out = tmp_path / "clip.mp4"
    assert cli("generate", *ARGS, "-o", out, "--decode-chunk-size", "2") == 130
    err = capsys.readouterr().err
    checkpoint = tmp_path / "clip.mp4.resume.safetensors"
    assert f"resume with: vidiff generate --resume {checkpoint} -o {out}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.name]
    monkeypatch.undo()
    assert cli("generate", "--resume", checkpoint, "-o", out, "--quiet") == 0  # the command as printed
    assert out.read_bytes() == whole
