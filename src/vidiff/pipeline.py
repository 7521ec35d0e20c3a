"""VideoPipeline: encode prompts -> initial latents -> the one denoising loop -> latents or decoded frames."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor

from .accel.pab import PAB, PABConfig, apply_pab, remove_pab
from .adapters.base import VideoDenoiser
from .adapters.image_sequential import DEFAULT_FRAME_NOISE, ImageSequentialDenoiser
from .adapters.latte import LatteDenoiser
from .adapters.sd3_temporal import SD3Denoiser
from .adapters.unet_image import UNetFramesDenoiser
from .adapters.unet_motion import UNetMotionDenoiser
from .codec import decode_frames, encode_frames
from .denoise import Inpaint, StepCallback, denoise, step_kwargs
from .errors import InvalidArgument
from .latents_io import LatentsFile, LatentsMeta
from .loading import load_latte, load_sd1, load_sd3, model_family, resolve_device, resolve_dtype, resolve_model_folder
from .motion.sd3_temporal import SD3TemporalLayers
from .request import GenerationRequest
from .schedules import (
    add_noise,
    img2img_begin,
    make_scheduler,
    restore_scheduler_state,
    schedule_slice,
    scheduler_name,
    scheduler_state,
    timesteps_for,
)
from .text import ClipPromptEncoder, PromptEncoder, SD3PromptEncoder, T5PromptEncoder

OUTPUT_TYPES = ("np", "pil", "latent")
MODES = ("motion", "sequential")  # all frames denoised together through motion modules | frame by frame


@dataclass
class Timings:
    """Wall-clock seconds of each stage of the last generation."""

    load: float = 0.0
    encode: float = 0.0
    denoise: float = 0.0
    steps: int = 0
    decode: float = 0.0
    frames: int = 0

    @property
    def per_step(self) -> float:
        return self.denoise / max(self.steps, 1)

    @property
    def per_frame(self) -> float:
        return (self.encode + self.denoise + self.decode) / max(self.frames, 1)

    def summary(self) -> str:
        return (
            f"load {self.load:.1f} s | {self.steps} steps in {self.denoise:.1f} s ({self.per_step:.2f} s/step) | "
            f"decode {self.decode:.1f} s | {self.per_frame:.2f} s/frame over {self.frames} frames"
        )


@dataclass
class Source:
    """Where denoising starts besides noise: an img2img / inpaint source, a mask, saved noisy latents."""

    frames: np.ndarray | None = None  # (F, H, W, 3) uint8 at the request's size
    mask: np.ndarray | None = None  # (F, H, W) in [0, 1]: 1 = repaint, 0 = keep the source
    latents: LatentsFile | None = None  # continue from these (cooperative denoising, resume)


@dataclass
class _Run:
    """The last generation's schedule, for snapshots."""

    request: GenerationRequest
    scheduler: SchedulerMixin
    generator: torch.Generator
    timesteps: Tensor
    stop: int


@dataclass
class VideoOutput:
    """`frames`: one (F, H, W, 3) uint8 array (or list of PIL images) per video; `latents`: (B, C, F, h, w)."""

    frames: list | None
    latents: Tensor | None
    request: GenerationRequest
    timings: Timings


class VideoPipeline:
    """Text-to-video over any backbone adapter. Build with `from_pretrained`, call like diffusers' pipelines."""

    def __init__(
        self,
        prompt_encoder: PromptEncoder,
        denoiser: VideoDenoiser,
        vae: AutoencoderKL,
        scheduler_config: dict,
        sample_size: int,
        load_seconds: float = 0.0,
    ) -> None:
        self.prompt_encoder = prompt_encoder
        self.denoiser = denoiser
        self.vae = vae
        self.scheduler_config = scheduler_config
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.default_size = sample_size * self.vae_scale_factor  # pixels: the backbone's native latent size
        self.timings = Timings(load=load_seconds)
        self.pab: PAB | None = None

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        motion_module: str | None = None,
        dtype: str = "auto",
        device: str = "cpu",
        mode: str = "motion",
        frame_noise: float = DEFAULT_FRAME_NOISE,
        frame_batch: int | None = None,
        use_t5: bool = True,
    ) -> VideoPipeline:
        """An SD 1.x folder or hub id plus an AnimateDiff motion module (folder or original single file), or an
        SD 3 / 3.5 folder plus vidiff temporal layers (`motion_module`, a .safetensors; T5 optional).

        `dtype="auto"` is bfloat16 on CPUs with native bf16 and on GPUs, float32 elsewhere (`default_dtype`).
        `mode="sequential"` uses the image UNet alone: frames from shared noise plus `frame_noise`, denoised
        independently, `frame_batch` frames per UNet call (default: all).
        """
        if mode not in MODES:
            raise InvalidArgument("--mode", f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
        if frame_batch is not None and frame_batch < 1:
            raise InvalidArgument("--frame-batch", f"must be >= 1, got {frame_batch}")
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        folder = resolve_model_folder(model)
        if model_family(folder) == "latte":
            return cls._latte(folder, torch_dtype, torch_device, temporal_attention=mode == "motion")
        if model_family(folder) == "sd3":
            return cls._sd3(folder, motion_module, torch_dtype, torch_device, mode, frame_noise, frame_batch, use_t5)
        parts = load_sd1(str(folder), motion_module, torch_dtype, torch_device, motion=mode == "motion")
        if mode == "motion":
            denoiser: VideoDenoiser = UNetMotionDenoiser(parts.unet)
        else:
            denoiser = ImageSequentialDenoiser(UNetFramesDenoiser(parts.unet), frame_noise, frame_batch)
        if torch_device.type == "cpu" and torch_dtype == torch.bfloat16:
            parts.unet.to(memory_format=torch.channels_last)  # bf16 convolutions on CPU: 4-5% faster per step
        return cls(
            ClipPromptEncoder(parts.tokenizer, parts.text_encoder),
            denoiser,
            parts.vae,
            parts.scheduler_config,
            sample_size=parts.unet.config.sample_size,
            load_seconds=parts.seconds,
        )

    @classmethod
    def _latte(cls, folder, dtype, device, temporal_attention: bool) -> VideoPipeline:
        """Latte: a video DiT; `mode="sequential"` turns its temporal attention off (enable_temporal_attentions)."""
        parts = load_latte(folder, dtype, device)
        return cls(
            T5PromptEncoder(parts.tokenizer, parts.text_encoder),
            LatteDenoiser(parts.transformer, temporal_attention),
            parts.vae,
            parts.scheduler_config,
            sample_size=parts.transformer.config.sample_size,
            load_seconds=parts.seconds,
        )

    @classmethod
    def _sd3(cls, folder, temporal_path, dtype, device, mode, frame_noise, frame_batch, use_t5) -> VideoPipeline:
        """SD 3 / 3.5: with temporal layers all frames are denoised together; without, frame by frame."""
        parts = load_sd3(folder, dtype, device, use_t5)
        temporal = SD3TemporalLayers.load(temporal_path) if temporal_path else None
        if temporal is not None and mode == "motion":
            denoiser: VideoDenoiser = SD3Denoiser(parts.transformer, temporal)
        else:
            denoiser = ImageSequentialDenoiser(SD3Denoiser(parts.transformer), frame_noise, frame_batch)
        encoder = SD3PromptEncoder(parts.tokenizers, parts.text_encoders, parts.transformer.config.joint_attention_dim)
        return cls(
            encoder,
            denoiser,
            parts.vae,
            parts.scheduler_config,
            sample_size=parts.transformer.config.sample_size,
            load_seconds=parts.seconds,
        )

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """Validate a request against this model and fill in its size and seed."""
        self.denoiser.check_frames(request.frames)
        return request.resolved(self.default_size, self.denoiser.family)

    @torch.inference_mode()
    def generate_latents(
        self,
        request: GenerationRequest,
        progress: bool = True,
        callback: StepCallback | None = None,
        source: Source | None = None,
    ) -> Tensor:
        """Denoised (or, with denoising_end, partly denoised) latents (B, C, F, h, w), before the VAE."""
        assert request.seed is not None and request.height is not None, "resolve() the request first"
        source = source or Source()
        # 1. Encode the prompt (and the negative prompt for classifier-free guidance).
        start = time.perf_counter()
        n = request.num_videos
        cond, uncond = self.prompt_encoder.encode_pair(
            [request.prompt] * n,
            [request.negative_prompt] * n if request.cfg else None,
            prompts_2=[request.prompt_2] * n if request.prompt_2 is not None else None,
            prompts_3=[request.prompt_3] * n if request.prompt_3 is not None else None,
            max_sequence_length=request.max_sequence_length,
        )
        self.timings.encode = time.perf_counter() - start
        # 2. Scheduler from the model folder's config, its explicit timestep list, and the slice to run.
        scheduler = make_scheduler(request.scheduler, self.scheduler_config, request.beta_schedule)
        h, w = self.latent_size(request)
        timesteps = timesteps_for(scheduler, request.steps, self.device, tokens=h * w // 4)
        train_steps = scheduler.config.num_train_timesteps
        begin, stop = schedule_slice(timesteps, train_steps, request.denoising_start, request.denoising_end)
        # 3. Noise from a CPU generator (same seed, same video on every device), drawn whatever the start.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        shape = (request.num_videos, self.denoiser.latent_channels, request.frames, *self.latent_size(request))
        noise = self.denoiser.initial_noise(shape, generator, self.device, self.denoiser.dtype)  # (B, C, F, h, w)
        # 4. Starting latents: resumed from a file, an img2img source re-noised, or pure noise.
        source_latents = self.encode(source.frames) if source.frames is not None else None  # (1, C, F, h, w)
        restored = False
        if source.latents is not None:
            latents, begin, restored = self._resume(source.latents, request, scheduler, generator, timesteps, begin)
        elif source_latents is not None and request.denoising_start is None:
            begin = img2img_begin(request.steps, request.strength, scheduler.order)
        if not restored and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(min(begin, len(timesteps) - 1))
        if source.latents is None and source_latents is not None:
            at = timesteps[begin : begin + 1]
            latents = add_noise(scheduler, source_latents, noise, at) if begin < len(timesteps) else source_latents
        elif source.latents is None:
            latents = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # (B, C, F, h, w)
        inpaint = None
        if source.mask is not None:
            if source_latents is None:
                raise InvalidArgument("--image-seeds", "a mask needs an image or video to inpaint")
            inpaint = Inpaint(source_latents, self._latent_mask(source.mask, shape), noise)
        # 5. The loop.
        self._run = _Run(request, scheduler, generator, timesteps, stop)
        start = time.perf_counter()
        latents = denoise(
            self.denoiser,
            scheduler,
            latents,
            timesteps,
            cond,
            uncond,
            request.guidance_scale,
            step_kwargs(scheduler, generator, request.eta),
            progress=progress,
            callback=callback,
            begin=begin,
            stop=stop,
            inpaint=inpaint,
            cache=self.pab,
        )
        self.timings.denoise = time.perf_counter() - start
        self.timings.steps = max(stop - begin, 0)
        self.timings.decode = 0.0
        self.timings.frames = request.frames * request.num_videos
        return latents

    def compile(self, backend: str = "inductor", mode: str | None = None) -> None:
        """torch.compile the backbone in place; `backend` is any registered torch.compile backend, which is
        how other accelerators plug in."""
        import torch._dynamo

        if backend not in torch._dynamo.list_backends(exclude_tags=()):
            known = ", ".join(torch._dynamo.list_backends())
            raise InvalidArgument(
                "--compile-backend", f"unknown torch.compile backend {backend!r} (registered: {known})"
            )
        self.denoiser.module.compile(backend=backend, mode=mode)

    def enable_pab(self, config: PABConfig | None = None) -> PAB:
        """Pyramid Attention Broadcast on this pipeline's backbone (replacing any earlier configuration)."""
        self.disable_pab()
        self.pab = apply_pab(self.denoiser, config)
        return self.pab

    def disable_pab(self) -> None:
        if self.pab is not None:
            remove_pab(self.pab)
            self.pab = None

    def enable_pyramid_attention_broadcast(
        self,
        spatial_attn_skip_range: int | None = 2,
        temporal_attn_skip_range: int | None = 3,
        cross_attn_skip_range: int | None = 6,
        spatial_attn_timestep_range=(100, 800),
        temporal_attn_timestep_range=(100, 800),
        cross_attn_timestep_range=(100, 800),
    ) -> PAB:
        """The seeds' spelling of `enable_pab`."""
        return self.enable_pab(
            PABConfig(
                spatial_attn_skip_range,
                temporal_attn_skip_range,
                cross_attn_skip_range,
                tuple(spatial_attn_timestep_range),
                tuple(temporal_attn_timestep_range),
                tuple(cross_attn_timestep_range),
            )
        )

    def latent_size(self, request: GenerationRequest) -> tuple[int, int]:
        return request.height // self.vae_scale_factor, request.width // self.vae_scale_factor

    def _resume(self, item: LatentsFile, request, scheduler, generator, timesteps, begin) -> tuple[Tensor, int, bool]:
        """Continue from saved latents: exactly (scheduler and generator state) when the file was saved by the
        same scheduler and step count, else from the fraction (`--denoising-start`, or the file's own)."""
        meta = item.meta
        expected = (request.num_videos, self.denoiser.latent_channels, request.frames, *self.latent_size(request))
        if tuple(item.latents.shape) != expected:
            raise InvalidArgument("--image-seeds", f"latents of shape {tuple(item.latents.shape)}, expected {expected}")
        latents = item.latents.to(self.device, self.denoiser.dtype)
        exact = (
            item.scheduler_state is not None
            and meta.scheduler == scheduler_name(scheduler)
            and meta.steps == request.steps
            and (request.denoising_start is None or begin == meta.step)
        )
        if exact:
            restore_scheduler_state(scheduler, item.scheduler_state)
            if item.generator_state is not None:
                generator.set_state(item.generator_state)
            return latents, meta.step, True
        if request.denoising_start is None:
            if meta.denoised is None:
                raise InvalidArgument("--denoising-start", "needed: the latents file does not say where it stopped")
            begin = schedule_slice(timesteps, scheduler.config.num_train_timesteps, meta.denoised, None)[0]
        return latents, begin, False

    def _latent_mask(self, mask: np.ndarray, shape: tuple[int, ...]) -> Tensor:
        """(F, H, W) floats, 1 = repaint -> (1, 1, F, h, w) binary at latent resolution."""
        m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[:, None]  # (F, 1, H, W)
        m = torch.nn.functional.interpolate(m, size=shape[-2:], mode="area")  # (F, 1, h, w)
        return (m > 0.5).to(self.device, self.denoiser.dtype).transpose(0, 1)[None]  # (1, 1, F, h, w)

    def encode(self, frames: np.ndarray, chunk_size: int = 8) -> Tensor:
        """Frames (F, H, W, 3) uint8 -> scaled latents (1, C, F, h, w)."""
        return encode_frames(self.vae, frames, chunk_size)[None].to(self.denoiser.dtype)

    def snapshot(self, latents: Tensor, step: int | None = None) -> LatentsFile:
        """Latents of the last run at `step` (default: where it stopped), with what a resume needs."""
        run = self._run
        step = run.stop if step is None else step
        request = run.request
        done = request.denoising_end if step == run.stop and request.denoising_end is not None else None
        meta = LatentsMeta(
            family=self.denoiser.family,
            latent_channels=self.denoiser.latent_channels,
            scaling_factor=self.vae.config.scaling_factor,
            shift_factor=self.vae.config.get("shift_factor"),
            scheduler=scheduler_name(run.scheduler),
            denoised=done if done is not None else step / len(run.timesteps),
            frames=request.frames,
            height=request.height,
            width=request.width,
            seed=request.seed,
            prompt=request.prompt,
            steps=request.steps,
            step=step,
            request=asdict(request),
        )
        unfinished = step < len(run.timesteps)
        return LatentsFile(
            latents,
            meta,
            scheduler_state(run.scheduler) if unfinished else None,
            run.generator.get_state() if unfinished else None,
        )

    def decode(self, latents: Tensor, chunk_size: int = 8) -> Iterator[np.ndarray]:
        """Decode one video's latents (C, F, h, w) in frame chunks, yielding (n, H, W, 3) uint8 arrays."""
        if chunk_size < 1:
            raise InvalidArgument("--decode-chunk-size", f"must be >= 1, got {chunk_size}")
        chunks = decode_frames(self.vae, latents, chunk_size)
        while True:
            start = time.perf_counter()
            frames = next(chunks, None)
            self.timings.decode += time.perf_counter() - start
            if frames is None:
                return
            yield frames

    def __call__(
        self,
        prompt: str,
        output_type: str = "np",
        decode_chunk_size: int = 8,
        progress: bool = True,
        callback: StepCallback | None = None,
        source: Source | None = None,
        **options,
    ) -> VideoOutput:
        """Generate; `options` are GenerationRequest fields (frames, steps, seed, scheduler, ...)."""
        if output_type not in OUTPUT_TYPES:
            raise InvalidArgument("output_type", f"must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        request = self.resolve(GenerationRequest(prompt=prompt, **options))
        latents = self.generate_latents(request, progress=progress, callback=callback, source=source)
        if output_type == "latent":
            return VideoOutput(None, latents, request, replace(self.timings))
        videos = [np.concatenate(list(self.decode(video, decode_chunk_size))) for video in latents]
        if output_type == "pil":
            from PIL import Image

            videos = [[Image.fromarray(frame) for frame in video] for video in videos]
        return VideoOutput(videos, latents, request, replace(self.timings))
