"""Any image backbone as a video denoiser: frames are independent images, made coherent only by their noise.

As on hardware without temporal layers: every frame starts from one shared base noise plus a small
per-frame perturbation and is denoised with the same prompt and schedule. Frames never interact, so they
run in batches of `frame_batch` (all at once by default) with the same result as one at a time.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from ..names import DEFAULT_FRAME_NOISE
from .base import Conditioning, VideoDenoiser


class ImageSequentialDenoiser(VideoDenoiser):
    """Wraps a frame-independent denoiser (an image UNet or DiT over frames)."""

    max_frames = None
    frames_independent = True

    def __init__(self, image: VideoDenoiser, frame_noise: float = DEFAULT_FRAME_NOISE, frame_batch: int | None = None):
        self.image = image
        self.latent_channels = image.latent_channels
        self.frame_noise = frame_noise
        self.frame_batch = frame_batch  # frames per backbone call; None: all at once

    @property
    def module(self) -> nn.Module:
        return self.image.module

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator, device, dtype) -> Tensor:
        b, c, f, h, w = shape
        base = randn_tensor((b, c, 1, h, w), generator=generator, device=device, dtype=dtype)  # (B, C, 1, h, w)
        per_frame = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # (B, C, F, h, w)
        return base + self.frame_noise * per_frame

    def predict(self, latents: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        f = latents.shape[2]
        n = self.frame_batch or f
        parts = [self.image.predict(latents[:, :, i : i + n], t, cond.frames(slice(i, i + n))) for i in range(0, f, n)]
        return torch.cat(parts, dim=2)  # (B, C, F, h, w)

    def attention_modules(self) -> dict[str, nn.Module]:
        return self.image.attention_modules()
