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
from .control_files import check_control
from .errors import InvalidArgument
from .families import EXTRA_PROMPTS, model_family
from .image_seeds import ImageSeed, parse_image_seed
from .media import check_count, frame_count
from .names import LATENT_SUFFIXES, PRESET_NAMES, is_latents_path
from .outputs import check_fps, check_output, writable_folder
from .request import DEFAULT_FRAMES, GROUPS, GenerationRequest, flat_groups
from .settings import FLAGS as LOAD_FLAGS
from .settings import LoadSettings

if TYPE_CHECKING:
    from torch import Tensor

    from .pipeline import Timings

RESUME_SUFFIX = ".resume.safetensors"


@dataclass
class RenderJob:
    """One video: the model, what to make (`request`), where it starts, how fast, where it goes."""

    request: GenerationRequest
    load: LoadSettings = field(default_factory=LoadSettings)  # the model and how it loads
    preset: str | None = None  # few-step settings ("lightning", "animatelcm") for what the request leaves open
    image_seeds: str | None = None  # dgenerate's grammar: "latents: f.pt", "src", "src;mask=m.png", ...
    pab: PABConfig | None = None
    deep_cache: DeepCacheConfig | None = None
    fast: bool = False  # the backbone's best measured accelerators (its spec's `fast`)
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
        if not isinstance(self.load, LoadSettings):
            raise InvalidArgument("load", f"must be a LoadSettings, got {type(self.load).__name__}")
        self.load.validate()
        family = model_family(self.load.model)  # SD 1.x or SDXL, from its config or header (else: at load)
        if family is not None:
            self.request.check_extra_prompts(family, EXTRA_PROMPTS[family])
        if self.resume is not None:
            c.existing("--resume", self.resume)
        if self.preset is not None:
            c.choice("--preset", self.preset, PRESET_NAMES)
        for flag, value in (("--fast", self.fast), ("--overwrite", self.overwrite), ("--force", self.force)):
            if not isinstance(value, bool):
                raise InvalidArgument(flag, f"must be true or false, got {value!r}")
        for config in (self.pab, self.deep_cache):
            if config is not None:
                config.validate()
        nets = len(self.request.control.nets)
        seed = None
        if self.image_seeds is not None:
            seed = parse_image_seed(c.text("--image-seeds", self.image_seeds), nets)
        self._check_control(seed)
        starts_from_latents = self.resume is not None or (seed is not None and seed.latents is not None)
        if self.request.denoising_start is not None and not starts_from_latents:
            raise InvalidArgument("--denoising-start", 'needs latents to continue: --image-seeds "latents: FILE"')
        if seed is not None and seed.latents is not None and self.resume is not None:
            raise InvalidArgument("--resume", "continues its own latents; drop latents= from --image-seeds")
        if self.request.free_init.passes > 1 and (seed is not None or self.resume is not None):
            raise InvalidArgument("--free-init", "re-samples a whole text-to-video run from noise (no sources)")
        if self.request.frames is None and not starts_from_latents:  # travel keyframes within the default count
            self.request.travel.validate(DEFAULT_FRAMES)
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

    def _check_control(self, seed: ImageSeed | None) -> None:
        """ControlNets have their control sources, each with the frames it must give (a still: every frame)."""
        control = self.request.control
        if control.on and (seed is None or not seed.control):
            raise InvalidArgument("--control-nets", "needs control images: --image-seeds CTRL (or SRC;control=CTRL)")
        for uri in control.uris():
            checks.existing("--control-nets", uri.path)
            check_control(uri)
        frames = self.request.frames or (None if seed and seed.latents else DEFAULT_FRAMES)  # None: the latents'
        self._check_ip_adapter(seed, frames)
        for uri, path in zip(control.uris(), seed.control if seed else (), strict=False):
            count, wanted = (len(uri.frames), "its frames= names") if uri.frames else (frames, "--frames is")
            if count is not None:
                check_count(frame_count(path, "--image-seeds"), count, path, "--image-seeds", wanted)

    def _check_ip_adapter(self, seed: ImageSeed | None, frames: int | None) -> None:
        """An IP-Adapter has its file, its image encoder and its image(s), keyframed within the video."""
        ip = self.request.ip_adapter
        images = seed.adapter if seed is not None else None
        if not ip.on:
            if images:
                raise InvalidArgument("--image-seeds", "names IP-Adapter images but no --ip-adapters is given")
            return
        ip.validate(frames)  # scale keyframes within the video
        checks.existing("--ip-adapters", ip.uri().path)
        if not Path(ip.encoder_path()).is_dir():
            raise InvalidArgument("--image-encoder", f"the IP-Adapter needs its CLIP image encoder: --image-encoder "
                                  f"FOLDER (none at {ip.encoder_path()})")  # fmt: skip
        if not images:
            raise InvalidArgument("--ip-adapters", 'needs an image: --image-seeds "adapter: ref.png"')
        outside = [f for f in images if frames is not None and f >= frames]
        if outside:
            raise InvalidArgument("--image-seeds", f"adapter keyframes {outside} are outside a {frames}-frame video")

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
        if data.get("load") is not None:
            if not isinstance(data["load"], dict):
                raise InvalidArgument("job", f"'load' must be an object of LoadSettings fields, got {data['load']!r}")
            data["load"] = LoadSettings.from_dict(data["load"])
        for key, config in (("pab", PABConfig), ("deep_cache", DeepCacheConfig)):
            if data.get(key) is not None:
                data[key] = config(**{k: tuple(v) if isinstance(v, list) else v for k, v in data[key].items()})
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> RenderJob:
        return cls.from_dict(json.loads(text))


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


FLAGS = {"prompt": "prompt", "strength": "--image-seed-strength", "pab": "--pab", "deep_cache": "--deep-cache"}
FLAGS |= LOAD_FLAGS
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
    pairs = _pairs(given.request, saved.request, ("prompt", *GROUPS))
    pairs.append(("prompt", given.request.prompt, saved.request.prompt, ""))
    default, kept = flat_groups(GenerationRequest("")), flat_groups(saved.request)
    pairs += [(k, v, kept[k], default[k]) for k, v in flat_groups(given.request).items()]
    pairs += _pairs(given.load, saved.load) + _pairs(given, saved, (*RESUME_MAY_CHANGE, "load"))
    for name, value, kept, default in pairs:
        if value != default and value != kept:
            flag = FLAGS.get(name, f"--{name.replace('_', '-')}")
            raise InvalidArgument(flag, f"{value!r} contradicts the resumed job's {kept!r}; leave it out to resume")


def _pairs(given, saved, skip: tuple[str, ...] = ()) -> list[tuple]:
    """(name, given value, saved value, default) for each dataclass field not in `skip`."""
    return [(f.name, getattr(given, f.name), getattr(saved, f.name), _default(f)) for f in fields(given)
            if f.name not in skip]  # fmt: skip


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
