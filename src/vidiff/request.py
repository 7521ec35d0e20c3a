"""GenerationRequest: every generation option in one validated dataclass (CLI and Python API alike)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

from . import checks
from .control import ControlOptions, IPAdapterOptions
from .errors import InvalidArgument
from .names import (
    BETA_SCHEDULES,
    FLOW_SCHEDULERS,
    FREE_INIT_METHODS,
    SCHEDULER_CLASSES,
    TIMESTEP_SPACINGS,
    TRAVEL_INTERPOLATIONS,
    scheduler_key,
)
from .travel import check_keys, check_travel
from .windowing import ContextOptions

if TYPE_CHECKING:
    from .specs import BackboneSpec

DEFAULT_FRAMES = 16
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5
SIZE_MULTIPLE = 8  # pixels per latent cell in every supported VAE


@dataclass(frozen=True)
class FreeInitOptions:
    """FreeInit's group (`--free-init N`): the passes, and the low-pass filter that carries each pass's low
    frequencies into the next."""

    passes: int = 1  # 1: off
    method: str = "butterworth"  # butterworth | gaussian | ideal | box
    order: int = 4  # butterworth's order
    spatial: float = 0.25  # normalised spatial stop frequency
    temporal: float = 0.25  # normalised temporal stop frequency

    def validate(self, split: bool = False) -> None:
        """Its own rules, and that it re-samples a whole run (`split`: the run stops or starts part way)."""
        if checks.integer("--free-init", self.passes, 1) > 1 and split:
            raise InvalidArgument("--free-init", "re-samples a whole text-to-video run from noise (no split run)")
        checks.choice("--free-init-method", self.method, FREE_INIT_METHODS)
        checks.integer("--free-init-order", self.order, 1)
        checks.number("--free-init-spatial", self.spatial, 0, 1, above=True)
        checks.number("--free-init-temporal", self.temporal, 0, 1, above=True)


@dataclass(frozen=True)
class TravelOptions:
    """Prompt travel's group: keyframes {frame: prompt} for the prompt and the negative prompt, and how the
    embeddings between them are interpolated."""

    prompt: dict[int, str] | None = None
    negative: dict[int, str] | None = None
    interpolation: str = "linear"  # or "slerp"

    def __post_init__(self) -> None:
        for name in ("prompt", "negative"):  # JSON keys are strings
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, {_frame_key(k): v for k, v in value.items()})

    @property
    def on(self) -> bool:
        return self.prompt is not None or self.negative is not None

    def validate(self, frames: int | None) -> None:
        """Keyframes well formed and, once the frame count is known, within the video."""
        for flag, travel in (("--prompt-travel", self.prompt), ("--negative-prompt-travel", self.negative)):
            if travel is not None and frames is None:
                check_keys(travel, flag)
            elif travel is not None:
                check_travel(travel, frames, flag)
        checks.choice("--travel-interpolation", self.interpolation, TRAVEL_INTERPOLATIONS)


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. Errors name the CLI flag of the field at fault."""

    prompt: str
    negative_prompt: str = ""
    prompt_2: str | None = None  # SD 3 and SDXL: CLIP-G's prompt (default: prompt)
    prompt_3: str | None = None  # SD 3: T5's prompt (default: prompt)
    max_sequence_length: int = 256  # SD 3: T5 tokens
    frames: int | None = None  # None: DEFAULT_FRAMES, or the frames of the latents started from
    height: int | None = None  # None: the model's native size
    width: int | None = None
    steps: int | None = None  # None: DEFAULT_STEPS, or the preset's
    guidance_scale: float | None = None  # None: DEFAULT_GUIDANCE, or the preset's; CFG is on when > 1
    guidance_rescale: float = 0.0  # diffusers' guidance_rescale (Lin et al.): 0 off, 0.7 for zero-SNR models
    seed: int | None = None  # None: a fresh random seed, recorded in the resolved request
    scheduler: str | None = None  # None: the backbone's default (ddim for SD 1.x, flow-euler for SD 3)
    beta_schedule: str | None = None  # None: the model folder's own
    timestep_spacing: str | None = None  # None: the folder's own; "trailing" for zero-SNR schedules
    eta: float = 0.0  # DDIM's eta; ignored by other schedulers
    num_videos: int = 1
    denoising_start: float | None = None  # fraction of the schedule already done by the input latents
    denoising_end: float | None = None  # stop here and return noisy latents (for another model to finish)
    strength: float = 0.8  # img2img: how much of the schedule re-noises the source
    motion_scale: float = 1.0  # what the temporal layers add: 0 = the image model alone, 1 = as trained
    context: ContextOptions = field(default_factory=ContextOptions)  # context windows and FreeNoise
    travel: TravelOptions = field(default_factory=TravelOptions)  # the prompt changes over the frames
    free_init: FreeInitOptions = field(default_factory=FreeInitOptions)  # FreeInit passes and filter
    control: ControlOptions = field(default_factory=ControlOptions)  # ControlNets / SparseCtrl and processors
    ip_adapter: IPAdapterOptions = field(default_factory=IPAdapterOptions)  # a reference image's adapter

    @classmethod
    def from_options(cls, prompt: str, **options) -> GenerationRequest:
        """A request from fields and flat group keys as the flags name them (`context_length=8`,
        `free_init=2`, `prompt_travel={0: "a cat"}`: `GROUP_FLAGS`), diffusers-style keyword arguments."""
        flat = {k: options.pop(k) for k in list(options)
                if k in GROUP_FLAGS and not (k in GROUPS and isinstance(options[k], GROUPS[k] | dict))}  # fmt: skip
        return cls(prompt, **options, **groups_from(flat))

    def __post_init__(self) -> None:
        for name, group in GROUPS.items():  # a group given as a dict (JSON, or a caller's shorthand)
            value = getattr(self, name)
            if isinstance(value, dict):
                unknown = sorted(set(value) - {f.name for f in fields(group)})
                if unknown:
                    raise InvalidArgument("request", f"{name}: unknown keys {', '.join(unknown)}")
                object.__setattr__(self, name, group(**value))

    @property
    def cfg(self) -> bool:
        return (self.guidance_scale if self.guidance_scale is not None else DEFAULT_GUIDANCE) > 1.0

    def validate(self) -> None:
        """Every check that needs no model: types, ranges, finiteness, names."""
        c = checks
        c.text("prompt", self.prompt)
        c.text("--negative-prompt", self.negative_prompt)
        for flag, value in (("--prompt-2", self.prompt_2), ("--prompt-3", self.prompt_3)):
            if value is not None:
                c.text(flag, value)
        c.integer("--max-sequence-length", self.max_sequence_length, 1, 512)  # T5's longest
        for flag, value in (("--frames", self.frames), ("--steps", self.steps)):
            if value is not None:
                c.integer(flag, value, 1)
        c.integer("--num-videos", self.num_videos, 1)
        for flag, value in (("--height", self.height), ("--width", self.width)):
            if value is not None and (c.integer(flag, value, 1) % SIZE_MULTIPLE):
                raise InvalidArgument(flag, f"must be a positive multiple of {SIZE_MULTIPLE}, got {value}")
        if self.guidance_scale is not None:
            c.number("--guidance-scale", self.guidance_scale, 0)
        c.number("--guidance-rescale", self.guidance_rescale, 0, 1)
        c.number("--eta", self.eta, 0, 1)
        if self.seed is not None:
            c.integer("--seed", self.seed, 0, 2**63 - 1)
        for flag, value in (("--denoising-start", self.denoising_start), ("--denoising-end", self.denoising_end)):
            if value is not None:
                c.number(flag, value, 0, 1)
        start, end = self.denoising_start, self.denoising_end
        if start is not None and end is not None and start >= end:
            raise InvalidArgument("--denoising-end", "must be greater than --denoising-start")
        c.number("--image-seed-strength", self.strength, 0, 1)
        c.number("--motion-scale", self.motion_scale, 0)
        for name, group in GROUPS.items():
            if not isinstance(getattr(self, name), group):
                raise InvalidArgument("request", f"{name} must be a {group.__name__}, got {getattr(self, name)!r}")
        self.context.validate()  # the windows' own rules and the cross-field ones (overlap and stride vs length)
        self.travel.validate(self.frames)
        self.free_init.validate(split=start is not None or end is not None)
        self.control.validate(self.frames)
        self.ip_adapter.validate(self.frames)
        if self.scheduler is not None and scheduler_key(c.text("--scheduler", self.scheduler)) is None:
            raise InvalidArgument(
                "--scheduler", f"unknown scheduler {self.scheduler!r} (choose from {', '.join(SCHEDULER_CLASSES)})"
            )
        if self.timestep_spacing is not None:
            c.choice("--timestep-spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        if self.beta_schedule is not None:
            c.choice("--beta-schedule", self.beta_schedule, BETA_SCHEDULES, "beta schedule")

    def check_extra_prompts(self, model: str, encoders: int) -> None:
        """`--prompt-2` / `--prompt-3` only for a model with that many text encoders beyond the first."""
        for i, (flag, given) in enumerate((("--prompt-2", self.prompt_2), ("--prompt-3", self.prompt_3))):
            if given is not None and encoders <= i:
                raise InvalidArgument(flag, f"this {model} model has no text encoder for it (SDXL takes "
                                            "--prompt-2, SD 3 --prompt-2 and --prompt-3)")  # fmt: skip

    def resolved(
        self, default_size: int, spec: BackboneSpec, default_frames: int = DEFAULT_FRAMES
    ) -> GenerationRequest:
        """Validated against the model's spec, with size, frames, seed and scheduler filled in."""
        self.validate()
        frames = self.frames or default_frames
        self.travel.validate(frames)
        self.control.validate(frames)
        self.ip_adapter.validate(frames)
        scheduler = self.scheduler or spec.default_scheduler
        if spec.flow != (scheduler_key(scheduler) in FLOW_SCHEDULERS):
            kind = "flow-matching (flow-euler)" if spec.flow else "diffusion"
            raise InvalidArgument(
                "--scheduler", f"{scheduler} does not fit this {spec.name} model: it needs a {kind} scheduler"
            )
        self.check_extra_prompts(spec.name, spec.extra_prompts)
        return replace(
            self,
            frames=frames,
            steps=self.steps or DEFAULT_STEPS,
            guidance_scale=DEFAULT_GUIDANCE if self.guidance_scale is None else self.guidance_scale,
            height=self.height or default_size,
            width=self.width or default_size,
            seed=secrets.randbelow(2**31) if self.seed is None else self.seed,
            scheduler=scheduler,
        )


GROUPS = {"context": ContextOptions, "travel": TravelOptions, "free_init": FreeInitOptions, "control": ControlOptions,
          "ip_adapter": IPAdapterOptions}  # fmt: skip
GROUP_FLAGS = {  # each group field by the flag (its argparse dest, a flat job's key) that sets it
    "context_length": ("context", "length"), "context_overlap": ("context", "overlap"),
    "context_stride": ("context", "stride"), "context_schedule": ("context", "schedule"),
    "context_fuse": ("context", "fuse"), "context_scope": ("context", "scope"), "noise_type": ("context", "noise"),
    "prompt_travel": ("travel", "prompt"), "negative_prompt_travel": ("travel", "negative"),
    "travel_interpolation": ("travel", "interpolation"),
    "free_init": ("free_init", "passes"), "free_init_method": ("free_init", "method"),
    "free_init_order": ("free_init", "order"), "free_init_spatial": ("free_init", "spatial"),
    "free_init_temporal": ("free_init", "temporal"),
    "control_nets": ("control", "nets"), "control_image_processors": ("control", "processors"),
    "ip_adapters": ("ip_adapter", "adapter"), "image_encoder": ("ip_adapter", "image_encoder"),
}  # fmt: skip


def groups_from(values: dict) -> dict:
    """The request's option groups from flat keys (`GROUP_FLAGS`); keys with None are left to the defaults."""
    given: dict[str, dict] = {}
    for key, (group, name) in GROUP_FLAGS.items():
        if values.get(key) is not None:
            given.setdefault(group, {})[name] = values[key]
    return {group: GROUPS[group](**options) for group, options in given.items()}


def flat_groups(request: GenerationRequest) -> dict:
    """The request's group fields under their flat keys (the inverse of `groups_from`)."""
    return {key: getattr(getattr(request, group), name) for key, (group, name) in GROUP_FLAGS.items()}


def _frame_key(key):
    """A JSON object's key "12" as the frame 12; anything else as given (validation names it)."""
    return int(key) if isinstance(key, str) and key.strip().isdigit() else key
