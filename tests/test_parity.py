"""vidiff's latents equal diffusers' AnimateDiffPipeline's on the same tiny weights, scheduler and seed."""

from __future__ import annotations

import pytest
import torch
from diffusers import AnimateDiffPipeline, MotionAdapter, UNet2DConditionModel, UNetMotionModel

from vidiff import VideoPipeline
from vidiff.adapters import merge_motion_unet
from vidiff.schedules import DIFFUSION_SCHEDULERS, make_scheduler
from vidiff.tiny import tiny_motion_adapter, tiny_unet

ATOL = 1e-4  # max abs latent difference allowed in float32
SETTINGS = dict(frames=8, height=64, width=64, steps=4)


@pytest.fixture(scope="module")
def ours(motion_pipe) -> VideoPipeline:
    return motion_pipe


@pytest.fixture(scope="module")
def reference(sd1_folder, adapter_folder) -> AnimateDiffPipeline:
    pipe = AnimateDiffPipeline.from_pretrained(sd1_folder, motion_adapter=MotionAdapter.from_pretrained(adapter_folder))
    pipe.set_progress_bar_config(disable=True)
    pipe.folder_scheduler_config = dict(pipe.scheduler.config)
    return pipe


def reference_latents(pipe: AnimateDiffPipeline, scheduler: str, guidance: float, seed: int, beta=None):
    pipe.scheduler = make_scheduler(scheduler, ours_config(pipe), beta)
    return pipe(
        "a red circle moving right",
        num_frames=SETTINGS["frames"],
        height=SETTINGS["height"],
        width=SETTINGS["width"],
        num_inference_steps=SETTINGS["steps"],
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="latent",
    ).frames


def ours_config(pipe: AnimateDiffPipeline) -> dict:
    """The model folder's own scheduler config, as vidiff reads it."""
    return pipe.folder_scheduler_config


@pytest.mark.parametrize("guidance", [1.0, 7.5])
@pytest.mark.parametrize("scheduler", list(DIFFUSION_SCHEDULERS))
def test_latents_match_diffusers(ours, reference, scheduler, guidance):
    got = ours(
        "a red circle moving right",
        output_type="latent",
        scheduler=scheduler,
        guidance_scale=guidance,
        seed=3,
        progress=False,
        **SETTINGS,
    ).latents
    want = reference_latents(reference, scheduler, guidance, seed=3)
    assert got.shape == want.shape == (1, 4, 8, 8, 8)
    assert (got - want).abs().max().item() <= ATOL


def test_beta_schedule_override_matches_diffusers(ours, reference):
    got = ours(
        "a red circle moving right",
        output_type="latent",
        scheduler="euler",
        beta_schedule="linear",
        seed=5,
        progress=False,
        **SETTINGS,
    ).latents
    want = reference_latents(reference, "euler", 7.5, seed=5, beta="linear")
    default = ours(
        "a red circle moving right",
        output_type="latent",
        scheduler="euler",
        seed=5,
        progress=False,
        **SETTINGS,
    ).latents
    assert (got - want).abs().max().item() <= ATOL
    assert (got - default).abs().max().item() > 1e-3  # the override really changed the schedule


def test_decoded_frames_match_diffusers(ours, reference):
    got = ours(
        "a red circle moving right", output_type="np", seed=2, progress=False, decode_chunk_size=3, **SETTINGS
    ).frames[0]
    reference.scheduler = make_scheduler("ddim", ours_config(reference))
    want = reference(
        "a red circle moving right",
        num_frames=8,
        height=64,
        width=64,
        num_inference_steps=4,
        generator=torch.Generator("cpu").manual_seed(2),
        output_type="np",
    ).frames[0]
    want = (torch.from_numpy(want) * 255).round().to(torch.uint8).numpy()
    assert got.shape == want.shape == (8, 64, 64, 3)
    assert abs(got.astype(int) - want.astype(int)).max() <= 1  # uint8 rounding of equal floats


def test_original_single_file_gives_the_same_video(sd1_folder, original_files, ours):
    from_file = VideoPipeline.from_pretrained(
        str(sd1_folder), motion_module=str(original_files["safetensors"]), dtype="float32", groupnorm="diffusers"
    )
    a = from_file("a cat", output_type="latent", seed=1, progress=False, **SETTINGS).latents
    b = ours("a cat", output_type="latent", seed=1, progress=False, **SETTINGS).latents
    assert torch.equal(a, b)


def test_same_seed_same_latents_and_other_seed_differs(ours):
    run = lambda seed: ours("a cat", output_type="latent", seed=seed, progress=False, **SETTINGS).latents  # noqa: E731
    assert torch.equal(run(7), run(7))
    assert not torch.allclose(run(7), run(8))


def test_fast_merge_equals_diffusers_from_unet2d():
    torch.manual_seed(0)
    unet, adapter = tiny_unet(), tiny_motion_adapter()
    want = UNetMotionModel.from_unet2d(unet, adapter).state_dict()
    got = merge_motion_unet(unet, adapter).state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_motion_modules_mix_frames(ours):
    """Temporal attention is live: changing frame 0 changes the prediction for every other frame."""
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, 8)  # (B, C, F, h, w)
    cond = ours.prompt_encoder(["a cat"])
    t = torch.tensor(500)
    with torch.no_grad():
        base = ours.denoiser.predict(latents, t, cond)
        moved = latents.clone()
        moved[:, :, 0] += 1.0
        other = ours.denoiser.predict(moved, t, cond)
    assert (other[:, :, 1:] - base[:, :, 1:]).abs().amax(dim=(0, 1, 3, 4)).min() > 1e-4


def test_unet2d_without_motion_is_not_enough(sd1_folder):
    from vidiff.errors import LoadError

    with pytest.raises(LoadError, match="no motion module") as err:
        VideoPipeline.from_pretrained(str(sd1_folder), dtype="float32")
    assert err.value.argument == "--motion-module"
    assert UNet2DConditionModel.load_config(sd1_folder / "unet")["_class_name"] == "UNet2DConditionModel"
