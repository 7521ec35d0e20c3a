"""Render jobs: everything one video needs in one serialisable dataclass, and `render(job)` that makes it.

`render` does all that `vidiff generate` does: check what can be checked before loading, load (reusing a
warm pipeline for the same model), resolve and check the sources, resume, denoise with checkpoints, write
latents or a video atomically, and return the result with its timings and memory. The CLI only builds a
job from its flags and prints the result; `vidiff batch` and Python callers build jobs the same way.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from torch import Tensor

from .accel.deep_cache import DeepCacheConfig
from .accel.pab import PABConfig
from .adapters.image_sequential import DEFAULT_FRAME_NOISE
from .atomic import check_target
from .errors import InvalidArgument, RenderInterrupted
from .export import FrameWriter, check_fps, check_output
from .image_seeds import parse_image_seed
from .latents_io import is_latents_path, load_latents, save_latents
from .loading import resolve_device, resolve_dtype
from .memory import PeakMemory, weight_bytes
from .pipeline import Timings, VideoPipeline
from .presets import apply_preset
from .request import GenerationRequest

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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RenderJob:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgument("job", f"unknown keys {', '.join(unknown)}")
        data = dict(data)
        data["request"] = GenerationRequest(**data["request"])
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
    peak_bytes: int  # highest working memory above the resting level, weights excluded
    frames_written: int = 0  # 0 when latents were written
    reused_pipeline: bool = False
    notes: list[str] = field(default_factory=list)  # what loading found out (motion-module version, ...)

    @property
    def is_latents(self) -> bool:
        return is_latents_path(str(self.output))


def slug(text: str, length: int = 48) -> str:
    """Lower-case letters and digits joined by dashes, for file names."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:length] or "video"


def default_output(prompt: str, seed: int) -> str:
    return f"{slug(prompt)}-{seed}.gif"


def resume_path(output: str) -> Path:
    return Path(f"{output}{RESUME_SUFFIX}")


def load_resume(path: str, override: RenderJob | None = None) -> tuple[RenderJob, object]:
    """The job stored in a resume checkpoint (with `override`'s output and overwrite), and the checkpoint."""
    item = load_latents(path, "--resume")
    if item.meta.job is None:
        raise InvalidArgument("--resume", f"{path} is not a vidiff checkpoint (it carries no job)")
    job = RenderJob.from_dict(item.meta.job)
    if override is not None:
        job = replace(job, output=override.output or job.output, overwrite=override.overwrite)
    return replace(job, resume=path), item


class Renderer:
    """Renders jobs, keeping the last loaded pipeline warm for the next job on the same model."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.pipe: VideoPipeline | None = None
        self.loads = 0  # pipelines loaded so far

    def pipeline(self, job: RenderJob) -> tuple[VideoPipeline, bool]:
        """The pipeline for `job` (loaded, or the warm one) with the job's accelerators; and whether reused."""
        reused = self.pipe is not None and self.key == job.pipeline_key
        if not reused:
            self.pipe = None  # free the old model before loading the next
            pipe = VideoPipeline.from_pretrained(
                job.model, job.motion_module, job.dtype, job.device, job.mode, job.frame_noise, job.frame_batch,
                use_t5=job.use_t5, groupnorm=job.groupnorm, loras=job.loras, motion_loras=job.motion_loras,
                vae=job.vae,
            )  # fmt: skip
            if job.compile_backend:
                pipe.compile(job.compile_backend)
            self.pipe, self.key = pipe, job.pipeline_key
            self.loads += 1
        pipe = self.pipe
        pipe.disable_pab()
        pipe.disable_deep_cache()
        if job.fast:
            pipe.enable_fast()
        if job.pab is not None:
            pipe.enable_pab(job.pab)
        if job.deep_cache is not None:
            pipe.enable_deep_cache(job.deep_cache)
        return pipe, reused

    def render(self, job: RenderJob, progress: bool = False) -> RenderResult:
        # 1. Everything that can be checked without the model, before loading it.
        resumed = None
        if job.resume is not None:
            job, resumed = load_resume(job.resume, job)
        request, loras, notes = apply_preset(job.preset, job.request, job.loras, job.motion_module)
        job = replace(job, request=request, loras=loras)
        job.request.validate()
        seed = parse_image_seed(job.image_seeds) if job.image_seeds is not None else None
        if seed is not None and seed.latents is not None and resumed is not None:
            raise InvalidArgument("--resume", "continues its own latents; drop latents= from --image-seeds")
        _check_output(job.output, job.overwrite)
        latents_out = job.output is not None and is_latents_path(job.output)
        end = job.request.denoising_end
        if end is not None and end < 1 and not latents_out:
            raise InvalidArgument("--output", "partly denoised latents (--denoising-end) go to .pt, .pth, .safetensors")
        if job.checkpoint_every is not None and job.checkpoint_every < 1:
            raise InvalidArgument("--checkpoint-every", f"must be >= 1, got {job.checkpoint_every}")
        check_fps(job.fps)
        if job.decode_chunk_size < 1:
            raise InvalidArgument("--decode-chunk-size", f"must be >= 1, got {job.decode_chunk_size}")
        for config in (job.pab, job.deep_cache):
            if config is not None:
                config.validate()
        resolve_dtype(job.dtype, resolve_device(job.device))
        # 2. Load (or reuse) the model, then resolve the request and its sources against it.
        pipe, reused = self.pipeline(job)
        source, request = pipe.resolve_source(job.request, seed, resumed, job.decode_chunk_size)
        output = job.output or default_output(request.prompt, request.seed)
        job = replace(job, request=request, output=output, resume=None)
        resume_file = resume_path(output)
        checkpoint = resume_file if job.checkpoint_every else None

        def on_step(step: int, t, latents) -> None:
            if checkpoint is not None and step % job.checkpoint_every == 0:
                save_latents(checkpoint, _snapshot(pipe, job, latents, step), overwrite=True)

        # 3. Denoise (checkpointing); an interruption keeps the last checkpoint and says how to resume.
        with PeakMemory(pipe.device) as memory:
            try:
                latents = pipe.generate_latents(request, progress=progress, callback=on_step, source=source)
            except KeyboardInterrupt as e:
                saved = checkpoint if checkpoint is not None and checkpoint.exists() else None
                raise RenderInterrupted(saved, job) from e
            # 4. Save the latents, or decode them in chunks straight into the writer.
            count = 0
            if is_latents_path(output):
                save_latents(output, _snapshot(pipe, job, latents), job.overwrite)
            else:
                with FrameWriter(output, job.fps, job.overwrite) as writer:
                    for frames in pipe.decode(latents[0], job.decode_chunk_size):
                        writer.append(frames)
                count = writer.count
        if checkpoint is not None or resumed is not None:
            resume_file.unlink(missing_ok=True)  # the run it was keeping is complete
        weights = weight_bytes(pipe.denoiser.module, pipe.vae, *pipe.prompt_encoder.modules)
        notes = notes + pipe.notes
        return RenderResult(Path(output), latents, job, pipe.timings, weights, memory.peak, count, reused, notes)


def _check_output(output: str | None, overwrite: bool) -> None:
    if output is None:
        return
    if is_latents_path(output):
        check_target(Path(output), overwrite)
    else:
        check_output(output, overwrite)


def _snapshot(pipe: VideoPipeline, job: RenderJob, latents: Tensor, step: int | None = None):
    item = pipe.snapshot(latents, step)
    item.meta.job = job.to_dict()
    return item


_renderer: Renderer | None = None


def render(job: RenderJob, renderer: Renderer | None = None, progress: bool = False) -> RenderResult:
    """Render one job; the module's own Renderer keeps the last pipeline warm between calls."""
    global _renderer
    if renderer is None:
        _renderer = _renderer or Renderer()
        renderer = _renderer
    return renderer.render(job, progress=progress)


def decode_file(
    latents: str, model: str, output: str, fps: float = 8.0, decode_chunk_size: int = 8, dtype: str = "auto",
    device: str = "cpu", overwrite: bool = False,
) -> tuple[int, float | None]:  # fmt: skip
    """Decode a latents file with a model's VAE into a video; returns (frames written, fraction denoised)."""
    from .codec import LatentCodec
    from .latents_io import check_latents
    from .loading import load_vae, resolve_model_folder
    from .specs import detect

    check_output(output, overwrite)
    torch_device = resolve_device(device)
    item = load_latents(latents, "latents")
    spec = detect(resolve_model_folder(model))
    codec = LatentCodec(load_vae(model, resolve_dtype(dtype, torch_device), torch_device), spec.latent_space)
    check_latents(item, latents, codec.channels, None, argument="latents")
    with FrameWriter(output, fps, overwrite) as writer:
        for frames in codec.decode(item.latents[0], decode_chunk_size):
            writer.append(frames)
    return writer.count, item.meta.denoised
