"""Stable Diffusion 3 / 3.5 (MMDiT) over a video: frames ride in the batch; temporal layers, if any, mix them.

`build` loads an SD 3 folder (three text encoders, T5 optional) and vidiff's temporal layers (the motion
module argument); without them, or in sequential mode, frames are denoised one by one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from torch import Tensor, nn

from ..loading import load_part, require_parts
from ..lora import SD3_TARGET, apply_loras
from ..motion.scale import scale_update
from ..motion.sd3_temporal import SD3TemporalLayers
from ..text import SD3PromptEncoder
from .base import Conditioning, FuseFrames, Loaded, LoadOptions, VideoDenoiser, per_frame
from .image_sequential import ImageSequentialDenoiser

PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


class SD3Denoiser(VideoDenoiser):
    """Without temporal layers every frame is denoised on its own, exactly as the image pipeline would."""

    def __init__(self, transformer: SD3Transformer2DModel, temporal: SD3TemporalLayers | None = None) -> None:
        self.transformer = transformer
        self.temporal = temporal
        self.latent_channels = transformer.config.in_channels
        self.max_frames = temporal.config["max_frames"] if temporal is not None else None
        if temporal is not None:
            temporal.to(transformer.device, transformer.dtype)
            temporal.attach(transformer)

    @property
    def module(self) -> nn.Module:
        return self.transformer

    def attention_modules(self) -> dict[str, nn.Module]:
        found = super().attention_modules()
        if self.temporal is not None:
            found |= {f"temporal.layers.{i}": layer for i, layer in self.temporal.layers.items()}
        return found

    def scale_motion(self, scale: float) -> list:
        if self.temporal is None:
            return super().scale_motion(scale)
        return scale_update(list(self.temporal.layers.values()), scale)

    @contextmanager
    def temporal_windows(self, fuse: FuseFrames) -> Iterator[None]:
        for layer in self.temporal.layers.values():
            layer.fuse = fuse
        try:
            yield
        finally:
            for layer in self.temporal.layers.values():
                layer.fuse = None

    def predict(self, latents: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        b, c, f, h, w = latents.shape
        frames = latents.transpose(1, 2).reshape(b * f, c, h, w)  # (B*F, C, h, w)
        embeds, pooled = cond.flat(f)  # (B*F, L, D), (B*F, P)
        if self.temporal is not None:
            self.temporal.frames = f  # num_frames for the hooks: tokens are (B*F, N, C) inside
        out = self.transformer(
            hidden_states=frames,
            timestep=per_frame(t, b, f),
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]  # (B*F, C, h, w)
        return out.reshape(b, f, c, h, w).transpose(1, 2)  # (B, C, F, h, w)


def load_text_encoders(folder: Path, dtype, use_t5: bool = True) -> tuple[list, list]:
    """([CLIP-L, CLIP-G, T5 or None] tokenizers, the same encoders) of an SD 3 folder."""
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    tokenizers = [load_part(CLIPTokenizer.from_pretrained, folder / p) for p in ("tokenizer", "tokenizer_2")]
    encoders = [
        load_part(CLIPTextModelWithProjection.from_pretrained, folder / p, dtype=dtype)
        for p in ("text_encoder", "text_encoder_2")
    ]
    has_t5 = use_t5 and (folder / "text_encoder_3").is_dir()
    tokenizers.append(load_part(AutoTokenizer.from_pretrained, folder / "tokenizer_3") if has_t5 else None)
    encoders.append(
        load_part(T5EncoderModel.from_pretrained, folder / "text_encoder_3", dtype=dtype) if has_t5 else None
    )
    return tokenizers, encoders


def build(folder: Path, options: LoadOptions) -> Loaded:
    """An SD 3 / 3.5 folder as a video backbone (the `sd3` spec)."""
    start = time.perf_counter()
    require_parts(folder, PARTS, "SD 3")
    options.refuse_sd1_only(loras=False)
    settings = options.settings
    dtype = options.dtype
    tokenizers, encoders = load_text_encoders(folder, dtype, settings.use_t5)
    transformer = load_part(SD3Transformer2DModel.from_pretrained, folder / "transformer", torch_dtype=dtype)
    vae = load_part(AutoencoderKL.from_pretrained, folder / "vae", torch_dtype=dtype)
    config = dict(load_part(FlowMatchEulerDiscreteScheduler.load_config, folder / "scheduler"))
    for module in (*[e for e in encoders if e is not None], transformer, vae):
        module.to(options.device).eval().requires_grad_(False)
    notes = apply_loras(transformer, {}, list(options.loras), "--lora", fuse=settings.fuse_loras, target=SD3_TARGET)
    temporal = SD3TemporalLayers.load(settings.motion_module) if settings.motion_module else None
    if temporal is not None and not settings.frame_by_frame:
        denoiser: VideoDenoiser = SD3Denoiser(transformer, temporal)
    else:
        denoiser = ImageSequentialDenoiser(SD3Denoiser(transformer), settings.frame_noise, settings.frame_batch)
    encoder = SD3PromptEncoder(tokenizers, encoders, transformer.config.joint_attention_dim)
    return Loaded(
        encoder, denoiser, vae, config, transformer.config.sample_size, time.perf_counter() - start, notes=notes
    )
