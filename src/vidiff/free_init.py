"""FreeInit (Wu et al. 2023): sample N times, each pass re-initialised from the last result's low frequencies.

After a pass, its result is diffused back to the last training timestep with the first pass's noise; the
low spatio-temporal frequencies of that are kept and the high ones drawn fresh, which makes the initial
noise agree with what the model makes of it (steadier videos). The low-pass filters (`butterworth`,
`gaussian`, `ideal`) and the frequency mix are diffusers' own (`FreeInitMixin`); `box` keeps each axis's
frequencies below its stop frequency independently.
"""

from __future__ import annotations

import torch
from diffusers.pipelines.free_init_utils import FreeInitMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor


def low_pass(shape: tuple[int, ...], method: str, order: int, spatial: float, temporal: float, device) -> Tensor:
    """A (1, C, F, h, w) low-pass mask over centred (fftshift-ed) frequencies."""
    if method != "box":
        return FreeInitMixin._get_free_init_freq_filter(None, shape, device, method, order, spatial, temporal)
    _, _, f, h, w = shape
    axis = lambda n, stop: ((torch.arange(n) - n // 2).abs() * 2 / n <= stop).float()  # noqa: E731
    mask = axis(f, temporal)[:, None, None] * axis(h, spatial)[None, :, None] * axis(w, spatial)[None, None, :]
    return mask.expand(shape[1:]).unsqueeze(0).to(device)  # (1, C, F, h, w)


def reinitialize(
    latents: Tensor, initial: Tensor, scheduler: SchedulerMixin, generator: torch.Generator, mask: Tensor
) -> Tensor:
    """The next pass's starting latents (B, C, F, h, w) from the last pass's result and the first noise."""
    last = scheduler.config.num_train_timesteps - 1
    diffused = scheduler.add_noise(latents, initial, torch.full((latents.shape[0],), last).long()).float()
    fresh = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=torch.float32)
    return FreeInitMixin._apply_freq_filter(None, diffused, fresh, mask).to(latents.dtype)
