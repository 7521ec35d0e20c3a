"""Sequential frame mode: frames independent, from shared noise; equal to diffusers' image pipeline per frame."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from helpers import LATENT

from vidiff import VideoPipeline
from vidiff.errors import InvalidArgument

OPTS = LATENT | dict(frames=4, steps=4, seed=9)
ATOL = 1e-4


@pytest.fixture(scope="module")
def seq(sd1_folder) -> VideoPipeline:
    return VideoPipeline.from_pretrained(str(sd1_folder), mode="sequential", dtype="float32")


def test_frames_share_base_noise_plus_a_small_perturbation(seq):
    noise = seq.denoiser.initial_noise((1, 4, 16, 8, 8), torch.Generator().manual_seed(0), "cpu", torch.float32)
    spread = (noise - noise.mean(dim=2, keepdim=True)).std().item()
    assert 0.03 < spread < 0.07  # --frame-noise 0.05
    assert 0.8 < noise.std().item() < 1.2


def test_frames_are_independent(seq):
    latents = torch.randn(1, 4, 4, 8, 8)
    cond = seq.prompt_encoder(["a cat"])
    with torch.no_grad():
        base = seq.denoiser.predict(latents, torch.tensor(500), cond)
        moved = latents.clone()
        moved[:, :, 0] += 1.0
        other = seq.denoiser.predict(moved, torch.tensor(500), cond)
    assert torch.allclose(other[:, :, 1:], base[:, :, 1:], atol=1e-6)
    assert not torch.allclose(other[:, :, 0], base[:, :, 0])


def test_batched_equals_one_at_a_time(sd1_folder, seq):
    one = VideoPipeline.from_pretrained(str(sd1_folder), mode="sequential", frame_batch=1, dtype="float32")
    a = seq("a cat", scheduler="dpm++2m", **OPTS).latents
    b = one("a cat", scheduler="dpm++2m", **OPTS).latents
    assert (a - b).abs().max().item() <= ATOL  # float32 GEMMs round differently by batch size (seen: 2e-5)


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_each_frame_equals_diffusers_image_pipeline(sd1_folder, seq, guidance):
    ours = seq("a cat", guidance_scale=guidance, **OPTS).latents  # (1, 4, F, 8, 8)
    ref = StableDiffusionPipeline.from_pretrained(sd1_folder, safety_checker=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = type(ref.scheduler).from_config(ref.scheduler.config)
    start = seq.denoiser.initial_noise((1, 4, 4, 8, 8), torch.Generator("cpu").manual_seed(9), "cpu", torch.float32)
    for f in range(4):
        want = ref(
            "a cat", num_inference_steps=4, guidance_scale=guidance, latents=start[:, :, f], output_type="latent",
            height=64, width=64,
        ).images  # fmt: skip
        assert (ours[:, :, f] - want).abs().max().item() <= ATOL


def test_bad_frame_batch(sd1_folder):
    with pytest.raises(InvalidArgument, match="--frame-batch"):
        VideoPipeline.from_pretrained(str(sd1_folder), mode="sequential", frame_batch=0, dtype="float32")
