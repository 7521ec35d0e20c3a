"""GenerationRequest: every generation option in one validated dataclass (CLI and Python API alike)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import InvalidArgument
from .free_init import METHODS as FREE_INIT_METHODS
from .schedules import BETA_SCHEDULES, FLOW_SCHEDULERS, SCHEDULERS, TIMESTEP_SPACINGS, scheduler_class
from .travel import INTERPOLATIONS, check_travel

if TYPE_CHECKING:
    from .specs import BackboneSpec

FLOW_CLASSES = tuple(SCHEDULERS[name] for name in FLOW_SCHEDULERS)

DEFAULT_FRAMES = 16
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5
SIZE_MULTIPLE = 8  # pixels per latent cell in every supported VAE


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. Errors name the CLI flag of the field at fault."""

    prompt: str
    negative_prompt: str = ""
    prompt_2: str | None = None  # SD 3: CLIP-G's prompt (default: prompt)
    prompt_3: str | None = None  # SD 3: T5's prompt (default: prompt)
    max_sequence_length: int = 256  # SD 3: T5 tokens
    frames: int | None = None  # None: DEFAULT_FRAMES, or the frames of the latents started from
    height: int | None = None  # None: the model's native size
    width: int | None = None
    steps: int | None = None  # None: DEFAULT_STEPS, or the preset's
    guidance_scale: float | None = None  # None: DEFAULT_GUIDANCE, or the preset's; CFG is on when > 1
    seed: int | None = None  # None: a fresh random seed, recorded in the resolved request
    scheduler: str | None = None  # None: the backbone's default (ddim for SD 1.x, flow-euler for SD 3)
    beta_schedule: str | None = None  # None: the model folder's own
    timestep_spacing: str | None = None  # None: the model folder's own ("trailing" for few-step modules)
    eta: float = 0.0  # DDIM's eta; ignored by other schedulers
    num_videos: int = 1
    denoising_start: float | None = None  # fraction of the schedule already done by the input latents
    denoising_end: float | None = None  # stop here and return noisy latents (for another model to finish)
    strength: float = 0.8  # img2img: how much of the schedule re-noises the source
    motion_scale: float = 1.0  # what the temporal layers add: 0 = the image model alone, 1 = as trained
    context_length: int | None = None  # context windows of this many frames (None: on at 16 past the table)
    context_overlap: int = 4  # frames neighbouring windows share
    context_stride: int | None = None  # frames between window starts (diffusers' context_stride); None: overlap
    context_schedule: str = "uniform"  # uniform | looped | static
    context_fuse: str = "pyramid"  # flat | pyramid | gauss | delayed_reverse_sawtooth
    context_scope: str = "backbone"  # windows over the whole backbone, or only its temporal attention ("motion")
    noise_type: str = "random"  # FreeNoise initial noise: random | shuffle | repeat
    prompt_travel: dict[int, str] | None = None  # {frame: prompt}: the prompt changes over the frames
    negative_prompt_travel: dict[int, str] | None = None
    travel_interpolation: str = "linear"  # or "slerp"
    free_init: int = 1  # FreeInit passes (1: off)
    free_init_method: str = "butterworth"  # low-pass filter: butterworth | gaussian | ideal | box
    free_init_order: int = 4  # butterworth's order
    free_init_spatial: float = 0.25  # normalised spatial stop frequency
    free_init_temporal: float = 0.25  # normalised temporal stop frequency

    def __post_init__(self) -> None:
        for name in ("prompt_travel", "negative_prompt_travel"):  # JSON keys are strings
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, {int(k): v for k, v in value.items()})

    @property
    def cfg(self) -> bool:
        return (self.guidance_scale if self.guidance_scale is not None else DEFAULT_GUIDANCE) > 1.0

    def validate(self) -> None:
        """Checks that need no model."""
        if self.frames is not None:
            _positive("--frames", self.frames)
        if self.steps is not None:
            _positive("--steps", self.steps)
        _positive("--num-videos", self.num_videos)
        for flag, value in (("--height", self.height), ("--width", self.width)):
            if value is not None and (value <= 0 or value % SIZE_MULTIPLE):
                raise InvalidArgument(flag, f"must be a positive multiple of {SIZE_MULTIPLE}, got {value}")
        if self.guidance_scale is not None and not 0 <= self.guidance_scale < float("inf"):
            raise InvalidArgument("--guidance-scale", f"must be a finite number >= 0, got {self.guidance_scale}")
        if not 0.0 <= self.eta <= 1.0:
            raise InvalidArgument("--eta", f"must be in [0, 1], got {self.eta}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidArgument("--seed", f"must be in [0, 2**63), got {self.seed}")
        for flag, value in (("--denoising-start", self.denoising_start), ("--denoising-end", self.denoising_end)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise InvalidArgument(flag, f"must be a fraction in [0, 1], got {value}")
        start, end = self.denoising_start, self.denoising_end
        if start is not None and end is not None and start >= end:
            raise InvalidArgument("--denoising-end", "must be greater than --denoising-start")
        if not 0.0 <= self.motion_scale < float("inf"):
            raise InvalidArgument("--motion-scale", f"must be a finite number >= 0, got {self.motion_scale}")
        _positive("--free-init", self.free_init)
        if self.free_init_method not in FREE_INIT_METHODS:
            raise InvalidArgument("--free-init-method", f"must be one of {', '.join(FREE_INIT_METHODS)}")
        for flag, value in (("--free-init-spatial", self.free_init_spatial),
                            ("--free-init-temporal", self.free_init_temporal)):  # fmt: skip
            if not 0 < value <= 1:
                raise InvalidArgument(flag, f"must be a stop frequency in (0, 1], got {value}")
        if self.travel_interpolation not in INTERPOLATIONS:
            raise InvalidArgument("--travel-interpolation", f"must be one of {', '.join(INTERPOLATIONS)}")
        if not 0.0 <= self.strength <= 1.0:
            raise InvalidArgument("--image-seed-strength", f"must be in [0, 1], got {self.strength}")
        if self.scheduler is not None:
            scheduler_class(self.scheduler)
        _positive("--max-sequence-length", self.max_sequence_length)
        if self.timestep_spacing is not None and self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise InvalidArgument(
                "--timestep-spacing", f"unknown spacing {self.timestep_spacing!r} ({', '.join(TIMESTEP_SPACINGS)})"
            )
        if self.beta_schedule is not None and self.beta_schedule not in BETA_SCHEDULES:
            raise InvalidArgument(
                "--beta-schedule",
                f"unknown beta schedule {self.beta_schedule!r} (choose from {', '.join(BETA_SCHEDULES)})",
            )

    def resolved(self, default_size: int, spec: BackboneSpec) -> GenerationRequest:
        """Validated against the model's spec, with size, seed and scheduler filled in."""
        self.validate()
        frames = self.frames or DEFAULT_FRAMES
        for flag, travel in (("--prompt-travel", self.prompt_travel), ("--negative-prompt-travel",
                                                                       self.negative_prompt_travel)):  # fmt: skip
            if travel is not None:
                check_travel(travel, frames, flag)
        scheduler = self.scheduler or spec.default_scheduler
        if spec.flow != (scheduler_class(scheduler) in FLOW_CLASSES):
            kind = "flow-matching (flow-euler)" if spec.flow else "diffusion"
            raise InvalidArgument(
                "--scheduler", f"{scheduler} does not fit this {spec.name} model: it needs a {kind} scheduler"
            )
        if not spec.extra_prompts and (self.prompt_2 is not None or self.prompt_3 is not None):
            raise InvalidArgument("--prompt-2", "only SD 3 models have second and third text encoders")
        return replace(
            self,
            frames=self.frames or DEFAULT_FRAMES,
            steps=self.steps or DEFAULT_STEPS,
            guidance_scale=DEFAULT_GUIDANCE if self.guidance_scale is None else self.guidance_scale,
            height=self.height or default_size,
            width=self.width or default_size,
            seed=secrets.randbelow(2**31) if self.seed is None else self.seed,
            scheduler=scheduler,
        )


def _positive(flag: str, value: int) -> None:
    if value < 1:
        raise InvalidArgument(flag, f"must be >= 1, got {value}")
