"""The one denoising loop: any `VideoDenoiser`, any diffusers scheduler, an explicit list of timesteps."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor
from tqdm.auto import tqdm

from .adapters.base import Conditioning, VideoDenoiser

StepCallback = Callable[[int, Tensor, Tensor], None]  # (step index, timestep, latents after the step)


def step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator | None, eta: float) -> dict:
    """The optional `step()` arguments this scheduler accepts (DDIM's eta; the ancestral generator)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def denoise(
    denoiser: VideoDenoiser,
    scheduler: SchedulerMixin,
    latents: Tensor,
    timesteps: Tensor,
    cond: Conditioning,
    uncond: Conditioning | None = None,
    guidance_scale: float = 1.0,
    extra_step_kwargs: dict | None = None,
    progress: bool = True,
    callback: StepCallback | None = None,
) -> Tensor:
    """Walk `timesteps`, stepping latents (B, C, F, h, w); with `uncond`, one batched CFG pass per step."""
    both = Conditioning.cat([uncond, cond]) if uncond is not None else cond  # (2B, ...) or (B, ...)
    for i, t in enumerate(tqdm(timesteps, desc="denoising", unit="step", disable=not progress)):
        model_in = torch.cat([latents, latents]) if uncond is not None else latents  # (2B | B, C, F, h, w)
        model_in = scheduler.scale_model_input(model_in, t)
        out = denoiser.predict(model_in, t, both)  # (2B | B, C, F, h, w)
        if uncond is not None:
            out_uncond, out_cond = out.chunk(2)  # (B, C, F, h, w) each
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
        latents = scheduler.step(out, t, latents, **(extra_step_kwargs or {})).prev_sample  # (B, C, F, h, w)
        if callback is not None:
            callback(i, t, latents)
    return latents
