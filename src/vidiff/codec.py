"""The VAE in frame chunks: frames (F, H, W, 3) uint8 <-> scaled latents (C, F, h, w)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch import Tensor


def _scale_shift(vae: AutoencoderKL) -> tuple[float, float]:
    return vae.config.scaling_factor, vae.config.get("shift_factor") or 0.0


@torch.inference_mode()
def decode_frames(vae: AutoencoderKL, latents: Tensor, chunk_size: int = 8) -> Iterator[np.ndarray]:
    """One video's latents (C, F, h, w) -> (n, H, W, 3) uint8 chunks; the whole video is never decoded at once."""
    scaling, shift = _scale_shift(vae)
    for i in range(0, latents.shape[1], chunk_size):
        z = latents[:, i : i + chunk_size].transpose(0, 1)  # (n, C, h, w)
        z = z.to(vae.device, vae.dtype) / scaling + shift
        pixels = vae.decode(z).sample.float()  # (n, 3, H, W) in [-1, 1]
        pixels = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        yield pixels.permute(0, 2, 3, 1).cpu().numpy()  # (n, H, W, 3)


@torch.inference_mode()
def encode_frames(vae: AutoencoderKL, frames: np.ndarray, chunk_size: int = 8) -> Tensor:
    """Frames (F, H, W, 3) uint8 -> scaled latents (C, F, h, w): the VAE posterior means (deterministic)."""
    scaling, shift = _scale_shift(vae)
    out = []
    for i in range(0, len(frames), chunk_size):
        x = torch.from_numpy(np.ascontiguousarray(frames[i : i + chunk_size])).permute(0, 3, 1, 2)  # (n, 3, H, W)
        x = x.to(vae.device, vae.dtype) / 127.5 - 1.0
        out.append((vae.encode(x).latent_dist.mean - shift) * scaling)  # (n, C, h, w)
    return torch.cat(out).transpose(0, 1)  # (C, F, h, w)
