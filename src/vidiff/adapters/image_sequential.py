"""Any image backbone as a video denoiser: frames are independent images, made coherent only by their noise.

As on hardware without temporal layers: every frame starts from one shared base noise plus a small
per-frame perturbation and is denoised with the same prompt and schedule. Frames never interact, so they
run as one batch.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from .base import Conditioning, VideoDenoiser

DEFAULT_FRAME_NOISE = 0.05


class ImageSequentialDenoiser(VideoDenoiser):
    """An SD 1.x image UNet applied to every frame independently."""

    family = "sd1"
    max_frames = None

    def __init__(
        self, unet: UNet2DConditionModel, frame_noise: float = DEFAULT_FRAME_NOISE, frame_batch: int | None = None
    ) -> None:
        self.unet = unet
        self.latent_channels = unet.config.in_channels
        self.frame_noise = frame_noise
        self.frame_batch = frame_batch  # frames per UNet call; None: all at once

    @property
    def module(self) -> nn.Module:
        return self.unet

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator, device, dtype) -> Tensor:
        b, c, f, h, w = shape
        base = randn_tensor((b, c, 1, h, w), generator=generator, device=device, dtype=dtype)  # (B, C, 1, h, w)
        per_frame = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # (B, C, F, h, w)
        return base + self.frame_noise * per_frame

    def predict(self, latents: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        b, c, f, h, w = latents.shape
        frames = latents.transpose(1, 2).reshape(b * f, c, h, w)  # (B*F, C, h, w)
        embeds = cond.embeds.repeat_interleave(f, dim=0)  # (B*F, L, D)
        n = self.frame_batch or b * f
        out = torch.cat(
            [
                self.unet(frames[i : i + n], t, encoder_hidden_states=embeds[i : i + n]).sample
                for i in range(0, b * f, n)
            ]
        )  # (B*F, C, h, w)
        return out.reshape(b, f, c, h, w).transpose(1, 2)  # (B, C, F, h, w)
