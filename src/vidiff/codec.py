"""The latent codec: a VAE and the rules of its latent space, asked by every place that maps pixels to latents.

Frames (F, H, W, 3) uint8 <-> scaled latents (C, F', h, w), in frame chunks. `temporal` is how many pixel
frames one latent frame holds: 1 for image VAEs (every backbone today); a video VAE that compresses time
(CogVideoX, Wan, LTX: 4, with the first frame on its own) maps F pixel frames to 1 + (F - 1) / 4 latent frames.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch import Tensor

from .errors import InvalidArgument


@dataclass
class LatentCodec:
    vae: AutoencoderKL
    space: str  # latent space name: models of one space share latents ("sd1", "sd3")
    temporal: int = 1  # pixel frames per latent frame

    @property
    def channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def scaling(self) -> float:
        return self.vae.config.scaling_factor

    @property
    def shift(self) -> float:
        return self.vae.config.get("shift_factor") or 0.0

    @property
    def spatial(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def latent_frames(self, frames: int) -> int:
        """Latent frames for `frames` pixel frames."""
        if self.temporal == 1:
            return frames
        if (frames - 1) % self.temporal:
            raise InvalidArgument("--frames", f"this VAE makes 1 + {self.temporal}k frames, got {frames}")
        return 1 + (frames - 1) // self.temporal

    def pixel_frames(self, latent_frames: int) -> int:
        return latent_frames if self.temporal == 1 else 1 + (latent_frames - 1) * self.temporal

    def latent_shape(self, batch: int, frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        """(B, C, F', h, w) for a video of `frames` pixel frames at height x width pixels."""
        return batch, self.channels, self.latent_frames(frames), height // self.spatial, width // self.spatial

    def pixel_size(self, latents: Tensor) -> tuple[int, int, int]:
        """(frames, height, width) in pixels of latents (B, C, F', h, w)."""
        _, _, f, h, w = latents.shape
        return self.pixel_frames(f), h * self.spatial, w * self.spatial

    def latent_mask(self, mask: np.ndarray) -> Tensor:
        """A pixel mask (F, H, W) in [0, 1], 1 = repaint -> (1, 1, F', h, w) binary: a latent cell is repainted
        when most of the pixels (and frames) it covers are."""
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]  # (1, 1, F, H, W)
        f, h, w = self.latent_frames(mask.shape[0]), mask.shape[1] // self.spatial, mask.shape[2] // self.spatial
        return (torch.nn.functional.interpolate(m, size=(f, h, w), mode="area") > 0.5).float()  # (1, 1, F', h, w)

    @torch.inference_mode()
    def decode(self, latents: Tensor, chunk_size: int = 8) -> Iterator[np.ndarray]:
        """One video's latents (C, F, h, w) -> (n, H, W, 3) uint8 chunks; the whole video is never decoded at once."""
        if chunk_size < 1:
            raise InvalidArgument("--decode-chunk-size", f"must be >= 1, got {chunk_size}")
        vae = self.vae
        for i in range(0, latents.shape[1], chunk_size):
            z = latents[:, i : i + chunk_size].transpose(0, 1)  # (n, C, h, w)
            z = z.to(vae.device, vae.dtype) / self.scaling + self.shift
            pixels = vae.decode(z).sample.float()  # (n, 3, H, W) in [-1, 1]
            pixels = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            yield pixels.permute(0, 2, 3, 1).cpu().numpy()  # (n, H, W, 3)

    @torch.inference_mode()
    def encode(self, frames: np.ndarray, chunk_size: int = 8) -> Tensor:
        """Frames (F, H, W, 3) uint8 -> scaled latents (C, F, h, w): the VAE posterior means (deterministic)."""
        vae, out = self.vae, []
        for i in range(0, len(frames), chunk_size):
            x = torch.from_numpy(np.ascontiguousarray(frames[i : i + chunk_size])).permute(0, 3, 1, 2)  # (n, 3, H, W)
            x = x.to(vae.device, vae.dtype) / 127.5 - 1.0
            out.append((vae.encode(x).latent_dist.mean - self.shift) * self.scaling)  # (n, C, h, w)
        return torch.cat(out).transpose(0, 1)  # (C, F, h, w)
