"""The one denoising loop: any `VideoDenoiser`, any diffusers scheduler, an explicit list of timesteps."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor
from tqdm.auto import tqdm

from .adapters.base import Conditioning, VideoDenoiser
from .schedules import add_noise, scale_model_input

StepCallback = Callable[[int, Tensor, Tensor], None]  # (steps done in the full list, timestep, latents)


class Cache(Protocol):
    """An accelerator with state across steps (PAB, DeepCache): reset per run, told each timestep, removable."""

    def reset(self) -> None: ...

    def step(self, timestep: float) -> None: ...

    def remove(self) -> None: ...


@dataclass
class Inpaint:
    """Keep the region outside `mask` equal to the source: re-noised to each next timestep, exact at the end."""

    source: Tensor  # (B, C, F, h, w) clean latents of the source video
    mask: Tensor  # (B, 1, F, h, w), 1 where the model repaints
    noise: Tensor  # (B, C, F, h, w) the noise the source is re-noised with


def step_kwargs(scheduler: SchedulerMixin, generator: torch.Generator | None, eta: float) -> dict:
    """The optional `step()` arguments this scheduler accepts (DDIM's eta; the ancestral generator)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def rescale_guidance(guided: Tensor, cond: Tensor, phi: float, per_frame: bool) -> Tensor:
    """diffusers' `rescale_noise_cfg` on (B, C, F, h, w): statistics over each video, as its AnimateDiff-SDXL
    pipeline takes them, or over each frame where frames are separate samples (as its image pipelines do)."""
    if not per_frame:
        return rescale_noise_cfg(guided, cond, phi)  # (B, C, F, h, w)
    b = guided.shape[0]
    frames = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731  (B*F, C, h, w)
    out = rescale_noise_cfg(frames(guided), frames(cond), phi)  # (B*F, C, h, w)
    return out.unflatten(0, (b, -1)).transpose(1, 2)  # (B, C, F, h, w)


def denoise(
    denoiser: VideoDenoiser,
    scheduler: SchedulerMixin,
    latents: Tensor,
    timesteps: Tensor,
    cond: Conditioning,
    uncond: Conditioning | None = None,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    extra_step_kwargs: dict | None = None,
    progress: bool = True,
    callback: StepCallback | None = None,
    begin: int = 0,
    stop: int | None = None,
    inpaint: Inpaint | None = None,
    caches: Sequence[Cache] = (),
) -> Tensor:
    """Walk timesteps[begin:stop], stepping latents (B, C, F, h, w); with `uncond`, one batched CFG pass per step
    (`guidance_rescale`: diffusers' std rescaling of the guided prediction, over each video's C, F, h, w)."""
    both = Conditioning.cat([uncond, cond]) if uncond is not None else cond  # (2B, ...) or (B, ...)
    stop = len(timesteps) if stop is None else stop
    for cache in caches:
        cache.reset()  # no state crosses generations
    for i in tqdm(range(begin, stop), desc="denoising", unit="step", disable=not progress):
        t = timesteps[i]
        for cache in caches:
            cache.step(t.item())
        model_in = torch.cat([latents, latents]) if uncond is not None else latents  # (2B | B, C, F, h, w)
        model_in = scale_model_input(scheduler, model_in, t)
        out = denoiser.predict(model_in, t, both.at_step(i, len(timesteps)))  # (2B | B, C, F, h, w)
        if uncond is not None:
            out_uncond, out_cond = out.chunk(2)  # (B, C, F, h, w) each
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
            if guidance_rescale > 0:
                out = rescale_guidance(out, out_cond, guidance_rescale, denoiser.frames_independent)
        latents = scheduler.step(out, t, latents, **(extra_step_kwargs or {})).prev_sample  # (B, C, F, h, w)
        if inpaint is not None:
            keep = inpaint.source
            if i + 1 < len(timesteps):
                keep = add_noise(scheduler, inpaint.source, inpaint.noise, timesteps[i + 1 : i + 2])
            latents = (1 - inpaint.mask) * keep + inpaint.mask * latents  # (B, C, F, h, w)
        if callback is not None:
            callback(i + 1, t, latents)
    return latents
