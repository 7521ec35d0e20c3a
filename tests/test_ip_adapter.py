"""IP-Adapter: latents equal diffusers' AnimateDiffPipeline with `load_ip_adapter` and `ip_adapter_image` (h94's
safetensors and .bin layouts); keyframed images and scales over the frames, which diffusers does not have."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffPipeline, MotionAdapter
from PIL import Image
from safetensors.torch import save_file

from vidiff import VideoPipeline
from vidiff.control import IPAdapterOptions
from vidiff.errors import InvalidArgument
from vidiff.schedules import make_scheduler
from vidiff.tiny import tiny_image_encoder, tiny_ip_adapter

ATOL = 1e-4  # max abs latent difference allowed in float32
PROMPT = "a red circle moving right"
SETTINGS = dict(frames=8, height=64, width=64, steps=4, seed=3, guidance_scale=7.5)


@pytest.fixture(scope="module")
def pipe(sd1_folder, adapter_folder) -> VideoPipeline:
    return VideoPipeline.from_pretrained(str(sd1_folder), str(adapter_folder), dtype="float32", groupnorm="diffusers")


@pytest.fixture(scope="module")
def ip(pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("ip")
    state = tiny_ip_adapter(pipe.denoiser.module, seed=4)
    save_file({f"{part}.{k}": v for part, values in state.items() for k, v in values.items()},
              root / "ip-adapter_sd15.safetensors")  # fmt: skip
    torch.save(state, root / "ip-adapter_sd15.bin")
    tiny_image_encoder(seed=5).save_pretrained(root / "image_encoder")
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(root / f"{name}.png")
    return root


def reference_latents(sd1_folder, adapter_folder, ip, weight: str, scale: float, scheduler_config):
    ref = AnimateDiffPipeline.from_pretrained(sd1_folder, motion_adapter=MotionAdapter.from_pretrained(adapter_folder))
    ref.set_progress_bar_config(disable=True)
    ref.load_ip_adapter(str(ip), subfolder="", weight_name=weight, image_encoder_folder="image_encoder")
    ref.set_ip_adapter_scale(scale)
    ref.scheduler = make_scheduler("ddim", scheduler_config)
    s = SETTINGS
    return ref(
        PROMPT, num_frames=s["frames"], height=s["height"], width=s["width"], num_inference_steps=s["steps"],
        guidance_scale=s["guidance_scale"], generator=torch.Generator("cpu").manual_seed(s["seed"]),
        ip_adapter_image=Image.open(ip / "a.png"), output_type="latent",
    ).frames  # fmt: skip


@pytest.mark.parametrize("weight", ["ip-adapter_sd15.safetensors", "ip-adapter_sd15.bin"])
def test_ip_adapter_matches_diffusers(pipe, sd1_folder, adapter_folder, ip, weight):
    got = pipe(PROMPT, output_type="latent", progress=False, image_seeds=f"adapter: {ip / 'a.png'}",
               ip_adapters=f"{ip / weight};scale=0.6", **SETTINGS).latents  # fmt: skip
    want = reference_latents(sd1_folder, adapter_folder, ip, weight, 0.6, pipe.scheduler_config)
    plain = pipe(PROMPT, output_type="latent", progress=False, **SETTINGS).latents
    assert (got - want).abs().max().item() <= ATOL
    assert (got - plain).abs().max().item() > 100 * ATOL  # it steers, and is removed for a run without it
    assert pipe.image_prompt is None


def test_keyframed_images_and_scales(pipe, ip):
    adapter = f"{ip / 'ip-adapter_sd15.safetensors'}"
    request_a = dict(image_seeds=f"adapter: {ip / 'a.png'}", ip_adapters=f"{adapter};scale=0.6")
    one = pipe(PROMPT, output_type="latent", progress=False, **request_a, **SETTINGS).latents
    keyed = pipe(PROMPT, output_type="latent", progress=False, image_seeds=f"adapter: 3={ip / 'a.png'}",
                 ip_adapters=f"{adapter};scale=3:0.6", **SETTINGS).latents  # fmt: skip
    assert (one - keyed).abs().max().item() <= 1e-6  # a single keyframe is the plain run
    from vidiff.request import GenerationRequest
    from vidiff.sources import Source

    request = pipe.resolve(GenerationRequest.from_options(PROMPT, **SETTINGS, ip_adapters=f"{adapter};scale=0:0.2,7:1"))
    images = {0: np.asarray(Image.open(ip / "a.png")), 7: np.asarray(Image.open(ip / "b.png"))}
    image, negative = pipe._image(request, Source(adapter=images))
    a, b = pipe.image_prompt.embed([images[0], images[7]])
    assert image.embeds.shape == (1, 8, a.shape[0])
    assert torch.allclose(image.embeds[0, 0], a) and torch.allclose(image.embeds[0, 7], b)
    assert torch.allclose(image.embeds[0, 4], (3 * a + 4 * b) / 7, atol=1e-6)
    assert torch.allclose(image.scale, torch.tensor([0.2 + 0.8 * i / 7 for i in range(8)]))
    assert not negative.embeds.any()
    pipe.ip_adapter(IPAdapterOptions())  # removed again


def test_ip_adapter_input_is_checked(pipe, ip):
    adapter = f"{ip / 'ip-adapter_sd15.safetensors'}"
    with pytest.raises(InvalidArgument, match="needs an image"):
        pipe(PROMPT, ip_adapters=adapter, **SETTINGS)
    with pytest.raises(InvalidArgument, match="outside a 8-frame video"):
        pipe(PROMPT, image_seeds=f"adapter: 9={ip / 'a.png'}", ip_adapters=adapter, **SETTINGS)


def test_ip_adapter_in_frame_by_frame_mode_and_with_windows(sd1_folder, pipe, ip):
    """Frame by frame, each frame's UNet call gets the image tokens; context windows slice keyframed ones."""
    adapter = dict(image_seeds=f"adapter: 0={ip / 'a.png'}, 11={ip / 'b.png'}",
                   ip_adapters=f"{ip / 'ip-adapter_sd15.safetensors'};scale=0:0.3,11:0.9")  # fmt: skip
    frames = VideoPipeline.from_pretrained(str(sd1_folder), mode="sequential", dtype="float32")
    settings = SETTINGS | {"frames": 12}
    steered = frames(PROMPT, output_type="latent", progress=False, **adapter, **settings).latents
    plain = frames(PROMPT, output_type="latent", progress=False, **settings).latents
    assert (steered - plain).abs().max().item() > 100 * ATOL
    windowed = pipe(PROMPT, output_type="latent", progress=False, context_length=8, context_stride=4, **adapter,
                    **settings).latents  # fmt: skip
    assert windowed.shape == (1, 4, 12, 8, 8) and torch.isfinite(windowed).all()
    pipe.ip_adapter(IPAdapterOptions())
