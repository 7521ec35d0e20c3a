"""Render jobs: everything one video needs in one serialisable dataclass, checked before any model loads.

`renderer.render(job)` makes it. The CLI only builds a job from its flags and prints the result; `vidiff batch`
and Python callers build jobs the same way. Nothing here imports torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from . import checks
from .accel.configs import DeepCacheConfig, PABConfig
from .errors import InvalidArgument
from .image_seeds import parse_image_seed
from .names import (
    DEFAULT_FRAME_NOISE,
    DEVICE_KINDS,
    DTYPE_NAMES,
    GROUPNORM_MODES,
    LATENT_SUFFIXES,
    MODES,
    PRESET_NAMES,
    is_latents_path,
)
from .outputs import check_fps, check_output, writable_folder
from .request import DEFAULT_FRAMES, GenerationRequest
from .travel import check_travel

if TYPE_CHECKING:
    from torch import Tensor

    from .pipeline import Timings

RESUME_SUFFIX = ".resume.safetensors"


@dataclass
class RenderJob:
    """One video: the model, what to make (`request`), where it starts, how fast, where it goes."""

    request: GenerationRequest
    model: str = "demo"  # folder, hub id, `demo` or `tiny-random`
    motion_module: str | None = None
    mode: str = "motion"  # or "sequential": frame by frame
    frame_noise: float = DEFAULT_FRAME_NOISE
    frame_batch: int | None = None
    use_t5: bool = True
    groupnorm: str = "auto"  # AnimateDiff GroupNorm: as trained by the original code, or as diffusers runs it
    loras: list[str] = field(default_factory=list)  # "FILE" or "FILE:SCALE", on the image model
    motion_loras: list[str] = field(default_factory=list)  # the same, on the motion modules
    vae: str | None = None  # replace the model's VAE (a diffusers folder or an original-layout file)
    dtype: str = "auto"
    device: str = "cpu"
    preset: str | None = None  # few-step settings ("lightning", "animatelcm") for what the request leaves open
    image_seeds: str | None = None  # dgenerate's grammar: "latents: f.pt", "src", "src;mask=m.png", ...
    pab: PABConfig | None = None
    deep_cache: DeepCacheConfig | None = None
    fast: bool = False  # the backbone's best measured accelerators (its spec's `fast`)
    compile_backend: str | None = None  # torch.compile the backbone with this backend
    output: str | None = None  # .gif/.mp4/.webp, folder/ (PNG frames), .pt/.pth/.safetensors; None: named
    fps: float = 8.0
    decode_chunk_size: int = 8
    overwrite: bool = False
    checkpoint_every: int | None = None  # keep OUTPUT.resume.safetensors every N steps
    resume: str | None = None  # continue the job stored in this checkpoint
    force: bool = False  # run even when the memory preflight says it will not fit

    def validate(self, output: bool = True) -> None:
        """Every check that needs no model, before anything loads or is written: the request, the model's
        options, the files named, and (`output`) the output and its folder. Nothing here imports torch."""
        c = checks
        if not isinstance(self.request, GenerationRequest):
            raise InvalidArgument("request", f"must be a GenerationRequest, got {type(self.request).__name__}")
        self.request.validate()
        c.text("--model", self.model, empty=False)
        for flag, path in (("--motion-module", self.motion_module), ("--vae", self.vae), ("--resume", self.resume)):
            if path is not None:
                c.existing(flag, path)
        c.choice("--mode", self.mode, MODES)
        if self.mode == "sequential" and (self.motion_module or self.motion_loras):
            flag = "--motion-module" if self.motion_module else "--motion-lora"
            raise InvalidArgument(flag, "has no use in --mode sequential (each frame is denoised by the image model "
                                  "alone); drop it, or use --mode motion")  # fmt: skip
        c.number("--frame-noise", self.frame_noise, 0)
        if self.frame_batch is not None:
            c.integer("--frame-batch", self.frame_batch, 1)
        c.choice("--groupnorm", self.groupnorm, GROUPNORM_MODES)
        for flag, specs in (("--lora", self.loras), ("--motion-lora", self.motion_loras)):
            if not isinstance(specs, list | tuple):
                raise InvalidArgument(flag, f"must be a list of FILE[:SCALE], got {specs!r}")
            for spec in specs:
                c.existing(flag, c.weighted_file(flag, spec)[0])
        c.choice("--dtype", self.dtype, DTYPE_NAMES, "dtype")
        c.choice("--device", c.text("--device", self.device).split(":")[0], DEVICE_KINDS, "device")
        if self.preset is not None:
            c.choice("--preset", self.preset, PRESET_NAMES)
        for flag, value in (
            ("--use-t5", self.use_t5),
            ("--fast", self.fast),
            ("--overwrite", self.overwrite),
            ("--force", self.force),
        ):
            if not isinstance(value, bool):
                raise InvalidArgument(flag, f"must be true or false, got {value!r}")
        for config in (self.pab, self.deep_cache):
            if config is not None:
                config.validate()
        if self.compile_backend is not None:
            c.text("--compile-backend", self.compile_backend, empty=False)
        seed = parse_image_seed(c.text("--image-seeds", self.image_seeds)) if self.image_seeds is not None else None
        starts_from_latents = self.resume is not None or (seed is not None and seed.latents is not None)
        if self.request.denoising_start is not None and not starts_from_latents:
            raise InvalidArgument("--denoising-start", 'needs latents to continue: --image-seeds "latents: FILE"')
        if seed is not None and seed.latents is not None and self.resume is not None:
            raise InvalidArgument("--resume", "continues its own latents; drop latents= from --image-seeds")
        if self.request.free_init > 1 and (seed is not None or self.resume is not None):
            raise InvalidArgument("--free-init", "re-samples a whole text-to-video run from noise (no sources)")
        if self.request.frames is None and not starts_from_latents:  # travel keyframes within the default count
            for flag, travel in (("--prompt-travel", self.request.prompt_travel),
                                 ("--negative-prompt-travel", self.request.negative_prompt_travel)):  # fmt: skip
                if travel is not None:
                    check_travel(travel, DEFAULT_FRAMES, flag)
        check_fps(self.fps)
        c.integer("--decode-chunk-size", self.decode_chunk_size, 1)
        if self.checkpoint_every is not None:
            c.integer("--checkpoint-every", self.checkpoint_every, 1)
        end = self.request.denoising_end
        if end is not None and end < 1 and not (self.output and is_latents_path(self.output)):
            raise InvalidArgument("--output", "partly denoised latents (--denoising-end) go to .pt, .pth, .safetensors")
        if output and self.output is None:
            writable_folder("--output", Path.cwd())  # a name is made up after loading, in this folder
        elif output:
            check_output(self.output, self.overwrite)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RenderJob:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument("job", f"unknown keys {', '.join(unknown)}")
        data = dict(data)
        request = data.get("request")
        if not isinstance(request, dict):
            raise InvalidArgument("job", f"'request' must be an object of GenerationRequest fields, got {request!r}")
        unknown = sorted(set(request) - {f.name for f in fields(GenerationRequest)})
        if unknown or "prompt" not in request:
            raise InvalidArgument("job", f"request: unknown keys {', '.join(unknown)}" if unknown else
                                  "request: needs a prompt")  # fmt: skip
        data["request"] = GenerationRequest(**request)
        for key, config in (("pab", PABConfig), ("deep_cache", DeepCacheConfig)):
            if data.get(key) is not None:
                data[key] = config(**{k: tuple(v) if isinstance(v, list) else v for k, v in data[key].items()})
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> RenderJob:
        return cls.from_dict(json.loads(text))

    @property
    def pipeline_key(self) -> tuple:
        """Jobs with the same key run on the same loaded pipeline."""
        return (self.model, self.motion_module, self.mode, self.frame_noise, self.frame_batch, self.use_t5,
                self.groupnorm, tuple(self.loras), tuple(self.motion_loras), self.vae, self.dtype, self.device,
                self.compile_backend)  # fmt: skip


@dataclass
class RenderResult:
    output: Path
    latents: Tensor  # (B, C, F, h, w) as denoised (or partly, with denoising_end)
    job: RenderJob  # as run: the request resolved (seed, size, scheduler), the output named
    timings: Timings
    weights_bytes: int
    peak_bytes: int  # highest memory of denoising and decoding above the level before, loaded weights excluded
    process_bytes: int = 0  # the process's peak so far (max resident set on CPU): everything counted
    estimate_bytes: int = 0  # what the memory preflight expected the process to need (0: --force)
    frames_written: int = 0  # 0 when latents were written
    reused_pipeline: bool = False
    notes: list[str] = field(default_factory=list)  # what loading found out (motion-module version, ...)

    @property
    def is_latents(self) -> bool:
        return is_latents_path(str(self.output))


FLAGS = {"prompt": "prompt", "strength": "--image-seed-strength", "loras": "--lora", "motion_loras": "--motion-lora",
         "use_t5": "--no-t5", "pab": "--pab", "deep_cache": "--deep-cache", "compile_backend": "--compile"}  # fmt: skip
RESUME_MAY_CHANGE = (
    "request",
    "output",
    "overwrite",
    "resume",
    "fps",
    "decode_chunk_size",
    "checkpoint_every",
    "force",
)


def check_resume(given: RenderJob, saved: RenderJob) -> None:
    """Refuse, naming the flag, any option given with --resume (one that differs from its default) that
    contradicts the job the checkpoint saved; where the video goes and how it is written may change."""
    pairs = [(f.name, getattr(given.request, f.name), getattr(saved.request, f.name), f.default)
             for f in fields(GenerationRequest) if f.name != "prompt"]  # fmt: skip
    pairs.append(("prompt", given.request.prompt, saved.request.prompt, ""))
    pairs += [(f.name, getattr(given, f.name), getattr(saved, f.name), _default(f))
              for f in fields(RenderJob) if f.name not in RESUME_MAY_CHANGE]  # fmt: skip
    for name, value, kept, default in pairs:
        if value != default and value != kept:
            flag = FLAGS.get(name, f"--{name.replace('_', '-')}")
            raise InvalidArgument(flag, f"{value!r} contradicts the resumed job's {kept!r}; leave it out to resume")


def _default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def validate_decode(latents: str, output: str, fps: float, decode_chunk_size: int, overwrite: bool) -> None:
    """`vidiff decode`'s checks that need no model (the latents file's content is checked when read)."""
    checks.existing("latents", latents)
    if not is_latents_path(latents):
        raise InvalidArgument("latents", f"{latents} is not a .pt, .pth or .safetensors file")
    if check_output(output, overwrite) in LATENT_SUFFIXES:
        raise InvalidArgument("--output", f"{output} is a latents file; decode writes a video or a folder/")
    check_fps(fps)
    checks.integer("--decode-chunk-size", decode_chunk_size, 1)


def slug(text: str, length: int = 48) -> str:
    """Lower-case letters and digits joined by dashes, for file names."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:length] or "video"


def default_output(prompt: str, seed: int) -> str:
    return f"{slug(prompt)}-{seed}.gif"


def resume_path(output: str) -> Path:
    return Path(f"{output}{RESUME_SUFFIX}")
