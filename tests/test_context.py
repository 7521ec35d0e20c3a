"""Context windows and FreeNoise: windows cover and fuse every frame, short videos untouched, noise as diffusers."""

from __future__ import annotations

import pytest
import torch
from diffusers import AnimateDiffPipeline, MotionAdapter, SD3Transformer2DModel
from helpers import LATENT

from vidiff import GenerationRequest, InvalidArgument, PABConfig, VideoPipeline
from vidiff.adapters.base import Conditioning, VideoDenoiser
from vidiff.adapters.context import ContextOptions, ContextWindowDenoiser, windows
from vidiff.motion.sd3_temporal import SD3TemporalLayers
from vidiff.schedules import make_scheduler


class Ones(VideoDenoiser):
    """Predicts 1 everywhere: fused windows must give exactly 1 on every frame."""

    latent_channels, max_frames = 4, 16

    @property
    def module(self):
        return torch.nn.Linear(1, 1)

    def predict(self, latents, t, cond):
        return torch.ones_like(latents)


@pytest.mark.parametrize("schedule", ["uniform", "looped", "static"])
@pytest.mark.parametrize("fuse", ["flat", "pyramid", "gauss", "delayed_reverse_sawtooth"])
@pytest.mark.parametrize(("frames", "overlap"), [(20, 4), (33, 0), (40, 8), (64, 15)])
def test_windows_cover_every_frame_and_fuse_to_one(schedule, fuse, frames, overlap):
    found = windows(frames, 16, 16 - overlap, schedule)
    assert all(len(w) == 16 for w in found)
    assert set().union(*found) == set(range(frames))
    if schedule == "looped":
        assert any(w[0] > w[-1] for w in found)  # a window wraps from the end to the start
    wrapped = ContextWindowDenoiser(Ones(), ContextOptions(overlap=overlap, schedule=schedule, fuse=fuse))
    out = wrapped.predict(torch.zeros(1, 4, frames, 2, 2), torch.tensor(1), Conditioning(torch.zeros(1, 1, 1)))
    assert torch.allclose(out, torch.ones_like(out), atol=1e-6)


def test_a_window_at_least_the_video_equals_the_plain_run(motion_pipe):
    opts = LATENT | dict(frames=8, steps=3, seed=2)
    assert torch.equal(motion_pipe("a cat", **opts).latents, motion_pipe("a cat", context_length=16, **opts).latents)


@pytest.mark.parametrize("scope", ["backbone", "motion"])
def test_a_video_longer_than_the_table_runs_in_windows_with_pab(motion_pipe, scope):
    assert motion_pipe.denoiser.max_frames == 32
    with pytest.raises(InvalidArgument, match="--frames: 40 frames exceed"):  # a window longer than the table
        motion_pipe.resolve(GenerationRequest.from_options("a cat", frames=40, context_length=40))
    (pab,) = motion_pipe.enable_cache(PABConfig())
    try:
        out = motion_pipe("a cat", context_scope=scope, **(LATENT | dict(frames=40, steps=4, seed=1))).latents
    finally:
        motion_pipe.disable_cache()
    assert out.shape[2] == 40 and torch.isfinite(out).all()
    assert pab.state.reused["temporal"] > 0  # cached per window (call position)


@pytest.mark.parametrize("stride", [4, 8])
def test_shuffled_noise_equals_diffusers_free_noise(sd1_folder, adapter_folder, motion_pipe, stride):
    ref = AnimateDiffPipeline.from_pretrained(sd1_folder, motion_adapter=MotionAdapter.from_pretrained(adapter_folder))
    ref.enable_free_noise(context_length=16, context_stride=stride, noise_type="shuffle_context")
    want = ref._prepare_latents_free_noise(1, 4, 44, 64, 64, torch.float32, "cpu", torch.Generator().manual_seed(5))
    ours = ContextWindowDenoiser(motion_pipe.denoiser, ContextOptions(length=16, stride=stride, noise="shuffle"))
    got = ours.initial_noise((1, 4, 44, 8, 8), torch.Generator().manual_seed(5), "cpu", torch.float32)
    assert torch.equal(got, want)
    repeat = ContextWindowDenoiser(motion_pipe.denoiser, ContextOptions(noise="repeat"))
    noise = repeat.initial_noise((1, 4, 40, 8, 8), torch.Generator().manual_seed(5), "cpu", torch.float32)
    assert torch.equal(noise[:, :, 16:32], noise[:, :, :16]) and torch.equal(noise[:, :, 32:], noise[:, :, :8])


FREE_NOISE_ATOL = 1e-4  # max abs latent difference allowed in float32 (as the plain parity tests)


@pytest.mark.parametrize("fuse", ["pyramid", "flat", "delayed_reverse_sawtooth"])
def test_motion_scope_equals_diffusers_free_noise(sd1_folder, adapter_folder, motion_pipe, fuse):
    """24 frames, windows of 16 every 4 frames (they tile the video), shuffled noise, guidance on."""
    ref = AnimateDiffPipeline.from_pretrained(sd1_folder, motion_adapter=MotionAdapter.from_pretrained(adapter_folder))
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = make_scheduler("ddim", dict(ref.scheduler.config))
    ref.enable_free_noise(context_length=16, context_stride=4, weighting_scheme=fuse, noise_type="shuffle_context")
    want = ref("a cat", num_frames=24, height=64, width=64, num_inference_steps=3, guidance_scale=7.5,
               generator=torch.Generator().manual_seed(4), output_type="latent").frames  # fmt: skip
    opts = LATENT | dict(frames=24, steps=3, seed=4, context_length=16, context_stride=4, noise_type="shuffle")
    got = motion_pipe("a cat", context_fuse=fuse, context_scope="motion", **opts).latents
    assert (got - want).abs().max() < FREE_NOISE_ATOL
    whole = motion_pipe("a cat", context_fuse=fuse, **opts).latents  # the backbone scope differs, as it should
    assert (whole - want).abs().max() > 100 * FREE_NOISE_ATOL


def test_motion_scope_on_sd3_temporal_layers(sd3_folder, tmp_path):
    """SD 3 mixes frames only in its temporal attention, so windows that do not overlap (static) give the same
    video whether the whole backbone or only that attention runs per window; overlapping ones differ."""
    transformer = SD3Transformer2DModel.from_pretrained(sd3_folder / "transformer")
    layers = SD3TemporalLayers.for_transformer(transformer, blocks=[0, 1], max_frames=8)
    for layer in layers.layers.values():
        torch.nn.init.normal_(layer.to_out.weight, std=0.5)
    layers.save(tmp_path / "t.safetensors")
    pipe = VideoPipeline.from_pretrained(
        str(sd3_folder), motion_module=str(tmp_path / "t.safetensors"), dtype="float32"
    )
    opts = LATENT | dict(frames=12, steps=2, seed=3, context_length=4, context_overlap=2)

    def run(**kw):
        return pipe("a cat", **(opts | kw)).latents

    static = run(context_schedule="static", context_scope="motion")
    assert (static - run(context_schedule="static")).abs().max() < 1e-5
    assert (run(context_scope="motion") - run()).abs().max() > 1e-3
    assert (static - run(context_schedule="static", context_length=6)).abs().max() > 1e-3  # windows split frames


def test_bad_context_options(motion_pipe, latte_folder, sd1_folder):
    opts = LATENT | dict(frames=40, steps=1, seed=1)
    with pytest.raises(InvalidArgument, match="--context-overlap: must be in"):
        motion_pipe("a cat", context_overlap=16, **opts)
    with pytest.raises(InvalidArgument, match="--context-schedule: unknown"):
        motion_pipe("a cat", context_schedule="spiral", **opts)
    latte = VideoPipeline.from_pretrained(str(latte_folder), dtype="float32")
    with pytest.raises(InvalidArgument, match="--context-length: context windows need"):
        latte("a cat", context_length=2, **(LATENT | dict(frames=4, steps=1)))
    image = VideoPipeline.from_pretrained(str(sd1_folder), mode="sequential", dtype="float32")
    with pytest.raises(InvalidArgument, match="--context-length"):
        image("a cat", context_length=4, **opts)
