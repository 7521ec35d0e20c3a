"""SparseCtrl (RGB and scribble) steers the listed frames as diffusers' AnimateDiffSparseControlNetPipeline
does; original AnimateDiff files load to the weights of diffusers' conversion; image-to-video is SparseCtrl RGB
on frame 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffSparseControlNetPipeline, MotionAdapter, SparseControlNetModel, UNet2DConditionModel
from PIL import Image
from safetensors.torch import save_file

from vidiff.control import ControlNetUri
from vidiff.controlnets import load_control_model
from vidiff.motion import to_original_keys
from vidiff.schedules import make_scheduler
from vidiff.tiny import tiny_sparsectrl

ATOL = 1e-4  # max abs latent difference allowed in float32
PROMPT = "a red circle moving right"
SETTINGS = dict(frames=8, height=64, width=64, steps=4, seed=3, guidance_scale=7.5)


def to_original(model: SparseControlNetModel) -> dict:
    """A diffusers SparseCtrl model in the original AnimateDiff layout (its motion modules renamed back)."""
    state = model.state_dict()
    motion = {k: v for k, v in state.items() if ".motion_modules." in k}
    rest = {k: v for k, v in state.items() if k not in motion}
    return {k: v.clone().contiguous() for k, v in (rest | to_original_keys(motion)).items()}


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse")
    rng = np.random.default_rng(1)
    out = {"images": rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)}
    for i, frame in enumerate(out["images"]):
        (root / "keys").mkdir(exist_ok=True)
        Image.fromarray(frame).save(root / "keys" / f"{i}.png")
    out["keys"] = root / "keys"
    for kind in ("rgb", "scribble"):
        model = tiny_sparsectrl(rgb=kind == "rgb", seed=2)
        model.save_pretrained(root / kind)
        torch.save(to_original(model), root / f"v3_sd15_sparsectrl_{kind}.ckpt")
        save_file(to_original(model), root / f"v3_sd15_sparsectrl_{kind}.safetensors")
        out[kind] = root / kind
    out["root"] = root
    return out


def reference_latents(sd1_folder, adapter_folder, path, images, indices, scheduler_config):
    """diffusers' pipeline; its VAE encoding of RGB control images samples the posterior with the global RNG,
    so here it takes the posterior mean, as vidiff (and the VAE's `mode()`) does."""
    pipe = AnimateDiffSparseControlNetPipeline.from_pretrained(
        sd1_folder, unet=UNet2DConditionModel.from_pretrained(sd1_folder / "unet"),
        motion_adapter=MotionAdapter.from_pretrained(adapter_folder),
        controlnet=SparseControlNetModel.from_pretrained(path),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("ddim", scheduler_config)
    s = SETTINGS
    from diffusers.models.autoencoders import vae as vae_module

    original = vae_module.DiagonalGaussianDistribution.sample
    vae_module.DiagonalGaussianDistribution.sample = lambda self, generator=None: self.mean
    try:
        return pipe(
            PROMPT, num_frames=s["frames"], height=s["height"], width=s["width"], num_inference_steps=s["steps"],
            guidance_scale=s["guidance_scale"], generator=torch.Generator("cpu").manual_seed(s["seed"]),
            conditioning_frames=[Image.fromarray(f) for f in images], controlnet_frame_indices=indices,
            controlnet_conditioning_scale=0.9, output_type="latent",
        ).frames  # fmt: skip
    finally:
        vae_module.DiagonalGaussianDistribution.sample = original


@pytest.mark.parametrize("kind", ["rgb", "scribble"])
def test_sparsectrl_matches_diffusers(motion_pipe, sd1_folder, adapter_folder, sparse, kind):
    got = motion_pipe(
        PROMPT, output_type="latent", progress=False, image_seeds=str(sparse["keys"]),
        control_nets=[f"{sparse[kind]};scale=0.9;frames=0,4,7"], **SETTINGS,
    ).latents  # fmt: skip
    want = reference_latents(sd1_folder, adapter_folder, sparse[kind], sparse["images"], [0, 4, 7],
                             motion_pipe.scheduler_config)  # fmt: skip
    plain = motion_pipe(PROMPT, output_type="latent", progress=False, **SETTINGS).latents
    assert (got - want).abs().max().item() <= ATOL
    assert (got - plain).abs().max().item() > 100 * ATOL  # it steers


@pytest.mark.parametrize("kind", ["rgb", "scribble"])
@pytest.mark.parametrize("suffix", ["ckpt", "safetensors"])
def test_original_files_load_to_the_diffusers_weights(sparse, kind, suffix):
    cpu = torch.device("cpu")
    got = load_control_model(ControlNetUri(str(sparse["root"] / f"v3_sd15_sparsectrl_{kind}.{suffix}")),
                             torch.float32, cpu)  # fmt: skip
    want = load_control_model(ControlNetUri(str(sparse[kind])), torch.float32, cpu)
    assert got.config.use_simplified_condition_embedding == (kind == "rgb")
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], v) for k, v in b.items())


def test_image_to_video_is_sparsectrl_rgb_on_the_first_frame(motion_pipe, sd1_folder, adapter_folder, sparse):
    first = sparse["root"] / "keys" / "0.png"
    got = motion_pipe(
        PROMPT, output_type="latent", progress=False, image_seeds=str(first),
        control_nets=[f"{sparse['root'] / 'v3_sd15_sparsectrl_rgb.ckpt'};scale=0.9;frames=0"], **SETTINGS,
    ).latents  # fmt: skip
    want = reference_latents(sd1_folder, adapter_folder, sparse["rgb"], sparse["images"][:1], [0],
                             motion_pipe.scheduler_config)  # fmt: skip
    assert (got - want).abs().max().item() <= ATOL


def test_backbone_windows_place_keyframes_in_their_own_frames(motion_pipe, sparse):
    """Windows of 8 over 16 frames with keyframes at 0 and 12: the second window equals an 8-frame run from the
    same noise with its keyframe at 4."""
    from vidiff.request import GenerationRequest

    two = str(sparse["root"] / "keys")
    net = str(sparse["rgb"])
    whole = GenerationRequest.from_options(PROMPT, **SETTINGS | {"frames": 16}, control_nets=[f"{net};frames=0,12"],
                                           context_length=8, context_schedule="static")  # fmt: skip
    source, whole = motion_pipe.resolve_source(whole, two)
    run = motion_pipe.prepare(whole, source)
    noise = run.latents.clone()
    got = motion_pipe.sample(run, progress=False).latents[:, :, 8:]
    half = GenerationRequest.from_options(PROMPT, **SETTINGS, control_nets=[f"{net};frames=4"])
    source, half = motion_pipe.resolve_source(half, str(sparse["root"] / "keys" / "1.png"))
    run = motion_pipe.prepare(half, source)
    run.latents = noise[:, :, 8:]
    assert (motion_pipe.sample(run, progress=False).latents - got).abs().max().item() <= ATOL  # VAE batch sizes differ


def test_sparsectrl_needs_motion_modules(sd1_folder, sparse):
    from vidiff import VideoPipeline
    from vidiff.errors import InvalidArgument

    frames = VideoPipeline.from_pretrained(str(sd1_folder), mode="sequential", dtype="float32")
    with pytest.raises(InvalidArgument, match="SparseCtrl, which needs motion modules"):
        frames(PROMPT, image_seeds=str(sparse["keys"]), control_nets=[f"{sparse['rgb']};frames=0,4,7"], **SETTINGS)
