"""Scheduler factory: short names (and diffusers class names) -> diffusers schedulers built with `from_config`.

Building from the model folder's own scheduler config means vidiff and diffusers agree on the same folder.
"""

from __future__ import annotations

import inspect
from typing import Any

import diffusers
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .errors import InvalidArgument
from .names import BETA_SCHEDULES, FLOW_SCHEDULERS, SCHEDULER_CLASSES, scheduler_key

SCHEDULERS: dict[str, type[SchedulerMixin]] = {name: getattr(diffusers, cls) for name, cls in SCHEDULER_CLASSES.items()}
DIFFUSION_SCHEDULERS = tuple(name for name in SCHEDULERS if name not in FLOW_SCHEDULERS)  # SD 1.x's
# Scheduler attributes that change while stepping (DPM-Solver, LMS and PNDM histories, step counters).
SCHEDULER_STATE = (
    "_step_index",
    "_begin_index",
    "model_outputs",
    "lower_order_nums",
    "last_sample",
    "ets",
    "counter",
    "_denoised",  # LCM
    "cur_model_output",
    "cur_sample",
    "derivatives",
)


def scheduler_class(name: str) -> type[SchedulerMixin]:
    """Resolve a short name (`euler-a`) or a diffusers class name (`EulerAncestralDiscreteScheduler`)."""
    key = scheduler_key(name)
    if key is not None:
        return SCHEDULERS[key]
    choices = ", ".join(SCHEDULERS)
    raise InvalidArgument("--scheduler", f"unknown scheduler {name!r} (choose from {choices})")


def make_scheduler(
    name: str, config: dict[str, Any], beta_schedule: str | None = None, timestep_spacing: str | None = None
) -> SchedulerMixin:
    """Build scheduler `name` from a model folder's scheduler config, optionally overriding its beta schedule
    and its timestep spacing. A zero-terminal-SNR schedule (`rescale_betas_zero_snr`) is kept, and sampled with
    trailing spacing unless told otherwise (Lin et al. 2024: start from the last timestep, where x_T is pure
    noise); a scheduler class that cannot rescale its betas is refused."""
    cls = scheduler_class(name)
    overrides: dict[str, Any] = {}
    if config.get("rescale_betas_zero_snr"):
        if not zero_snr_capable(cls):
            able = ", ".join(n for n in DIFFUSION_SCHEDULERS if zero_snr_capable(SCHEDULERS[n]))
            raise InvalidArgument("--scheduler", f"{name} cannot keep this model's zero-terminal-SNR schedule "
                                  f"(rescale_betas_zero_snr); use one of {able}")  # fmt: skip
        overrides["timestep_spacing"] = "trailing"
    if timestep_spacing is not None:
        overrides["timestep_spacing"] = timestep_spacing
    if beta_schedule is not None:
        if beta_schedule not in BETA_SCHEDULES:
            raise InvalidArgument(
                "--beta-schedule",
                f"unknown beta schedule {beta_schedule!r} (choose from {', '.join(BETA_SCHEDULES)})",
            )
        overrides["beta_schedule"] = beta_schedule
    return cls.from_config(config, **overrides)


def zero_snr_capable(cls: type[SchedulerMixin]) -> bool:
    return "rescale_betas_zero_snr" in inspect.signature(cls.__init__).parameters


def scheduler_name(scheduler: SchedulerMixin) -> str:
    """The short name of a scheduler instance (its class name if it is not in the table)."""
    for name, cls in SCHEDULERS.items():
        if type(scheduler) is cls:
            return name
    return type(scheduler).__name__


def timesteps_for(scheduler: SchedulerMixin, steps: int, device: torch.device, tokens: int = 0) -> torch.Tensor:
    """Set `steps` inference steps and return the full, explicit timestep list the loop will walk.

    Flow-matching schedulers with dynamic shifting get diffusers' resolution-dependent shift (`tokens`
    image tokens per frame)."""
    kwargs = {}
    if scheduler.config.get("use_dynamic_shifting"):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        c = scheduler.config
        kwargs["mu"] = calculate_shift(
            tokens, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096), c.get("base_shift", 0.5),
            c.get("max_shift", 1.16),
        )  # fmt: skip
    scheduler.set_timesteps(steps, device=device, **kwargs)
    return scheduler.timesteps  # (steps * order,)


def scale_model_input(scheduler: SchedulerMixin, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The scheduler's input scaling (identity for flow matching, which has none)."""
    scale = getattr(scheduler, "scale_model_input", None)
    return scale(x, t) if scale is not None else x


def add_noise(scheduler: SchedulerMixin, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Clean latents noised to timestep t (diffusion's add_noise, flow matching's scale_noise)."""
    if hasattr(scheduler, "add_noise"):
        return scheduler.add_noise(x, noise, t)
    return scheduler.scale_noise(x, t, noise)


def schedule_slice(
    timesteps: torch.Tensor, num_train_timesteps: int, start: float | None, end: float | None
) -> tuple[int, int]:
    """[begin, stop) indices of the timestep list for denoising fractions, by diffusers' cutoff rule.

    `end` keeps the timesteps >= round(T - end * T); `start` skips exactly those for the same fraction,
    so a run stopped at f and one started at f partition the schedule.
    """
    count = lambda fraction: int((timesteps >= round(num_train_timesteps * (1 - fraction))).sum())  # noqa: E731
    begin = count(start) if start else 0
    stop = count(end) if end is not None and end < 1 else len(timesteps)
    return begin, stop


def img2img_begin(steps: int, strength: float, order: int = 1) -> int:
    """diffusers' img2img rule: strength s runs the last round-down(s * steps) steps."""
    return max(steps - min(int(steps * strength), steps), 0) * order


def scheduler_state(scheduler: SchedulerMixin) -> dict[str, Any]:
    """The attributes that change while stepping (histories, counters), copied."""
    state = {}
    for name in SCHEDULER_STATE:
        if hasattr(scheduler, name):
            value = getattr(scheduler, name)
            state[name] = list(value) if isinstance(value, list) else value
    return state


def restore_scheduler_state(scheduler: SchedulerMixin, state: dict[str, Any]) -> None:
    for name, value in state.items():
        if hasattr(scheduler, name):
            setattr(scheduler, name, list(value) if isinstance(value, list) else value)
