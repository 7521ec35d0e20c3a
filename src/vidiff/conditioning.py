"""Prompt conditioning: what prompt encoders produce and backbone adapters consume."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


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
