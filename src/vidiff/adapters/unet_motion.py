"""SD 1.x UNet with AnimateDiff motion modules (diffusers' UNetMotionModel): all frames denoised together.

`build` loads a Stable Diffusion 1.x folder: with a motion module (the argument, or the folder's own
`motion_adapter/`, or a UNetMotionModel saved by AnimateDiffPipeline) all frames are denoised together;
in sequential mode the image UNet runs frame by frame.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTokenizer

from ..controlnets import residuals
from ..errors import LoadError
from ..loading import CLIP_TOKENIZER, load_part, require_parts
from ..lora import SD1_TARGET, LoraTarget, apply_loras
from ..motion.animatediff_format import MotionModule, folder_version, load_motion_module
from ..motion.groupnorm import resolve_mode, set_groupnorm
from ..motion.original_lora import merge_original_lora
from ..motion.scale import scale_residual
from ..tensor_files import read_state_dict
from ..text import ClipPromptEncoder, PromptEncoder
from .base import Conditioning, FuseFrames, Loaded, LoadOptions, VideoDenoiser, per_frame
from .image_sequential import ImageSequentialDenoiser

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def merge_motion_unet(unet: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """Insert the adapter's temporal transformers into the image UNet.

    Same result as diffusers' `UNetMotionModel.from_unet2d(unet, adapter)`, without its random
    initialisation and copies: the structure is built on the meta device and the loaded tensors are
    assigned into it, so merging costs no time and no extra memory.
    """
    if adapter.config.get("conv_in_channels"):
        raise LoadError("--motion-module", "PIA-style motion adapters (extra conv_in channels) are not supported")
    try:
        with init_empty_weights():  # parameters on meta, buffers (frame positions) computed for real
            model = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    except ValueError as e:  # diffusers' block / layer compatibility checks
        raise LoadError("--motion-module", f"does not fit this UNet: {e}") from e
    state = {**unet.state_dict(), **adapter.state_dict()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise LoadError(
            "--motion-module", f"does not fit this UNet (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    # nn.Module.to: the only tensors not already in place are the computed frame-position buffers
    return nn.Module.to(model, device=unet.device, dtype=unet.dtype)


class UNetMotionDenoiser(VideoDenoiser):
    """`predict` runs the motion UNet on the 5-D latent; frames ride in the batch inside diffusers."""

    def __init__(self, unet: UNetMotionModel) -> None:
        self.unet = unet
        self.latent_channels = unet.config.in_channels
        self.max_frames = unet.config.motion_max_seq_length

    @property
    def module(self) -> nn.Module:
        return self.unet

    def motion_modules(self) -> list[nn.Module]:
        return [m for name, m in self.unet.named_modules() if name.split(".")[-2:-1] == ["motion_modules"]]

    def scale_motion(self, scale: float) -> list:
        return scale_residual(self.motion_modules(), scale)

    @contextmanager
    def temporal_windows(self, fuse: FuseFrames) -> Iterator[None]:
        blocks = [block for module in self.motion_modules() for block in module.transformer_blocks]
        for block in blocks:
            block.forward = partial(_windowed_block, block, fuse)
        try:
            yield
        finally:
            for block in blocks:
                del block.forward

    def predict(self, latents: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        return self.unet(latents, t, **unet_inputs(latents, t, cond)).sample  # (B, C, F, h, w)


def unet_inputs(latents: Tensor, t: Tensor, cond: Conditioning) -> dict:
    """A UNet call's conditioning for latents (B, C, F, h, w): the text (B*F, L, D), frame-major per video, with
    the IP-Adapter's image tokens when it has them, and the ControlNets' summed residuals (they read the text)."""
    b, f = latents.shape[0], latents.shape[2]
    embeds, _ = cond.flat(f)  # (B*F, L, D)
    context = embeds if cond.image is None else (embeds, cond.image.inputs(b, f))
    return {"encoder_hidden_states": context, **residuals(latents, t, embeds, cond.control)}


def _windowed_block(
    block: nn.Module,
    fuse: FuseFrames,
    hidden_states: Tensor,
    encoder_hidden_states=None,
    cross_attention_kwargs=None,
    **_,
) -> Tensor:
    """A motion module's BasicTransformerBlock with its two frame attentions run per context window and
    fused before the feed-forward, as diffusers' FreeNoiseTransformerBlock does."""
    kwargs = cross_attention_kwargs or {}

    def attend(h: Tensor) -> Tensor:  # (N, L, C): one window of frames per pixel
        n = block.pos_embed(block.norm1(h)) if block.pos_embed is not None else block.norm1(h)
        context = encoder_hidden_states if block.only_cross_attention else None
        h = block.attn1(n, encoder_hidden_states=context, **kwargs) + h
        if block.attn2 is not None:
            n = block.pos_embed(block.norm2(h)) if block.pos_embed is not None else block.norm2(h)
            h = block.attn2(n, encoder_hidden_states=encoder_hidden_states, **kwargs) + h
        return h

    h = fuse(hidden_states, attend)  # (N, F, C)
    return block.ff(block.norm3(h)) + h


class UNetFramesDenoiser(VideoDenoiser):
    """An SD 1.x image UNet over the frames of a video: each frame denoised on its own, all in one batch."""

    max_frames = None

    def __init__(self, unet: UNet2DConditionModel) -> None:
        self.unet = unet
        self.latent_channels = unet.config.in_channels

    @property
    def module(self) -> nn.Module:
        return self.unet

    def predict(self, latents: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        b, c, f, h, w = latents.shape
        frames = latents.transpose(1, 2).reshape(b * f, c, h, w)  # (B*F, C, h, w)
        steps = per_frame(t, b, f)  # (B*F,)
        out = self.unet(frames, steps, **self.unet_kwargs(latents, steps, cond)).sample  # (B*F, C, h, w)
        return out.reshape(b, f, c, h, w).transpose(1, 2)  # (B, C, F, h, w)

    def unet_kwargs(self, latents: Tensor, steps: Tensor, cond: Conditioning) -> dict:
        """The image UNet's conditioning for all frames of latents (B, C, F, h, w) in one batch."""
        return unet_inputs(latents, steps, cond)


def _unet(
    folder: Path, options: LoadOptions, family: UNetFamily, notes: list[str], image_unet: nn.Module | None
) -> tuple[nn.Module, MotionModule | None]:
    """The UNet with its motion modules merged in and its GroupNorms as the module was trained (`groupnorm`),
    or the image UNet alone in sequential mode. `image_unet`: already loaded (from a single file)."""
    dtype, settings = options.dtype, options.settings
    motion_module = settings.motion_module
    unet_class = "UNet2DConditionModel"
    if image_unet is None:
        unet_class = json.loads((folder / "unet" / "config.json").read_text()).get("_class_name")
        if motion_module is None and (folder / "motion_adapter").is_dir():
            motion_module = str(folder / "motion_adapter")
    if settings.frame_by_frame:
        if unet_class == "UNetMotionModel":
            raise LoadError(
                "--mode", f"{folder}'s UNet has motion modules built in; sequential mode needs an image UNet"
            )
        image = image_unet or load_part(UNet2DConditionModel.from_pretrained, folder / "unet", torch_dtype=dtype)
        return image, None
    module = load_motion_module(motion_module, dtype) if motion_module is not None else None
    if module is not None:
        if module.family not in (None, family.motion):
            raise LoadError("--motion-module", f"{Path(motion_module).name} is {FAMILY_NAMES[module.family]} "
                            f"motion module ({module.describe()}); this model is {family.name}")  # fmt: skip
        unet_config = image_unet.config if image_unet else json.loads((folder / "unet" / "config.json").read_text())
        check_fits(module, dict(unet_config), motion_module)
    if unet_class == "UNetMotionModel":  # saved by AnimateDiffPipeline: motion modules already inside
        unet = load_part(UNetMotionModel.from_pretrained, folder / "unet", torch_dtype=dtype)
        if module is None:
            module = MotionModule(None, folder_version(dict(unet.config)), "inside the UNet")
        else:
            unet.load_motion_modules(module.adapter)
    elif module is None:
        raise LoadError("--motion-module", f"{folder} has no motion module; pass {family.example}")
    else:
        unet2d = image_unet or load_part(UNet2DConditionModel.from_pretrained, folder / "unet", torch_dtype=dtype)
        if module.domain_adapter:  # v3's spatial LoRA, as the original code applies it (scale 1.0)
            merge_original_lora(unet2d, module.domain_adapter, 1.0, "--motion-module")
        unet = merge_motion_unet(unet2d, module.adapter)
    module.version = family.version(module.version)
    mode = resolve_mode(settings.groupnorm, module.version, module.groupnorm)
    set_groupnorm(unet, mode, module.version)
    notes.append(f"motion module: {module.describe()}; GroupNorm as in {mode}")
    return unet, module


def check_fits(module: MotionModule, unet_config: dict, path: str) -> None:
    """Refuse, before merging, a motion module shaped for another UNet (its block widths and layers per block
    against the UNet's configuration)."""
    a = module.adapter.config
    layers = lambda n, count: tuple(n) if isinstance(n, list | tuple) else (n,) * count  # noqa: E731
    want = tuple(unet_config["block_out_channels"])
    want_layers = layers(unet_config["layers_per_block"], len(want))
    got, got_layers = tuple(a.block_out_channels), layers(a.motion_layers_per_block, len(a.block_out_channels))
    if (got, got_layers) != (want, want_layers):
        raise LoadError("--motion-module", f"{path} was made for a UNet with block widths {got} and {got_layers} "
                        f"layers per block; this model's UNet has {want} and {want_layers}")  # fmt: skip


@dataclass
class Parts:
    """What a UNet family's folder or single file gives besides the UNet: text side, VAE, scheduler."""

    prompt_encoder: PromptEncoder
    text_encoders: dict[str, nn.Module]  # by diffusers prefix (`text_encoder`, `text_encoder_2`), for LoRAs
    vae: AutoencoderKL | None  # None when `--vae` replaces it
    scheduler_config: dict
    image_unet: UNet2DConditionModel | None = None  # from a single file; None: the folder's unet/


@dataclass(frozen=True)
class UNetFamily:
    """What differs between UNet families (SD 1.x, SDXL) around the shared UNet + motion-module assembly."""

    name: str  # for messages: "Stable Diffusion 1.x"
    motion: str  # the motion modules it takes (MotionModule.family)
    example: str  # a motion module to suggest
    lora: LoraTarget
    read_vae: Callable[[dict, torch.dtype, str], AutoencoderKL]  # a single-file VAE (`--vae FILE`)
    version: Callable[[str], str] = str  # a module's version as merged into this family (SDXL: 'sdxl')
    motion_denoiser: type[UNetMotionDenoiser] = UNetMotionDenoiser
    frames_denoiser: type[UNetFramesDenoiser] = UNetFramesDenoiser


FAMILY_NAMES = {"sd1": "an SD 1.x", "sdxl": "an SDXL"}  # MotionModule.family
TRAINED_AT = {"hotshot": (64, 8)}  # latent size, frames: Hotshot-XL was trained on 8 frames at 512 pixels


def vae_dtype(vae: AutoencoderKL, dtype: torch.dtype) -> torch.dtype:
    """float32 where float16 would overflow the VAE (its config's `force_upcast`, as SDXL's stock VAE sets and
    diffusers' pipelines honour); else the run's dtype. The fp16-fix VAEs clear the flag."""
    return torch.float32 if dtype == torch.float16 and vae.config.get("force_upcast", False) else dtype


def _replacement_vae(path: str, family: UNetFamily, dtype: torch.dtype) -> AutoencoderKL:
    """`--vae`: a diffusers VAE folder, or a single file in the original layout (e.g. vae-ft-mse-840000)."""
    if Path(path).is_dir():
        return load_part(AutoencoderKL.from_pretrained, Path(path), torch_dtype=dtype)
    return family.read_vae(read_state_dict(path, "--vae"), dtype, "--vae")


def assemble(
    source: Path, options: LoadOptions, family: UNetFamily, parts: Parts, notes: list[str], start: float
) -> Loaded:
    """The shared half of a UNet family's build (`start`: when it began): VAE, UNet with its motion module,
    LoRAs, denoiser."""
    dtype, device, settings = options.dtype, options.device, options.settings
    vae = parts.vae
    if settings.vae is not None:
        vae = _replacement_vae(settings.vae, family, dtype)
        notes.append(f"VAE from {settings.vae}")
    unet, module = _unet(source, options, family, notes, parts.image_unet)
    if options.loras:
        notes += apply_loras(unet, parts.text_encoders, list(options.loras), "--lora", fuse=settings.fuse_loras,
                             target=family.lora)  # fmt: skip
    if options.motion_loras:  # never in sequential mode (LoadSettings refuses it)
        notes += apply_loras(unet, {}, list(options.motion_loras), "--motion-lora", motion_only=True)
    for part in (*parts.text_encoders.values(), vae, unet):
        part.to(device).eval().requires_grad_(False)
    vae.to(vae_dtype(vae, dtype))
    if device.type == "cpu" and dtype == torch.bfloat16:
        unet.to(memory_format=torch.channels_last)  # bf16 convolutions on CPU: 4-5% faster per step
    if not settings.frame_by_frame:
        denoiser: VideoDenoiser = family.motion_denoiser(unet)
    else:
        denoiser = ImageSequentialDenoiser(family.frames_denoiser(unet), settings.frame_noise, settings.frame_batch)
    size, frames = TRAINED_AT.get(module.version if module else "", (unet.config.sample_size, None))
    return Loaded(parts.prompt_encoder, denoiser, vae, parts.scheduler_config, size, time.perf_counter() - start,
                  notes, frames)  # fmt: skip


def _sd1_parts(source: Path, options: LoadOptions, notes: list[str]) -> Parts:
    """SD 1.x's CLIP, VAE and scheduler from a folder, or everything (UNet too) from one file."""
    from .. import single_file

    dtype, keep_vae = options.dtype, options.settings.vae is None
    if source.is_file():  # CompVis / A1111 / Civitai layout: everything in one file
        checkpoint = single_file.read_checkpoint(source)
        text_encoder = single_file.load_text_encoder(checkpoint, dtype)
        vae = single_file.load_vae(checkpoint, dtype) if keep_vae else None
        image_unet = single_file.load_unet(checkpoint, dtype)
        notes.append(f"single-file checkpoint: UNet {tuple(image_unet.config.block_out_channels)}, "
                     f"{image_unet.config.in_channels} input channels")  # fmt: skip
        encoder = ClipPromptEncoder(CLIPTokenizer.from_pretrained(CLIP_TOKENIZER), text_encoder)
        return Parts(encoder, {"text_encoder": text_encoder}, vae, dict(single_file.SD1_SCHEDULER), image_unet)
    require_parts(source, PARTS, "Stable Diffusion")
    tokenizer = load_part(CLIPTokenizer.from_pretrained, source / "tokenizer")
    text_encoder = load_part(CLIPTextModel.from_pretrained, source / "text_encoder", dtype=dtype)
    vae = load_part(AutoencoderKL.from_pretrained, source / "vae", torch_dtype=dtype) if keep_vae else None
    scheduler_config = dict(load_part(DDIMScheduler.load_config, source / "scheduler"))
    return Parts(ClipPromptEncoder(tokenizer, text_encoder), {"text_encoder": text_encoder}, vae, scheduler_config)


def _read_sd1_vae(state: dict, dtype: torch.dtype, argument: str) -> AutoencoderKL:
    from .. import single_file

    return single_file.load_vae(state, dtype, argument)


SD1 = UNetFamily("Stable Diffusion 1.x", "sd1", "an AnimateDiff motion module", SD1_TARGET, _read_sd1_vae)


def build(source: Path, options: LoadOptions) -> Loaded:
    """A Stable Diffusion 1.x folder or single-file checkpoint as a video backbone (the `sd1` spec)."""
    start, notes = time.perf_counter(), []
    return assemble(source, options, SD1, _sd1_parts(source, options, notes), notes, start)
