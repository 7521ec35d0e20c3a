"""The backbone contract the one denoising loop is written against.

Outside an adapter every latent is `(B, C, F, h, w)`. An adapter reshapes inside (frames into the batch for
a UNet, tokens for a DiT, one frame at a time for an image backbone) and returns the model output in the
same layout. What that output means (epsilon, v, flow velocity) is the scheduler's business, read from its
config, so the loop needs nothing else from the adapter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

from ..errors import InvalidArgument


@dataclass
class Conditioning:
    """Prompt conditioning for one side of classifier-free guidance, batch-first."""

    embeds: Tensor  # (B, L, D) token embeddings
    pooled: Tensor | None = None  # (B, P) pooled embeddings, for backbones that take them (SD 3)

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Stack conditionings along the batch, e.g. [uncond, cond] for one batched CFG pass."""
        out = {}
        for f in fields(Conditioning):
            values = [getattr(p, f.name) for p in parts]
            out[f.name] = None if values[0] is None else torch.cat(values)  # (sum B, ...)
        return Conditioning(**out)


class VideoDenoiser(ABC):
    """A backbone that predicts the model output for a whole video latent at one timestep."""

    family: str  # latent family: models of one family share a VAE latent space ("sd1", "sd3")
    pab_family: str | None = None  # which attention-naming rules apply (default: the family's)
    latent_channels: int
    max_frames: int | None  # the frame positional table's length; None when unbounded

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
        """latents (B, C, F, h, w), scalar timestep t, cond with batch B -> model output (B, C, F, h, w)."""

    def attention_modules(self) -> dict[str, nn.Module]:
        """Named attention modules that caches (Pyramid Attention Broadcast) may hook: diffusers' Attention."""
        from diffusers.models.attention_processor import Attention

        return {name: m for name, m in self.module.named_modules() if isinstance(m, Attention)}

    def deep_modules(self) -> dict[str, nn.Module]:
        """Named blocks whose outputs a DeepCache-style cache may reuse: in a UNet every block but the outermost
        down and up blocks (so each step still runs its full-resolution edges); none in other backbones."""
        m = self.module
        if not all(hasattr(m, a) for a in ("down_blocks", "mid_block", "up_blocks")):
            return {}
        names = [f"down_blocks.{i}" for i in range(1, len(m.down_blocks))] + ["mid_block"]
        names += [f"up_blocks.{i}" for i in range(len(m.up_blocks) - 1)]
        return {name: m.get_submodule(name) for name in names}

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device
