"""An SD 1.x image UNet over the frames of a video: each frame denoised on its own, all in one batch."""

from __future__ import annotations

from diffusers import UNet2DConditionModel
from torch import Tensor, nn

from .base import Conditioning, VideoDenoiser


class UNetFramesDenoiser(VideoDenoiser):
    family = "sd1"
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
        embeds = cond.embeds.repeat_interleave(f, dim=0)  # (B*F, L, D)
        out = self.unet(frames, t, encoder_hidden_states=embeds).sample  # (B*F, C, h, w)
        return out.reshape(b, f, c, h, w).transpose(1, 2)  # (B, C, F, h, w)
