"""Pyramid Attention Broadcast: skip attention in the middle of the schedule and reuse its last output.

Attention outputs change little between neighbouring timesteps, cross-attention least, then temporal,
then spatial, so each kind is recomputed every N-th call only (spatial 2, temporal 3, cross 6 by default,
VideoSys's and diffusers' values) while the timestep lies inside its range (100-800). Which attention is
which kind is declared per backbone by its spec (`specs.py`, `attention_rules`): in the SD 1.x motion UNet
the motion modules' attentions are temporal, in SD 3 the joint attention is spatial, in Latte the
`temporal_transformer_blocks` are temporal.
"""

from __future__ import annotations

import re

from torch import nn

from .configs import KINDS, PABConfig
from .reuse import ReuseCache

AttentionRules = tuple[tuple[str, str], ...]  # (regex on the module name, kind), first match wins


def attention_kinds(rules: AttentionRules, modules: dict[str, nn.Module]) -> dict[str, str]:
    """Module name -> 'spatial' | 'temporal' | 'cross' for a backbone's named attention modules."""
    kinds = {}
    for name in modules:
        kind = next((k for pattern, k in rules if re.search(pattern, name)), None)
        if kind is not None:
            kinds[name] = kind
    return kinds


class PyramidAttentionBroadcast(ReuseCache):
    """PAB on one denoiser's attention modules: `apply_pab` makes it; the loop calls `reset` and `step`."""

    hook_name = "vidiff_pab"
    kinds = KINDS

    def __init__(self, modules: dict[str, nn.Module], rules: AttentionRules, config: PABConfig) -> None:
        self.config = config
        kinds = attention_kinds(rules, modules)
        super().__init__({n: (modules[n], k, config.skip(k), config.range(k)) for n, k in kinds.items()})


def apply_pab(denoiser, rules: AttentionRules, config: PABConfig | None = None) -> PyramidAttentionBroadcast:
    """Hook Pyramid Attention Broadcast into a vidiff denoiser's attention modules, told apart by `rules`."""
    return PyramidAttentionBroadcast(denoiser.attention_modules(), rules, config or PABConfig())


def remove_pab(pab: PyramidAttentionBroadcast) -> None:
    pab.remove()
