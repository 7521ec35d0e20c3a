"""The backbone contract the one denoising loop is written against.

Outside an adapter every latent is `(B, C, F, h, w)`. An adapter reshapes inside (frames into the batch for
a UNet, tokens for a DiT, one frame at a time for an image backbone) and returns the model output in the
same layout. What that output means (epsilon, v, flow velocity) is the scheduler's business, read from its
config, so the loop needs nothing else from the adapter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from ..conditioning import Conditioning
from ..errors import InvalidArgument
from ..lora import Lora
from ..settings import LoadSettings

__all__ = ["Conditioning", "FuseFrames", "Loaded", "LoadOptions", "VideoDenoiser", "per_frame"]

# x (N, F, C) and a temporal attention over (N, L, C) -> that attention per context window, fused (N, F, C)
FuseFrames = Callable[[Tensor, Callable[[Tensor], Tensor]], Tensor]


@dataclass(frozen=True)
class LoadOptions:
    """What a backbone's `build` needs besides the folder: the job's LoadSettings, dtype and device resolved."""

    settings: LoadSettings
    dtype: torch.dtype
    device: torch.device

    @property
    def loras(self) -> tuple[Lora, ...]:
        return tuple(Lora.parse(s, "--lora") for s in self.settings.loras)

    @property
    def motion_loras(self) -> tuple[Lora, ...]:
        return tuple(Lora.parse(s, "--motion-lora") for s in self.settings.motion_loras)

    def refuse_sd1_only(self, loras: bool = True) -> None:
        """Motion LoRAs and a replacement VAE (and image LoRAs, unless `loras` is False: the backbone takes
        them) apply to Stable Diffusion 1.x models only, for now."""
        s = self.settings
        for flag, given in (("--lora", loras and s.loras), ("--motion-lora", s.motion_loras), ("--vae", s.vae)):
            if given:
                raise InvalidArgument(flag, "applies to Stable Diffusion 1.x models only, for now")


@dataclass
class Loaded:
    """A backbone built from a folder: what `VideoPipeline` is made of."""

    prompt_encoder: Any  # text.PromptEncoder
    denoiser: VideoDenoiser
    vae: Any  # diffusers AutoencoderKL
    scheduler_config: dict
    sample_size: int  # the backbone's native latent size
    seconds: float  # wall time spent loading
    notes: list[str] = field(default_factory=list)  # what loading found out, for the user (detected versions)
    default_frames: int | None = None  # the frames its motion module was trained on; None: vidiff's default


def per_frame(t: Tensor, batch: int, frames: int) -> Tensor:
    """A scalar timestep, or one per video (B,), as one per frame (B*F,), frame-major per video."""
    return t.expand(batch).repeat_interleave(frames) if t.dim() == 0 else t.repeat_interleave(frames)


class VideoDenoiser(ABC):
    """A backbone that predicts the model output for a whole video latent at one timestep."""

    latent_channels: int
    max_frames: int | None  # the frame positional table's length; None when unbounded
    frames_independent = False  # each frame its own sample (frame by frame): guidance statistics per frame

    @property
    @abstractmethod
    def module(self) -> nn.Module:
        """The underlying torch module (for dtype, device, `torch.compile` and hooks)."""

    def check_frames(self, frames: int) -> None:
        """Refuse a frame count this backbone cannot make (default: more than its positional table)."""
        if self.max_frames is not None and frames > self.max_frames:
            raise InvalidArgument(
                "--frames", f"{frames} frames exceed the motion module's positional table of {self.max_frames}"
            )

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator, device, dtype) -> Tensor:
        """Starting noise (B, C, F, h, w) at unit variance: independent per frame unless an adapter says else."""
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    @abstractmethod
    def predict(self, latents: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """latents (B, C, F, h, w), timestep t (scalar, or (B,) in training), cond with batch B -> model output
        (B, C, F, h, w)."""

    def scale_motion(self, scale: float) -> list:
        """Scale what the temporal layers add (motion scale) until the returned hook handles are removed."""
        if scale != 1.0:
            raise InvalidArgument("--motion-scale", "needs AnimateDiff motion modules or vidiff temporal layers")
        return []

    def temporal_windows(self, fuse: FuseFrames) -> AbstractContextManager:
        """While inside: the temporal attention layers hand their frames to `fuse` (context scope `motion`)."""
        raise InvalidArgument("--context-scope", "'motion' needs AnimateDiff motion modules or vidiff temporal layers")

    def attention_modules(self) -> dict[str, nn.Module]:
        """Named attention modules that caches (Pyramid Attention Broadcast) may hook: diffusers' Attention."""
        from diffusers.models.attention_processor import Attention

        return {name: m for name, m in self.module.named_modules() if isinstance(m, Attention)}

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device
