"""--motion-scale: 0 is the image UNet alone on every frame (exact), 1 the plain run, between moves between."""

from __future__ import annotations

import pytest
import torch
from helpers import LATENT

from vidiff import InvalidArgument, VideoPipeline
from vidiff.adapters import UNetFramesDenoiser

OPTS = LATENT | dict(frames=6, steps=4, seed=5)


def test_zero_is_the_image_model_and_one_the_plain_run(motion_pipe, sd1_folder):
    plain = motion_pipe("a cat", **OPTS).latents
    assert torch.equal(motion_pipe("a cat", motion_scale=1.0, **OPTS).latents, plain)
    zero = motion_pipe("a cat", motion_scale=0.0, **OPTS).latents
    half = motion_pipe("a cat", motion_scale=0.5, **OPTS).latents
    image = VideoPipeline.from_pretrained(str(sd1_folder), mode="sequential", dtype="float32")
    image.denoiser = UNetFramesDenoiser(image.denoiser.image.unet)  # frames alone, from the same noise as `plain`
    alone = image("a cat", **OPTS).latents
    # Not bit-exact: the motion UNet embeds the timestep once per video and repeats it per frame, the image UNet
    # once per frame (another GEMM shape, ~1e-7 apart); the motion modules themselves are exact, below.
    assert (zero - alone).abs().max() <= 1e-5 * alone.abs().max()  # relative 1e-5 after 4 steps
    assert not torch.equal(plain, alone)
    assert (half - plain).abs().max() > 0 and (half - zero).abs().max() > 0
    assert torch.equal(motion_pipe("a cat", **OPTS).latents, plain)  # the hooks are gone after the run


def test_bad_motion_scale(motion_pipe, sd1_folder):
    with pytest.raises(InvalidArgument, match="--motion-scale: must be a finite number"):
        motion_pipe("a cat", motion_scale=float("nan"), **OPTS)
    image = VideoPipeline.from_pretrained(str(sd1_folder), mode="sequential", dtype="float32")
    with pytest.raises(InvalidArgument, match="--motion-scale: needs AnimateDiff motion modules"):
        image("a cat", motion_scale=0.5, **OPTS)


def test_at_zero_every_motion_module_returns_its_input(motion_pipe):
    seen = []
    modules = [m for n, m in motion_pipe.denoiser.module.named_modules() if n.split(".")[-2:-1] == ["motion_modules"]]
    hooks = motion_pipe.denoiser.scale_motion(0.0)
    checks = [m.register_forward_hook(lambda _m, args, out: seen.append(torch.equal(args[0], out))) for m in modules]
    with torch.no_grad():
        motion_pipe.denoiser.predict(torch.randn(1, 4, 6, 8, 8), torch.tensor(500), motion_pipe.prompt_encoder(["x"]))
    for handle in hooks + checks:
        handle.remove()
    assert len(seen) == len(modules) > 0 and all(seen)
