"""Prompt conditioning: what prompt encoders produce and backbone adapters consume."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .controlnets import Control
    from .ip_adapter import ImageCond


@dataclass
class Conditioning:
    """Prompt conditioning for one side of classifier-free guidance, batch-first: one per video, or one per
    frame (prompt travel); and the ControlNets steering both sides (their images per frame)."""

    embeds: Tensor  # (B, L, D) token embeddings, or (B, F, L, D) per frame
    pooled: Tensor | None = None  # (B, P) or (B, F, P) pooled embeddings, for backbones that take them (SD 3)
    control: tuple[Control, ...] = ()  # ControlNets and SparseCtrl, images for every frame
    image: ImageCond | None = None  # the IP-Adapter's image embeddings (this side's) and scale

    @property
    def per_frame(self) -> bool:
        return self.embeds.dim() == 4

    def frames(self, index: Tensor | slice) -> Conditioning:
        """The conditioning of some frames (a window, a batch of frames): per-frame prompts and control images."""
        control = tuple(c.frames(index) for c in self.control)
        image = None if self.image is None else self.image.frames(index)
        if not self.per_frame:
            return replace(self, control=control, image=image)
        pooled = None if self.pooled is None else self.pooled[:, index]
        return Conditioning(self.embeds[:, index], pooled, control, image)

    def at_step(self, i: int, steps: int) -> Conditioning:
        """As it acts at step i of the full schedule: without the ControlNets whose span does not cover it."""
        if not self.control:
            return self
        return replace(self, control=tuple(c for c in self.control if c.at_step(i, steps) is not None))

    def flat(self, frames: int) -> tuple[Tensor, Tensor | None]:
        """(B*F, L, D) embeddings and (B*F, P) pooled ones, frame-major per video, for frames in the batch."""
        if self.per_frame:
            pooled = None if self.pooled is None else self.pooled.flatten(0, 1)  # (B*F, P)
            return self.embeds.flatten(0, 1), pooled  # (B*F, L, D)
        pooled = None if self.pooled is None else self.pooled.repeat_interleave(frames, dim=0)  # (B*F, P)
        return self.embeds.repeat_interleave(frames, dim=0), pooled  # (B*F, L, D)

    def expand(self, frames: int) -> Conditioning:
        """Per frame: the same conditioning on every frame."""
        if self.per_frame:
            return self
        pooled = None if self.pooled is None else self.pooled[:, None].expand(-1, frames, -1)  # (B, F, P)
        embeds = self.embeds[:, None].expand(-1, frames, -1, -1)  # (B, F, L, D)
        return Conditioning(embeds, pooled, self.control, self.image)

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Stack conditionings along the batch, e.g. [uncond, cond] for one batched CFG pass (per frame if any
        part is); the ControlNets (shared by the parts) are kept once."""
        if any(p.per_frame for p in parts):
            frames = next(p.embeds.shape[1] for p in parts if p.per_frame)
            parts = [p.expand(frames) for p in parts]
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])  # (sum B, ...)
        control = next((p.control for p in parts if p.control), ())
        images = [p.image for p in parts if p.image is not None]
        image = images[0] if images else None
        for other in images[1:]:
            image = image.cat(other)
        return Conditioning(torch.cat([p.embeds for p in parts]), pooled, control, image)  # (sum B, ...)
