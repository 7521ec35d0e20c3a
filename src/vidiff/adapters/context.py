"""Context windows: videos longer than the temporal layers' table, as overlapping windows fused per frame.

A wrapper over any temporal backbone adapter. Two scopes:
- `backbone` (ComfyUI-AnimateDiff-Evolved's context options): each step, the whole backbone predicts every
  window of `length` frames on its own and the predictions are averaged per frame with a weight that
  favours the window's centre. Working memory is set by the window, not the video.
- `motion` (diffusers' `enable_free_noise`, Evolved's view options): one backbone call sees every frame;
  only the temporal attention runs per window, fused per frame before the temporal feed-forward. The
  spatial layers' memory grows with the video.
The loop, caches (PAB and DeepCache cache per call position, so per window), latents interchange and
resume see one ordinary denoiser.

- schedules: `uniform` (windows every `stride` frames, the last one ending on the last frame), `looped`
  (windows wrap from the end to the start, for seamless loops), `static` (back to back, the last one
  moved to end on the last frame).
- fuse weights: `flat` (1), `pyramid` (rising to the window's centre), `gauss` (a Gaussian around it),
  `delayed_reverse_sawtooth` (diffusers': 0.01 in the first half, then falling from the centre).
- FreeNoise initial noise (Qiu et al. 2023): `shuffle` draws noise for every frame, then gives each later
  block of `stride` frames a shuffle of the frames one window before it (as diffusers' `shuffle_context`
  does), so windows share their noise; `repeat` repeats the first window's noise; `random` draws each
  frame's own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from ..names import NOISE_TYPES
from ..windowing import DEFAULT_LENGTH, ContextOptions
from .base import Conditioning, VideoDenoiser

__all__ = ["DEFAULT_LENGTH", "ContextOptions", "ContextWindowDenoiser", "fuse_windows", "windows"]


def windows(frames: int, length: int, stride: int, schedule: str = "uniform") -> list[list[int]]:
    """Frame indices of each window; one window of every frame when the video fits."""
    if frames <= length:
        return [list(range(frames))]
    if schedule == "looped":
        return [[(s + i) % frames for i in range(length)] for s in range(0, frames, stride)]
    step = length if schedule == "static" else stride
    starts = list(range(0, frames - length + 1, step))
    if starts[-1] + length < frames:
        starts.append(frames - length)  # the last window ends on the last frame
    return [list(range(s, s + length)) for s in starts]


def fuse_weights(length: int, fuse: str) -> Tensor:
    """Per-frame weight inside a window (length,)."""
    i = torch.arange(length, dtype=torch.float32)
    if fuse == "flat":
        return torch.ones(length)
    if fuse == "pyramid":
        return torch.minimum(i + 1, length - i)
    if fuse == "delayed_reverse_sawtooth":  # length 4: [0.01, 2, 2, 1]; 5: [0.01, 0.01, 3, 2, 1]
        mid = (length + 1) // 2
        return torch.where(i < (length - 1) // 2, 0.01, torch.minimum(torch.tensor(float(mid)), length - i))
    centre, sigma = (length - 1) / 2, max(length / 4, 1.0)
    return torch.exp(-((i - centre) ** 2) / (2 * sigma**2))


def fuse_windows(like: Tensor, dim: int, predict: Callable[[Tensor], Tensor], options: ContextOptions) -> Tensor:
    """`predict(frame indices)` for every window, averaged per frame along `dim` of `like` with the fuse weights."""
    frames = like.shape[dim]
    shape = [1] * like.dim()
    shape[dim] = -1
    out = torch.zeros_like(like)
    total = torch.zeros(frames, dtype=like.dtype, device=like.device)  # (F,)
    weight = fuse_weights(options.length, options.fuse).to(like.device, like.dtype)  # (L,)
    for window in windows(frames, options.length, options.step, options.schedule):
        idx = torch.tensor(window, device=like.device)
        out.index_add_(dim, idx, predict(idx) * weight.view(shape))
        total.index_add_(0, idx, weight)
    return out / total.view(shape)


class ContextWindowDenoiser(VideoDenoiser):
    """Wraps a temporal denoiser: windows of `options.length` frames, fused per frame."""

    max_frames = None

    def __init__(self, inner: VideoDenoiser, options: ContextOptions) -> None:
        options.validate()
        self.inner, self.options = inner, options.resolved()  # an open length: 16 frames
        self.latent_channels = inner.latent_channels

    @property
    def module(self) -> nn.Module:
        return self.inner.module

    def check_frames(self, frames: int) -> None:
        self.inner.check_frames(min(frames, self.options.length))

    def attention_modules(self) -> dict[str, nn.Module]:
        return self.inner.attention_modules()

    def scale_motion(self, scale: float) -> list:
        return self.inner.scale_motion(scale)

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator, device, dtype) -> Tensor:
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # (B, C, F, h, w)
        frames, length, stride = shape[2], self.options.length, self.options.step
        kind = NOISE_TYPES[self.options.noise]
        if kind == "repeat":
            return noise[:, :, torch.arange(frames) % length]
        if kind == "shuffle":
            for i in range(length, frames, stride):
                start = max(0, i - length)
                end = min(frames, start + stride)
                order = torch.arange(start, end)[torch.randperm(end - start, generator=generator)]
                take = order[: min(frames, i + len(order)) - i]
                noise[:, :, i : i + len(take)] = noise[:, :, take]
        return noise

    def predict(self, latents: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        o = self.options
        if latents.shape[2] <= o.length:
            return self.inner.predict(latents, t, cond)
        if o.motion_only:
            with self.inner.temporal_windows(self.fuse_frames):
                return self.inner.predict(latents, t, cond)
        return fuse_windows(latents, 2, lambda idx: self.inner.predict(latents[:, :, idx], t, cond.frames(idx)), o)

    def fuse_frames(self, x: Tensor, attend: Callable[[Tensor], Tensor]) -> Tensor:
        """x (N, F, C) -> `attend` per window (N, L, C), fused per frame (N, F, C): the temporal layers' hook
        (installed by `predict` only for videos longer than a window)."""
        return fuse_windows(x, 1, lambda idx: attend(x[:, idx]), self.options)
