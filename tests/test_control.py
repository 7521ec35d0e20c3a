"""ControlNets steer the video as diffusers' AnimateDiffControlNetPipeline does (one, and two through
MultiControlNetModel), from folders and A1111 single files; control sources in dgenerate's grammar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffControlNetPipeline, ControlNetModel, MotionAdapter, UNet2DConditionModel
from PIL import Image

from vidiff.errors import InvalidArgument
from vidiff.schedules import make_scheduler
from vidiff.tiny import tiny_controlnet

ATOL = 1e-4  # max abs latent difference allowed in float32
PROMPT = "a red circle moving right"
SETTINGS = dict(frames=8, height=64, width=64, steps=4, seed=3, guidance_scale=7.5)


def save_frames(folder, frames: np.ndarray):
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def controls(tmp_path_factory):
    root = tmp_path_factory.mktemp("control")
    rng = np.random.default_rng(0)
    out = {}
    for i in range(2):
        tiny_controlnet(seed=i + 1).save_pretrained(root / f"controlnet{i}")
        out[f"net{i}"] = root / f"controlnet{i}"
        out[f"frames{i}"] = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
        out[f"video{i}"] = save_frames(root / f"ctrl{i}", out[f"frames{i}"])
    return out


@pytest.fixture(scope="module")
def reference(sd1_folder, adapter_folder, controls):
    def make(nets: list):
        models = [ControlNetModel.from_pretrained(controls[f"net{i}"]) for i in nets]
        pipe = AnimateDiffControlNetPipeline.from_pretrained(
            sd1_folder, unet=UNet2DConditionModel.from_pretrained(sd1_folder / "unet"),
            motion_adapter=MotionAdapter.from_pretrained(adapter_folder),
            controlnet=models[0] if len(models) == 1 else models,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


def reference_latents(pipe, frames: list, scale, start, end, scheduler_config):
    pipe.scheduler = make_scheduler("ddim", scheduler_config)
    s = SETTINGS
    return pipe(
        PROMPT, num_frames=s["frames"], height=s["height"], width=s["width"], num_inference_steps=s["steps"],
        guidance_scale=s["guidance_scale"], generator=torch.Generator("cpu").manual_seed(s["seed"]),
        conditioning_frames=frames, controlnet_conditioning_scale=scale, control_guidance_start=start,
        control_guidance_end=end, output_type="latent",
    ).frames  # fmt: skip


def pil(frames: np.ndarray) -> list:
    return [Image.fromarray(f) for f in frames]


@pytest.mark.parametrize("span", [(0.0, 1.0), (0.25, 0.75)])
def test_one_controlnet_matches_diffusers(motion_pipe, reference, controls, span):
    start, end = span
    got = motion_pipe(
        PROMPT, output_type="latent", progress=False, image_seeds=str(controls["video0"]),
        control_nets=[f"{controls['net0']};scale=0.8;start={start};end={end}"], **SETTINGS,
    ).latents  # fmt: skip
    plain = motion_pipe(PROMPT, output_type="latent", progress=False, **SETTINGS).latents
    want = reference_latents(
        reference([0]), pil(controls["frames0"]), 0.8, start, end, motion_pipe.scheduler_config
    )
    assert got.shape == want.shape == (1, 4, 8, 8, 8)
    assert (got - want).abs().max().item() <= ATOL
    assert (got - plain).abs().max().item() > 100 * ATOL  # the ControlNet steers


def test_two_controlnets_match_multicontrolnet(motion_pipe, reference, controls):
    got = motion_pipe(
        PROMPT, output_type="latent", progress=False,
        image_seeds=f"{controls['video0']}, {controls['video1']}",
        control_nets=f"{controls['net0']};scale=0.7;end=0.5, {controls['net1']};scale=1.2;start=0.25",
        **SETTINGS,
    ).latents  # fmt: skip
    want = reference_latents(
        reference([0, 1]), [pil(controls["frames0"]), pil(controls["frames1"])], [0.7, 1.2], [0.0, 0.25],
        [0.5, 1.0], motion_pipe.scheduler_config,
    )  # fmt: skip
    assert (got - want).abs().max().item() <= ATOL


def test_control_sources_are_checked(motion_pipe, controls):
    net = f"{controls['net0']}"
    with pytest.raises(InvalidArgument, match="2 control sources for 1 ControlNets"):
        motion_pipe(PROMPT, image_seeds=f"{controls['video0']}, {controls['video1']}", control_nets=[net],
                    **SETTINGS)  # fmt: skip
    with pytest.raises(InvalidArgument, match="ctrl0 has 8 frames; --frames is 12"):
        motion_pipe(PROMPT, image_seeds=str(controls["video0"]), control_nets=[net], **(SETTINGS | {"frames": 12}))
