"""`render(job)`: what `vidiff generate` does, for one RenderJob (the CLI, `vidiff batch` and Python callers).

Check all that can be checked without the model, load (reusing a warm pipeline for the same model), resolve
and check the sources, resume, denoise with checkpoints, write latents or a video atomically, and return the
result with its timings and memory.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from . import preflight
from .accel.configs import cache_configs
from .errors import InvalidArgument, RenderInterrupted, WriteFailed
from .export import FrameWriter
from .image_seeds import parse_image_seed
from .job import (
    RESUME_MAY_CHANGE,
    RenderJob,
    RenderResult,
    check_resume,
    default_output,
    resume_path,
    validate_decode,
)
from .latents_io import load_latents, save_latents
from .loading import resolve_device, resolve_dtype, resolve_model_folder
from .memory import PeakMemory, current_bytes, process_peak, weight_bytes
from .names import is_latents_path
from .outputs import check_output
from .pipeline import VideoPipeline
from .presets import apply_preset
from .settings import LoadSettings


def load_resume(path: str, override: RenderJob | None = None) -> tuple[RenderJob, object]:
    """The job stored in a resume checkpoint (with `override`'s output and overwrite), and the checkpoint."""
    item = load_latents(path, "--resume")
    if item.meta.job is None:
        raise InvalidArgument("--resume", f"{path} is not a vidiff checkpoint (it carries no job)")
    job = RenderJob.from_dict(item.meta.job)
    if override is not None:
        check_resume(override, job)
        given = {k: getattr(override, k) for k in RESUME_MAY_CHANGE if k not in ("request", "resume", "overwrite")
                 and getattr(override, k) != getattr(RenderJob, k)}  # fmt: skip
        job = replace(job, overwrite=override.overwrite, **given)
    return replace(job, resume=path), item


class Renderer:
    """Renders jobs, keeping the last loaded pipeline warm for the next job on the same model."""

    def __init__(self) -> None:
        self.key: LoadSettings | None = None
        self.pipe: VideoPipeline | None = None
        self.loads = 0  # pipelines loaded so far

    def pipeline(self, job: RenderJob) -> tuple[VideoPipeline, bool]:
        """The pipeline for `job` (loaded, or the warm one) with the job's accelerators; and whether reused."""
        reused = self.pipe is not None and self.key == job.load
        if not reused:
            self.pipe = None  # free the old model before loading the next
            self.pipe, self.key = VideoPipeline.from_pretrained(job.load), job.load
            self.loads += 1
        pipe = self.pipe
        caches = cache_configs(pipe.spec.fast if job.fast else (), job.pab, job.deep_cache)
        if caches:
            pipe.enable_cache(*caches)
        else:
            pipe.disable_cache()  # enable_cache() with no config would be --fast
        return pipe, reused

    def preflight(self, job: RenderJob) -> preflight.Estimate:
        """The run's estimated peak memory, from the model's files (no weights loaded); refused with what would
        fit when more than is free (the process's own memory, a warm model included, is counted as in use)."""
        load = job.load
        device = resolve_device(load.device)
        element = torch.empty((), dtype=resolve_dtype(load.dtype, device)).element_size()
        extra = tuple(Path(p) for p in (load.motion_module, load.vae) if p)
        figures = preflight.model_figures(resolve_model_folder(load.model), extra)
        run = preflight.run_shape(job, figures, element)
        steering = [Path(uri.path) for uri in job.request.control.uris()]  # their weights count too
        ip = job.request.ip_adapter
        steering += [Path(ip.uri().path), Path(ip.encoder_path())] if ip.on else []
        weights = preflight.weight_bytes_on_disk([*figures.weight_paths, *steering], element)
        est = preflight.estimate(weights, figures, run, device.type == "cpu")
        preflight.check(est, preflight.free_bytes(device), run, figures, current_bytes(device))
        return est

    def render(self, job: RenderJob, progress: bool = False) -> RenderResult:
        # 1. Everything that can be checked without the model, before loading it.
        resumed = None
        if job.resume is not None:
            job.validate()
            job, resumed = load_resume(job.resume, job)
        request, loras, notes = apply_preset(job.preset, job.request, job.load.loras, job.load.motion_module)
        job = replace(job, request=request, load=replace(job.load, loras=loras))
        job.validate()
        seed = parse_image_seed(job.image_seeds, len(job.request.control.nets)) if job.image_seeds else None
        resolve_dtype(job.load.dtype, resolve_device(job.load.device))
        # 2. The memory preflight, then load (or reuse) the model and resolve the request and sources against it.
        estimate = 0 if job.force else self.preflight(job).total
        pipe, reused = self.pipeline(job)
        source, request = pipe.resolve_source(job.request, seed, resumed, job.decode_chunk_size)
        output = job.output or default_output(request.prompt, request.seed)
        if job.output is None:
            check_output(output, job.overwrite)  # the made-up name, before the first step
        job = replace(job, request=request, output=output, resume=None)
        resume_file = resume_path(output)
        checkpoint = resume_file if job.checkpoint_every else None

        # 3. Denoise (checkpointing); an interruption keeps the last checkpoint and says how to resume.
        def on_step(step: int, t, latents) -> None:
            if checkpoint is not None and step % job.checkpoint_every == 0:
                save_latents(checkpoint, _snapshot(pipe, job, run, latents, step), overwrite=True)

        with PeakMemory(pipe.device) as memory:
            try:
                run = pipe.prepare(request, source)
                latents = pipe.sample(run, progress=progress, callback=on_step).latents
            except KeyboardInterrupt as e:
                saved = checkpoint if checkpoint is not None and checkpoint.exists() else None
                raise RenderInterrupted(saved, job) from e
            # 4. Save the latents, or decode them in chunks straight into the writer. An interruption or a
            # write error (a full disk) leaves no partial output and keeps the denoised latents to resume from.
            count = 0
            try:
                if is_latents_path(output):
                    save_latents(output, _snapshot(pipe, job, run), job.overwrite)
                else:
                    with FrameWriter(output, job.fps, job.overwrite) as writer:
                        for frames in pipe.decode(latents[0], job.decode_chunk_size, run.timings):
                            writer.append(frames)
                    count = writer.count
            except (KeyboardInterrupt, OSError) as e:
                kept = _keep(resume_file, _snapshot(pipe, job, run), checkpoint)
                if isinstance(e, KeyboardInterrupt):
                    raise RenderInterrupted(kept, job) from e
                raise WriteFailed(output, e, kept) from e
        if checkpoint is not None or resumed is not None:
            resume_file.unlink(missing_ok=True)  # the run it was keeping is complete
        weights = weight_bytes(pipe.denoiser.module, pipe.vae, *pipe.prompt_encoder.modules)
        notes = notes + pipe.notes
        return RenderResult(Path(output), latents, job, run.timings, weights, memory.peak,
                            process_peak(pipe.device), estimate, count, reused, notes)  # fmt: skip


def _keep(path: Path, item, previous: Path | None) -> Path | None:
    """Save finished latents to resume from (atomically: a failure keeps the previous checkpoint)."""
    try:
        save_latents(path, item, overwrite=True)
        return path
    except OSError:
        return previous if previous is not None and previous.exists() else None


def _snapshot(pipe: VideoPipeline, job: RenderJob, run, latents: Tensor | None = None, step: int | None = None):
    item = pipe.snapshot(run, latents, step)
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

    validate_decode(latents, output, fps, decode_chunk_size, overwrite)
    torch_device = resolve_device(device)
    item = load_latents(latents, "latents")
    spec = detect(resolve_model_folder(model))
    codec = LatentCodec(load_vae(model, resolve_dtype(dtype, torch_device), torch_device), spec.latent_space)
    check_latents(item, latents, codec.channels, None, argument="latents")
    with FrameWriter(output, fps, overwrite) as writer:
        for frames in codec.decode(item.latents[0], decode_chunk_size):
            writer.append(frames)
    return writer.count, item.meta.denoised
