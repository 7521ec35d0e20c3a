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
    want = reference_latents(reference([0]), pil(controls["frames0"]), 0.8, start, end, motion_pipe.scheduler_config)
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


def test_motion_scope_windows_match_diffusers_free_noise_with_a_controlnet(motion_pipe, reference, controls, tmp_path):
    """24 frames, motion-module windows of 16 every 4 (diffusers' FreeNoise); the ControlNet sees every frame."""
    frames = np.concatenate([controls["frames0"], controls["frames1"], controls["frames0"]])  # (24, H, W, 3)
    video = save_frames(tmp_path / "ctrl24", frames)
    ref = reference([0])
    ref.enable_free_noise(context_length=16, context_stride=4, noise_type="shuffle_context")
    settings = SETTINGS | {"frames": 24, "steps": 3}
    ref.scheduler = make_scheduler("ddim", motion_pipe.scheduler_config)
    want = ref(
        PROMPT, num_frames=24, height=64, width=64, num_inference_steps=3, guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(3), conditioning_frames=pil(frames),
        controlnet_conditioning_scale=0.8, output_type="latent",
    ).frames  # fmt: skip
    got = motion_pipe(
        PROMPT, output_type="latent", progress=False, image_seeds=str(video),
        control_nets=[f"{controls['net0']};scale=0.8"], context_length=16, context_stride=4, noise_type="shuffle",
        context_scope="motion", **settings,
    ).latents  # fmt: skip
    assert (got - want).abs().max().item() <= ATOL


def test_each_backbone_window_takes_its_own_frames_control_images(motion_pipe, controls, tmp_path):
    """Back-to-back windows of 8 over 16 frames: the second window's frames equal an 8-frame run from the same
    noise steered by the second half of the control video."""
    from vidiff.request import GenerationRequest

    video = save_frames(tmp_path / "ctrl16", np.concatenate([controls["frames0"], controls["frames1"]]))
    net = [f"{controls['net0']};scale=0.8"]
    whole = GenerationRequest.from_options(PROMPT, **SETTINGS | {"frames": 16}, control_nets=net, context_length=8,
                                           context_schedule="static")  # fmt: skip
    source, whole = motion_pipe.resolve_source(whole, str(video))
    run = motion_pipe.prepare(whole, source)
    noise = run.latents.clone()  # (1, 4, 16, 8, 8)
    got = motion_pipe.sample(run, progress=False).latents[:, :, 8:]
    half = GenerationRequest.from_options(PROMPT, **SETTINGS, control_nets=net)
    source, half = motion_pipe.resolve_source(half, str(controls["video1"]))
    run = motion_pipe.prepare(half, source)
    run.latents = noise[:, :, 8:]
    want = motion_pipe.sample(run, progress=False).latents
    assert (got - want).abs().max().item() <= 1e-5


def controlnet_to_a1111(model: ControlNetModel, prefix: str = "control_model.") -> dict:
    """A diffusers ControlNet in the A1111 / lllyasviel layout (the inverse of diffusers' conversion)."""
    from test_single_file import unet_to_ldm

    c = model.config
    attends = [t.startswith("CrossAttn") for t in c.down_block_types]
    extra, unet = {}, {}
    for key, value in model.state_dict().items():
        head, _, tail = key.partition(".")
        if head == "controlnet_cond_embedding":
            part, _, rest = tail.partition(".")
            index = 0 if part == "conv_in" else 14 if part == "conv_out" else 2 * (int(rest.split(".")[0]) + 1)
            extra[f"input_hint_block.{index}.{key.rsplit('.', 1)[1]}"] = value
        elif head == "controlnet_down_blocks":
            extra[f"zero_convs.{tail.split('.')[0]}.0.{tail.split('.')[1]}"] = value
        elif head == "controlnet_mid_block":
            extra[f"middle_block_out.0.{tail}"] = value
        else:
            unet[key] = value
    ldm = unet_to_ldm(unet, len(attends), c.layers_per_block, attends)
    state = {k.replace("model.diffusion_model.", ""): v for k, v in ldm.items()} | extra
    return {f"{prefix}{k}": v.contiguous() for k, v in state.items()}


@pytest.mark.parametrize("layout", ["a1111.safetensors", "fp16.pth", "bare.pth"])
def test_a1111_single_files_load_the_folders_weights(tmp_path, layout):
    from safetensors.torch import save_file

    from vidiff.control import ControlNetUri
    from vidiff.controlnets import load_control_model

    folder_model = tiny_controlnet(norm_num_groups=32, seed=5)  # SD 1.x's groups: what a file's shapes imply
    folder_model.save_pretrained(tmp_path / "net")
    state = controlnet_to_a1111(folder_model, "" if layout.startswith("bare") else "control_model.")
    path = tmp_path / layout
    if layout.endswith(".safetensors"):
        save_file(state, path)
    else:
        torch.save({k: v.half() if layout.startswith("fp16") else v for k, v in state.items()}, path)
    cpu = torch.device("cpu")
    got = load_control_model(ControlNetUri(str(path)), torch.float32, cpu).state_dict()
    want = load_control_model(ControlNetUri(str(tmp_path / "net")), torch.float32, cpu).state_dict()
    cast = (lambda t: t.half().float()) if layout.startswith("fp16") else (lambda t: t)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], cast(v)) for k, v in want.items())


def test_frame_by_frame_mode_steers_each_frame_with_its_own_image(sd1_folder, controls):
    """--mode sequential: the image UNet and the ControlNet see each frame on its own; two frames per call gives
    what all frames in one call give (each call takes its frames' control images)."""
    from vidiff import VideoPipeline

    runs = []
    for batch in (None, 2):
        pipe = VideoPipeline.from_pretrained(str(sd1_folder), mode="sequential", frame_batch=batch, dtype="float32")
        runs.append(pipe(PROMPT, output_type="latent", progress=False, image_seeds=str(controls["video0"]),
                         control_nets=[f"{controls['net0']};scale=0.8"], **SETTINGS).latents)  # fmt: skip
    plain = pipe(PROMPT, output_type="latent", progress=False, **SETTINGS).latents
    assert (runs[0] - runs[1]).abs().max().item() <= 1e-5
    assert (runs[0] - plain).abs().max().item() > 100 * ATOL


def test_deep_cache_keeps_the_controlnets_effect(motion_pipe, controls):
    """DeepCache reuses inner UNet blocks that a ControlNet's residuals fed at the step they were computed:
    measured here, the ControlNet's effect on the latents survives it (direction and size within a few %)."""
    from vidiff import DeepCacheConfig

    net = dict(image_seeds=str(controls["video0"]), control_nets=[f"{controls['net0']};scale=0.8"])
    settings = SETTINGS | {"steps": 12}
    effects = []
    for cache in (False, True):
        if cache:
            motion_pipe.enable_cache(DeepCacheConfig(skip=3))
        try:
            plain = motion_pipe(PROMPT, output_type="latent", progress=False, **settings).latents
            steered = motion_pipe(PROMPT, output_type="latent", progress=False, **net, **settings).latents
        finally:
            motion_pipe.disable_cache()
        effects.append((steered - plain).flatten())
    cosine = torch.nn.functional.cosine_similarity(effects[0], effects[1], dim=0).item()
    ratio = (effects[1].norm() / effects[0].norm()).item()
    assert cosine > 0.95 and 0.9 < ratio < 1.1, (cosine, ratio)


def test_prompt_travel_composes_with_a_controlnet(motion_pipe, controls):
    """Per-frame prompts (travel between two equal prompts) with a ControlNet give the plain prompt's video."""
    net = dict(image_seeds=str(controls["video0"]), control_nets=[f"{controls['net0']};scale=0.8"])
    plain = motion_pipe(PROMPT, output_type="latent", progress=False, **net, **SETTINGS).latents
    travel = motion_pipe(PROMPT, output_type="latent", progress=False, prompt_travel={0: PROMPT, 7: PROMPT}, **net,
                         **SETTINGS).latents  # fmt: skip
    assert (travel - plain).abs().max().item() <= ATOL  # per-frame embeddings: another summation order


def test_a_controlnet_for_another_vae_or_unet_is_refused(motion_pipe, controls, tmp_path):
    from vidiff.errors import LoadError

    model = ControlNetModel(block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=32,
                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), norm_num_groups=8,
                            conditioning_embedding_out_channels=(8, 16, 16))  # fmt: skip
    model.save_pretrained(tmp_path / "x4")
    with pytest.raises(LoadError, match="scales its images down 4x; this model's VAE makes one latent cell of 8x8"):
        motion_pipe(PROMPT, image_seeds=str(controls["video0"]), control_nets=[str(tmp_path / "x4")], **SETTINGS)
    wide = ControlNetModel(block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=48, norm_num_groups=8,
                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"))  # fmt: skip
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(LoadError, match="text width 48"):
        motion_pipe(PROMPT, image_seeds=str(controls["video0"]), control_nets=[str(tmp_path / "wide")], **SETTINGS)
