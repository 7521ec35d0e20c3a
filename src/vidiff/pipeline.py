"""VideoPipeline: encode prompts -> initial latents -> the one denoising loop -> latents or decoded frames."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from diffusers import AutoencoderKL
from torch import Tensor

from .adapters.base import VideoDenoiser
from .adapters.image_sequential import DEFAULT_FRAME_NOISE, ImageSequentialDenoiser
from .adapters.unet_motion import UNetMotionDenoiser
from .denoise import StepCallback, denoise, step_kwargs
from .errors import InvalidArgument
from .loading import load_sd1, resolve_device, resolve_dtype
from .request import GenerationRequest
from .schedules import make_scheduler, timesteps_for
from .text import ClipPromptEncoder

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
        prompt_encoder: ClipPromptEncoder,
        denoiser: VideoDenoiser,
        vae: AutoencoderKL,
        scheduler_config: dict,
        default_size: int,
        load_seconds: float = 0.0,
    ) -> None:
        self.prompt_encoder = prompt_encoder
        self.denoiser = denoiser
        self.vae = vae
        self.scheduler_config = scheduler_config
        self.default_size = default_size
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.timings = Timings(load=load_seconds)

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        motion_module: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        mode: str = "motion",
        frame_noise: float = DEFAULT_FRAME_NOISE,
    ) -> VideoPipeline:
        """An SD 1.x folder or hub id plus an AnimateDiff motion module (folder or original single file).

        `mode="sequential"` uses the image UNet alone: frames from shared noise plus `frame_noise`.
        """
        if mode not in MODES:
            raise InvalidArgument("--mode", f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        parts = load_sd1(model, motion_module, torch_dtype, torch_device, motion=mode == "motion")
        vae_scale = 2 ** (len(parts.vae.config.block_out_channels) - 1)
        if mode == "motion":
            denoiser: VideoDenoiser = UNetMotionDenoiser(parts.unet)
        else:
            denoiser = ImageSequentialDenoiser(parts.unet, frame_noise)
        return cls(
            ClipPromptEncoder(parts.tokenizer, parts.text_encoder),
            denoiser,
            parts.vae,
            parts.scheduler_config,
            default_size=parts.unet.config.sample_size * vae_scale,
            load_seconds=parts.seconds,
        )

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """Validate a request against this model and fill in its size and seed."""
        return request.resolved(self.default_size, self.denoiser.max_frames)

    @torch.inference_mode()
    def generate_latents(
        self, request: GenerationRequest, progress: bool = True, callback: StepCallback | None = None
    ) -> Tensor:
        """Denoised latents (B, C, F, h, w) for a resolved request, before the VAE."""
        assert request.seed is not None and request.height is not None, "resolve() the request first"
        # 1. Encode the prompt (and the negative prompt for classifier-free guidance).
        start = time.perf_counter()
        cond = self.prompt_encoder([request.prompt] * request.num_videos)
        uncond = self.prompt_encoder([request.negative_prompt] * request.num_videos) if request.cfg else None
        self.timings.encode = time.perf_counter() - start
        # 2. Scheduler from the model folder's config, and its explicit timestep list.
        scheduler = make_scheduler(request.scheduler, self.scheduler_config, request.beta_schedule)
        timesteps = timesteps_for(scheduler, request.steps, self.device)
        # 3. Initial noise from a CPU generator, so a seed gives the same video on every device.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        shape = (
            request.num_videos,
            self.denoiser.latent_channels,
            request.frames,
            request.height // self.vae_scale_factor,
            request.width // self.vae_scale_factor,
        )
        latents = self.denoiser.initial_noise(shape, generator, self.device, self.denoiser.dtype)
        latents = latents * scheduler.init_noise_sigma  # (B, C, F, h, w)
        # 4. The loop.
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
        )
        self.timings.denoise = time.perf_counter() - start
        self.timings.steps = len(timesteps)
        self.timings.decode = 0.0
        self.timings.frames = request.frames * request.num_videos
        return latents

    @torch.inference_mode()
    def decode(self, latents: Tensor, chunk_size: int = 8) -> Iterator[np.ndarray]:
        """Decode one video's latents (C, F, h, w) in frame chunks, yielding (n, H, W, 3) uint8 arrays."""
        if chunk_size < 1:
            raise InvalidArgument("--decode-chunk-size", f"must be >= 1, got {chunk_size}")
        scaling = self.vae.config.scaling_factor
        shift = self.vae.config.get("shift_factor") or 0.0
        for i in range(0, latents.shape[1], chunk_size):
            start = time.perf_counter()
            z = latents[:, i : i + chunk_size].transpose(0, 1)  # (n, C, h, w)
            z = z.to(self.vae.dtype) / scaling + shift
            pixels = self.vae.decode(z).sample.float()  # (n, 3, H, W) in [-1, 1]
            pixels = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
            frames = pixels.permute(0, 2, 3, 1).cpu().numpy()  # (n, H, W, 3)
            self.timings.decode += time.perf_counter() - start
            yield frames

    def __call__(
        self,
        prompt: str,
        output_type: str = "np",
        decode_chunk_size: int = 8,
        progress: bool = True,
        callback: StepCallback | None = None,
        **options,
    ) -> VideoOutput:
        """Generate; `options` are GenerationRequest fields (frames, steps, seed, scheduler, ...)."""
        if output_type not in OUTPUT_TYPES:
            raise InvalidArgument("output_type", f"must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        request = self.resolve(GenerationRequest(prompt=prompt, **options))
        latents = self.generate_latents(request, progress=progress, callback=callback)
        if output_type == "latent":
            return VideoOutput(None, latents, request, replace(self.timings))
        videos = [np.concatenate(list(self.decode(video, decode_chunk_size))) for video in latents]
        if output_type == "pil":
            from PIL import Image

            videos = [[Image.fromarray(frame) for frame in video] for video in videos]
        return VideoOutput(videos, latents, request, replace(self.timings))
