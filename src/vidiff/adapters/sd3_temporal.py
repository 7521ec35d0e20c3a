"""Stable Diffusion 3 / 3.5 (MMDiT) over a video: frames ride in the batch; temporal layers, if any, mix them."""

from __future__ import annotations

from diffusers import SD3Transformer2DModel
from torch import Tensor, nn

from ..motion.sd3_temporal import SD3TemporalLayers
from .base import Conditioning, VideoDenoiser


class SD3Denoiser(VideoDenoiser):
    """Without temporal layers every frame is denoised on its own, exactly as the image pipeline would."""

    family = "sd3"

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

    def predict(self, latents: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        b, c, f, h, w = latents.shape
        frames = latents.transpose(1, 2).reshape(b * f, c, h, w)  # (B*F, C, h, w)
        embeds = cond.embeds.repeat_interleave(f, dim=0)  # (B*F, L, D)
        pooled = cond.pooled.repeat_interleave(f, dim=0)  # (B*F, P)
        if self.temporal is not None:
            self.temporal.frames = f  # num_frames for the hooks: tokens are (B*F, N, C) inside
        out = self.transformer(
            hidden_states=frames,
            timestep=t.expand(b * f),
            encoder_hidden_states=embeds,
            pooled_projections=pooled,
            return_dict=False,
        )[0]  # (B*F, C, h, w)
        return out.reshape(b, f, c, h, w).transpose(1, 2)  # (B, C, F, h, w)
