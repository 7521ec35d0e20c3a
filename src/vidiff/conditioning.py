"""Prompt conditioning: what prompt encoders produce and backbone adapters consume."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Conditioning:
    """Prompt conditioning for one side of classifier-free guidance, batch-first: one per video, or one per
    frame (prompt travel)."""

    embeds: Tensor  # (B, L, D) token embeddings, or (B, F, L, D) per frame
    pooled: Tensor | None = None  # (B, P) or (B, F, P) pooled embeddings, for backbones that take them (SD 3)

    @property
    def per_frame(self) -> bool:
        return self.embeds.dim() == 4

    def frames(self, index: Tensor | slice) -> Conditioning:
        """The conditioning of some frames (a window, a batch of frames); unchanged when it is per video."""
        if not self.per_frame:
            return self
        return Conditioning(self.embeds[:, index], None if self.pooled is None else self.pooled[:, index])

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
        return Conditioning(self.embeds[:, None].expand(-1, frames, -1, -1), pooled)  # (B, F, L, D)

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Stack conditionings along the batch, e.g. [uncond, cond] for one batched CFG pass (per frame if any
        part is)."""
        if any(p.per_frame for p in parts):
            frames = next(p.embeds.shape[1] for p in parts if p.per_frame)
            parts = [p.expand(frames) for p in parts]
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])  # (sum B, ...)
        return Conditioning(torch.cat([p.embeds for p in parts]), pooled)  # (sum B, ...)
