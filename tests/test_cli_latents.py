"""Latents on the command line: save, cooperative denoising across models, decode, image seeds, kill + resume."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import cli, source_and_mask
from PIL import Image

from vidiff.cli import main
from vidiff.latents_io import load_latents
from vidiff.tiny import save_tiny_sd1

FAST = [
    "--frames",
    "8",
    "--steps",
    "6",
    "--height",
    "64",
    "--width",
    "64",
    "--seed",
    "2",
    "--quiet",
    "--dtype",
    "float32",
]


@pytest.fixture
def model(sd1_folder, original_files):
    return ["--model", str(sd1_folder), "--motion-module", str(original_files["safetensors"])]


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A second SD 1.x model of the same latent family (other weights)."""
    return save_tiny_sd1(tmp_path_factory.mktemp("other") / "model", seed=7, motion_adapter=True)


def test_split_across_the_cli_equals_one_run(tmp_path, model):
    assert cli("generate", "a cat", *model, *FAST, "--scheduler", "dpm++2m", "-o", tmp_path / "whole.safetensors") == 0
    assert cli("generate", "a cat", *model, *FAST, "--scheduler", "dpm++2m", "--denoising-end", "0.5",
               "-o", tmp_path / "half.safetensors") == 0  # fmt: skip
    seeds = f"latents: {tmp_path / 'half.safetensors'}"
    assert cli("generate", "a cat", *model, *FAST, "--scheduler", "dpm++2m", "--denoising-start", "0.5",
               "--image-seeds", seeds, "-o", tmp_path / "rest.safetensors") == 0  # fmt: skip
    whole, rest = load_latents(tmp_path / "whole.safetensors"), load_latents(tmp_path / "rest.safetensors")
    assert (whole.latents - rest.latents).abs().max() <= 1e-5
    half = load_latents(tmp_path / "half.safetensors").meta
    assert (half.denoised, half.scheduler, half.frames, half.seed, half.prompt) == (0.5, "dpm++2m", 8, 2, "a cat")


def test_cooperative_denoising_across_models(tmp_path, model, other_model):
    """Model A runs 0 -> 0.6 and saves a plain .pt (dgenerate style); model B finishes with its own prompt."""
    assert cli("generate", "a cat", *model, *FAST, "--scheduler", "euler", "--denoising-end", "0.6",
               "-o", tmp_path / "a.pt") == 0  # fmt: skip
    assert cli("generate", "a dog", "--model", other_model, *FAST, "--scheduler", "euler", "--denoising-start", "0.6",
               "--image-seeds", f"latents= {tmp_path / 'a.pt'}", "-o", tmp_path / "b.gif") == 0  # fmt: skip
    with Image.open(tmp_path / "b.gif") as gif:
        assert gif.n_frames == 8
    assert cli("decode", tmp_path / "a.pt", "-o", tmp_path / "a.mp4", "--model", other_model) == 0
    assert (tmp_path / "a.mp4").stat().st_size > 0


def test_frames_and_size_come_from_the_latents_file(tmp_path, model):
    assert cli("generate", "a cat", *model, "--frames", "4", "--steps", "4", "--height", "48", "--width", "40",
               "--denoising-end", "0.5", "--quiet", "-o", tmp_path / "a.safetensors") == 0  # fmt: skip
    assert cli("generate", "a cat", *model, "--steps", "4", "--denoising-start", "0.5", "--quiet",
               "--image-seeds", f"latents: {tmp_path / 'a.safetensors'}", "-o", tmp_path / "b.gif") == 0  # fmt: skip
    with Image.open(tmp_path / "b.gif") as gif:
        assert (gif.n_frames, gif.size) == (4, (40, 48))


def test_video_to_video_and_inpainting_from_files(tmp_path, model):
    seeds = source_and_mask(tmp_path)
    assert cli("generate", "a cat", *model, *FAST, "--image-seeds", tmp_path / "src.gif", "--image-seed-strength",
               "0.5", "-o", tmp_path / "v2v.mp4") == 0  # fmt: skip
    assert cli("generate", "a cat", *model, *FAST, "--image-seeds", seeds, "-o", tmp_path / "inpaint.pt") == 0
    assert cli("generate", "a cat", *model, *FAST, "--image-seeds", tmp_path / "inpaint.pt",
               "--image-seed-strength", "0.3", "-o", tmp_path / "from-latents.gif") == 0  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ("", "malformed spec"),
        ("a.png;;mask=b.png", "empty part"),
        ("a.png;colour=red", "is not mask=, latents=, control= or adapter="),
        ("mask=m.png", "a mask needs an image"),
        ("latents: ", "names no file"),
        ("missing.png", "no such file"),
    ],
)
def test_malformed_image_seeds(tmp_path, model, capsys, spec, text):
    (tmp_path / "a.png").write_bytes(b"")
    assert cli("generate", "x", *model, *FAST, "--image-seeds", spec, "-o", tmp_path / "o.gif") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--image-seeds" in err and text in err


def test_frame_count_and_channel_mismatches(tmp_path, model, capsys):
    frames = [Image.new("RGB", (64, 64), (i * 20, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "short.gif", save_all=True, append_images=frames[1:])
    assert cli("generate", "x", *model, *FAST, "--image-seeds", tmp_path / "short.gif", "-o", tmp_path / "o.gif") == 2
    assert "short.gif has 3 frames; --frames is 8" in capsys.readouterr().err
    torch.save(torch.zeros(1, 16, 8, 8, 8), tmp_path / "sd3.pt")
    assert cli("generate", "x", *model, *FAST, "--image-seeds", f"latents: {tmp_path / 'sd3.pt'}",
               "--denoising-start", "0.5", "-o", tmp_path / "o.gif") == 2  # fmt: skip
    assert "sd3.pt has 16 latent channels" in capsys.readouterr().err
    assert not (tmp_path / "o.gif").exists()


def test_kill_mid_run_then_resume_equals_uninterrupted(tmp_path, sd1_folder, original_files):
    args = ["generate", "a cat", "--model", str(sd1_folder), "--motion-module", str(original_files["ckpt"]),
            "--frames", "8", "--steps", "300", "--height", "64", "--width", "64", "--seed", "5", "--quiet",
            "--scheduler", "dpm++2m"]  # fmt: skip
    out = tmp_path / "run.safetensors"
    checkpoint = tmp_path / "run.safetensors.resume.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "vidiff", *args, "--checkpoint-every", "3", "-o", str(out)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"resume with: vidiff generate --resume {checkpoint}" in err
    assert not out.exists()
    saved = load_latents(checkpoint)
    assert 0 < saved.meta.step < 300 and saved.meta.step % 3 == 0
    assert main([*args, "--resume", str(checkpoint), "-o", str(out)]) == 0
    assert main([*args, "-o", str(tmp_path / "whole.safetensors")]) == 0
    resumed, whole = load_latents(out), load_latents(tmp_path / "whole.safetensors")
    assert (resumed.latents - whole.latents).abs().max() <= 1e-5
    assert not checkpoint.exists()  # removed once the run completed
