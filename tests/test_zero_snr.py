"""Zero terminal SNR (Lin et al. 2024) end to end: a model folder's `rescale_betas_zero_snr` is kept, sampled with
trailing spacing, and `guidance_rescale` rescales CFG; latents equal diffusers' on the same folder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler, EulerDiscreteScheduler, MotionAdapter, StableDiffusionPipeline
from helpers import LATENT

from vidiff import VideoPipeline
from vidiff.errors import InvalidArgument

ATOL = 1e-4  # max abs latent difference, float32
OPTS = LATENT | dict(frames=8, steps=4, seed=4, guidance_scale=7.5)


@pytest.fixture(scope="module")
def zero_snr_folder(sd1_folder, tmp_path_factory):
    """The tiny SD 1.x folder with a v-prediction, zero-terminal-SNR schedule and the folder's leading spacing
    (as SD 2.1-v fine-tunes ship it): vidiff must switch to trailing by itself."""
    folder = tmp_path_factory.mktemp("zsnr") / "model"
    shutil.copytree(sd1_folder, folder)
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config |= {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "leading"}
    path.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def ours(zero_snr_folder, adapter_folder):
    return VideoPipeline.from_pretrained(
        str(zero_snr_folder), motion_module=str(adapter_folder), dtype="float32", groupnorm="diffusers"
    )


@pytest.mark.parametrize("cls,name", [(DDIMScheduler, "ddim"), (EulerDiscreteScheduler, "euler")])
def test_latents_equal_animatediff_pipeline_with_the_same_zero_snr_scheduler(ours, zero_snr_folder, adapter_folder,
                                                                              cls, name):  # fmt: skip
    ref = AnimateDiffPipeline.from_pretrained(
        zero_snr_folder, motion_adapter=MotionAdapter.from_pretrained(adapter_folder)
    )
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = cls.from_config(ref.scheduler.config, timestep_spacing="trailing")
    assert ref.scheduler.config.rescale_betas_zero_snr
    want = ref(
        "a red circle moving right", num_frames=8, height=64, width=64, num_inference_steps=4, guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(4), output_type="latent",
    ).frames  # fmt: skip
    got = ours("a red circle moving right", scheduler=name, **OPTS).latents
    assert got.shape == want.shape == (1, 4, 8, 8, 8)
    assert (got - want).abs().max().item() <= ATOL
    leading = ours("a red circle moving right", scheduler=name, timestep_spacing="leading", **OPTS).latents
    assert (leading - want).abs().max().item() > 1e-2  # the spacing was switched, not left as the folder's


def test_sampling_starts_from_the_last_timestep(ours):
    seen = []
    ours("a red circle moving right", callback=lambda i, t, x: seen.append(int(t)), **OPTS)
    assert seen[0] == 999  # trailing: x_T is pure noise, and the first step is taken there


def test_guidance_rescale_equals_diffusers_image_pipeline_per_frame(zero_snr_folder):
    """Frame by frame, each frame equals StableDiffusionPipeline(guidance_rescale=0.7) from that frame's noise."""
    seq = VideoPipeline.from_pretrained(str(zero_snr_folder), mode="sequential", dtype="float32")
    opts = OPTS | dict(frames=3)
    ours = seq("a cat", guidance_rescale=0.7, **opts).latents  # (1, 4, 3, 8, 8)
    plain = seq("a cat", **opts).latents
    ref = StableDiffusionPipeline.from_pretrained(zero_snr_folder, safety_checker=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = DDIMScheduler.from_config(ref.scheduler.config, timestep_spacing="trailing")
    start = seq.denoiser.initial_noise((1, 4, 3, 8, 8), torch.Generator("cpu").manual_seed(4), "cpu", torch.float32)
    for f in range(3):
        want = ref(
            "a cat", num_inference_steps=4, guidance_scale=7.5, guidance_rescale=0.7, latents=start[:, :, f],
            output_type="latent", height=64, width=64,
        ).images  # fmt: skip
        assert (ours[:, :, f] - want).abs().max().item() <= ATOL
    assert (ours - plain).abs().max().item() > 1e-3  # the rescale acted


def test_guidance_rescale_on_a_video_takes_statistics_over_the_whole_video(ours):
    """Motion mode: diffusers' AnimateDiff-SDXL rule (std over C, F, h, w of each video), tested directly."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    from vidiff.denoise import rescale_guidance

    g, c = torch.randn(2, 4, 5, 3, 3), torch.randn(2, 4, 5, 3, 3) * 3
    assert torch.equal(rescale_guidance(g, c, 0.7, per_frame=False), rescale_noise_cfg(g, c, 0.7))
    per_frame = rescale_guidance(g, c, 0.7, per_frame=True)
    for f in range(5):
        assert torch.allclose(per_frame[:, :, f], rescale_noise_cfg(g[:, :, f], c[:, :, f], 0.7), atol=1e-6)
    a = ours("a red circle moving right", guidance_rescale=0.7, **OPTS).latents
    b = ours("a red circle moving right", **OPTS).latents
    assert (a - b).abs().max().item() > 1e-3


def test_a_scheduler_that_cannot_keep_zero_snr_is_refused(ours):
    with pytest.raises(InvalidArgument, match="--scheduler: pndm cannot keep this model's zero-terminal-SNR"):
        ours("a red circle moving right", scheduler="pndm", **OPTS)
