"""LoRAs in AnimateDiff's own layout, merged into the weights as the original loader does.

Keys are `<layer path>.processor.<to_q|to_k|to_v|to_out>_lora.<down|up>.weight`: v3's domain adapter (on the
spatial attention) and the v2 motion LoRAs (`v2_lora_PanLeft.ckpt` ..., on the motion modules). Each pair
adds `scale * up @ down` to the weight it names (`to_out` is `to_out.0` in diffusers).
"""

from __future__ import annotations

import re

import torch
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from torch import nn

from ..errors import LoadError

LORA_KEY = re.compile(r"(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.down\.weight")


def is_original_lora(state: dict[str, torch.Tensor]) -> bool:
    """AnimateDiff's own layout; diffusers' conversions of it carry a `unet.` prefix and go to diffusers."""
    return any(LORA_KEY.fullmatch(k) for k in state) and not any(k.startswith("unet.") for k in state)


def _target(layer: str, proj: str) -> str:
    """The diffusers parameter a LoRA pair updates: motion-module paths go through diffusers' own renaming."""
    name = f"{layer}.{proj}.weight".replace(".to_out.weight", ".to_out.0.weight")
    if ".motion_modules." in name and ".temporal_transformer." in name:
        name = next(iter(convert_animatediff_checkpoint_to_diffusers({name: torch.zeros(0)})))
    return name


@torch.no_grad()
def merge_original_lora(module: nn.Module, state: dict[str, torch.Tensor], scale: float, argument: str) -> int:
    """Add every LoRA pair in `state` into `module`'s weights at `scale`; returns the layers updated."""
    params = dict(module.named_parameters())
    updated = 0
    for key, down in state.items():
        match = LORA_KEY.fullmatch(key)
        if match is None:
            continue
        up = state.get(key.replace(".down.", ".up."))
        target = params.get(_target(*match.groups()))
        if up is None or target is None or target.shape != (up.shape[0], down.shape[1]):
            raise LoadError(argument, f"LoRA layer {match.group(1)} does not fit this model")
        target += scale * (up.float() @ down.float()).to(target.dtype)  # (out, r) @ (r, in)
        updated += 1
    return updated
