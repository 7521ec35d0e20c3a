"""Motion scale: multiply what the temporal layers add (0 = the image model alone, 1 = as trained).

ComfyUI-AnimateDiff-Evolved calls it the motion "effect". A UNet motion module returns its input plus its
update, so the update is `output - input`; SD 3's temporal layers return the update itself. At 1 nothing is
hooked, so the result is bit-identical to a run without the option; at 0 the output is the input exactly.
"""

from __future__ import annotations

from torch import nn
from torch.utils.hooks import RemovableHandle


def scale_residual(modules: list[nn.Module], scale: float) -> list[RemovableHandle]:
    """Modules returning `input + update`: make them return `input + scale * update`."""
    if scale == 1.0:
        return []

    def hook(_module, args, output):
        x = args[0]
        return x + scale * (output - x)

    return [m.register_forward_hook(hook) for m in modules]


def scale_update(modules: list[nn.Module], scale: float) -> list[RemovableHandle]:
    """Modules returning only their update: make them return `scale * update`."""
    if scale == 1.0:
        return []
    return [m.register_forward_hook(lambda _m, _a, output: scale * output) for m in modules]
