"""SD 1.x UNet with AnimateDiff motion modules (diffusers' UNetMotionModel): all frames denoised together.

`build` loads a Stable Diffusion 1.x folder: with a motion module (the argument, or the folder's own
`motion_adapter/`, or a UNetMotionModel saved by AnimateDiffPipeline) all frames are denoised together;
in sequential mode the image UNet runs frame by frame.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
from ..lora import apply_loras
from ..motion.animatediff_format import MotionModule, folder_version, load_motion_module
from ..motion.groupnorm import resolve_mode, set_groupnorm
from ..motion.original_lora import merge_original_lora
from ..motion.scale import scale_residual
from ..tensor_files import read_state_dict
from ..text import ClipPromptEncoder
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
        out = self.unet(frames, steps, **unet_inputs(latents, steps, cond)).sample  # (B*F, C, h, w)
        return out.reshape(b, f, c, h, w).transpose(1, 2)  # (B, C, F, h, w)


def _unet(folder: Path, options: LoadOptions, notes: list[str], image_unet: nn.Module | None) -> nn.Module:
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
        return image_unet or load_part(UNet2DConditionModel.from_pretrained, folder / "unet", torch_dtype=dtype)
    module = load_motion_module(motion_module, dtype) if motion_module is not None else None
    if module is not None:
        unet_config = image_unet.config if image_unet else json.loads((folder / "unet" / "config.json").read_text())
        check_fits(module, dict(unet_config), motion_module)
    if unet_class == "UNetMotionModel":  # saved by AnimateDiffPipeline: motion modules already inside
        unet = load_part(UNetMotionModel.from_pretrained, folder / "unet", torch_dtype=dtype)
        if module is None:
            module = MotionModule(None, folder_version(dict(unet.config)), "inside the UNet")
        else:
            unet.load_motion_modules(module.adapter)
    elif module is None:
        raise LoadError("--motion-module", f"{folder} has no motion module; pass an AnimateDiff motion module")
    else:
        unet2d = image_unet or load_part(UNet2DConditionModel.from_pretrained, folder / "unet", torch_dtype=dtype)
        if module.domain_adapter:  # v3's spatial LoRA, as the original code applies it (scale 1.0)
            merge_original_lora(unet2d, module.domain_adapter, 1.0, "--motion-module")
        unet = merge_motion_unet(unet2d, module.adapter)
    mode = resolve_mode(settings.groupnorm, module.version, module.groupnorm)
    set_groupnorm(unet, mode, module.version)
    notes.append(f"motion module: {module.describe()}; GroupNorm as in {mode}")
    return unet


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


def _replacement_vae(path: str, dtype: torch.dtype) -> AutoencoderKL:
    """`--vae`: a diffusers VAE folder, or a single file in the original layout (e.g. vae-ft-mse-840000)."""
    from .. import single_file

    if Path(path).is_dir():
        return load_part(AutoencoderKL.from_pretrained, Path(path), torch_dtype=dtype)
    return single_file.load_vae(read_state_dict(path, "--vae"), dtype, "--vae")


def build(source: Path, options: LoadOptions) -> Loaded:
    """A Stable Diffusion 1.x folder or single-file checkpoint as a video backbone (the `sd1` spec)."""
    from .. import single_file

    start = time.perf_counter()
    dtype, device, settings = options.dtype, options.device, options.settings
    notes: list[str] = []
    if source.is_file():  # CompVis / A1111 / Civitai layout: everything in one file
        checkpoint = single_file.read_checkpoint(source)
        tokenizer = CLIPTokenizer.from_pretrained(CLIP_TOKENIZER)
        text_encoder = single_file.load_text_encoder(checkpoint, dtype)
        vae = single_file.load_vae(checkpoint, dtype) if settings.vae is None else None
        image_unet = single_file.load_unet(checkpoint, dtype)
        scheduler_config = dict(single_file.SD1_SCHEDULER)
        del checkpoint
        notes.append(f"single-file checkpoint: UNet {tuple(image_unet.config.block_out_channels)}, "
                     f"{image_unet.config.in_channels} input channels")  # fmt: skip
    else:
        require_parts(source, PARTS, "Stable Diffusion")
        tokenizer = load_part(CLIPTokenizer.from_pretrained, source / "tokenizer")
        text_encoder = load_part(CLIPTextModel.from_pretrained, source / "text_encoder", dtype=dtype)
        vae = (
            load_part(AutoencoderKL.from_pretrained, source / "vae", torch_dtype=dtype)
            if settings.vae is None
            else None
        )
        scheduler_config = dict(load_part(DDIMScheduler.load_config, source / "scheduler"))
        image_unet = None
    if settings.vae is not None:
        vae = _replacement_vae(settings.vae, dtype)
        notes.append(f"VAE from {settings.vae}")
    unet = _unet(source, options, notes, image_unet)
    if options.loras:
        notes += apply_loras(unet, text_encoder, list(options.loras), "--lora", fuse=settings.fuse_loras)
    if options.motion_loras:  # never in sequential mode (LoadSettings refuses it)
        notes += apply_loras(unet, None, list(options.motion_loras), "--motion-lora", motion_only=True)
    for module in (text_encoder, vae, unet):
        module.to(device).eval().requires_grad_(False)
    if device.type == "cpu" and dtype == torch.bfloat16:
        unet.to(memory_format=torch.channels_last)  # bf16 convolutions on CPU: 4-5% faster per step
    if not settings.frame_by_frame:
        denoiser: VideoDenoiser = UNetMotionDenoiser(unet)
    else:
        denoiser = ImageSequentialDenoiser(UNetFramesDenoiser(unet), settings.frame_noise, settings.frame_batch)
    encoder = ClipPromptEncoder(tokenizer, text_encoder)
    seconds = time.perf_counter() - start
    return Loaded(encoder, denoiser, vae, scheduler_config, unet.config.sample_size, seconds, notes)
