"""VideoPipeline: encode prompts -> initial latents -> the one denoising loop -> latents or decoded frames."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from diffusers import SparseControlNetModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor, nn

from .accel.configs import CACHES, CacheConfig, DeepCacheConfig, PABConfig, cache_configs
from .accel.deep_cache import apply_deep_cache
from .accel.pab import apply_pab
from .adapters.base import Loaded, LoadOptions, VideoDenoiser
from .adapters.context import ContextWindowDenoiser
from .codec import LatentCodec
from .conditioning import Conditioning
from .control import ControlNetUri, IPAdapterOptions
from .controlnets import Control, check_control_fits, load_control_model
from .denoise import Cache, Inpaint, StepCallback, denoise, step_kwargs
from .errors import InvalidArgument
from .free_init import low_pass, reinitialize
from .image_seeds import ImageSeed
from .ip_adapter import ImageCond, ImagePrompt
from .latents_io import LatentsFile, LatentsMeta
from .loading import resolve_device, resolve_dtype, resolve_model_folder
from .memory import clock
from .request import DEFAULT_FRAMES, GenerationRequest
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
from .settings import LoadSettings
from .sources import Source, resolve_source
from .specs import BackboneSpec, detect
from .travel import interpolate
from .windowing import context_for

OUTPUT_TYPES = ("np", "pil", "latent")


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
class Run:
    """One generation, returned by `generate_latents`: the request as resolved, its conditioning, the schedule
    and the slice of it to run, the scheduler and generator (their state is what a checkpoint keeps), the
    latents as they stand (where denoising starts, then where it ended) and the timings."""

    request: GenerationRequest
    cond: Conditioning
    uncond: Conditioning | None
    scheduler: SchedulerMixin
    generator: torch.Generator
    timesteps: Tensor
    begin: int
    stop: int
    latents: Tensor  # (B, C, F, h, w)
    timings: Timings
    inpaint: Inpaint | None = None


@dataclass
class VideoOutput:
    """`frames`: one (F, H, W, 3) uint8 array (or list of PIL images) per video; `latents`: (B, C, F, h, w)."""

    frames: list | None
    latents: Tensor | None
    run: Run  # for `snapshot`

    @property
    def request(self) -> GenerationRequest:
        return self.run.request

    @property
    def timings(self) -> Timings:
        return self.run.timings


class VideoPipeline:
    """Text-to-video over any backbone adapter. Build with `from_pretrained`, call like diffusers' pipelines."""

    def __init__(self, spec: BackboneSpec, loaded: Loaded) -> None:
        self.spec = spec
        self.prompt_encoder = loaded.prompt_encoder
        self.denoiser = loaded.denoiser
        self.vae = loaded.vae
        self.scheduler_config = loaded.scheduler_config
        self.codec = LatentCodec(loaded.vae, spec.latent_space, spec.frames_per_latent)
        self.default_size = loaded.sample_size * self.codec.spatial  # pixels: the backbone's native latent size
        self.default_frames = loaded.default_frames or DEFAULT_FRAMES  # as its motion module was trained
        self.load_seconds = loaded.seconds
        self.notes = loaded.notes  # what loading found out (detected motion-module version, GroupNorm mode)
        self.accelerators: dict[str, Cache] = {}  # name -> applied accelerator, reset and stepped by the loop
        self.control_models: dict[str, nn.Module] = {}  # ControlNets by path, loaded once (warm across jobs)
        self.image_prompt: ImagePrompt | None = None  # the IP-Adapter installed on the UNet, if any

    @classmethod
    def from_pretrained(cls, model: str | LoadSettings, motion_module: str | None = None, **settings) -> VideoPipeline:
        """Any registered backbone's folder (`specs.py`), hub id, `demo` or `tiny-random`, with its temporal
        weights: an AnimateDiff motion module (folder or original single file) for SD 1.x, vidiff temporal
        layers (a .safetensors) for SD 3 / 3.5. `model` may be a whole `LoadSettings`; otherwise the keywords
        are its fields (`dtype`, `device`, `mode`, `groupnorm`, `loras`, `motion_loras`, `vae`, ...).

        `dtype="auto"` is bfloat16 on CPUs with native bf16 and on GPUs, float32 elsewhere (`default_dtype`).
        `mode="sequential"` uses the image backbone alone: frames from shared noise plus `frame_noise`, denoised
        independently, `frame_batch` frames per call (default: all). `groupnorm` runs AnimateDiff modules'
        GroupNorms as the original code trained them ("original"), as diffusers does ("diffusers"), or as the
        module records ("auto": released modules original, vidiff-trained ones diffusers). `loras` and
        `motion_loras` are "FILE" or "FILE:SCALE" specs, fused into the weights; `vae` replaces the VAE;
        `compile_backend` compiles the backbone.
        """
        if not isinstance(model, LoadSettings):
            model = LoadSettings(model, motion_module, **settings)
        elif motion_module is not None or settings:
            model = replace(model, **settings, **({"motion_module": motion_module} if motion_module else {}))
        model.check_values()
        device = resolve_device(model.device)
        folder = resolve_model_folder(model.model)
        spec = detect(folder)
        pipe = cls(spec, spec.build(folder, LoadOptions(model, resolve_dtype(model.dtype, device), device)))
        if model.compile_backend:
            pipe.compile(model.compile_backend)
        return pipe

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """Validate a request against this model and fill in its size and seed."""
        request = request.resolved(self.default_size, self.spec, self.default_frames)
        trained = self.scheduler_config.get("num_train_timesteps", 1000)
        if request.steps > trained:
            raise InvalidArgument("--steps", f"{request.steps} steps exceed this model's {trained}-step schedule")
        make_scheduler(request.scheduler, self.scheduler_config, request.beta_schedule, request.timestep_spacing)
        self.denoiser_for(request).check_frames(self.codec.latent_frames(request.frames))
        return request

    def denoiser_for(self, request: GenerationRequest) -> VideoDenoiser:
        """The backbone, wrapped in context windows when asked for or when the video is longer than its table."""
        table = self.denoiser.max_frames if self.spec.context_windows else None
        options = context_for(request, self.codec.latent_frames(request.frames or 1), table)
        if options is None:
            return self.denoiser  # its own check_frames says what it can make
        if table is None:
            raise InvalidArgument("--context-length", f"context windows need a temporal backbone that can vary its "
                                  f"frame count (this {self.spec.name} model cannot)")  # fmt: skip
        return ContextWindowDenoiser(self.denoiser, options)

    def resolve_source(
        self,
        request: GenerationRequest,
        image_seeds: str | ImageSeed | None = None,
        resume: LatentsFile | None = None,
        decode_chunk_size: int = 8,
    ) -> tuple[Source, GenerationRequest]:
        """The Source an `--image-seeds` spec (and a resumed checkpoint) names, read and checked against this
        model, and the request resolved (frames and size from latents files when the request left them open)."""
        return resolve_source(self.codec, self.resolve, request, image_seeds, resume, decode_chunk_size)

    def generate_latents(
        self,
        request: GenerationRequest,
        progress: bool = True,
        callback: StepCallback | None = None,
        source: Source | None = None,
    ) -> Run:
        """The run of a resolved request: its latents (B, C, F, h, w) denoised (or, with denoising_end, partly),
        before the VAE, with the scheduler state `snapshot` keeps and the timings."""
        return self.sample(self.prepare(request, source), progress, callback)

    @torch.inference_mode()
    def prepare(self, request: GenerationRequest, source: Source | None = None) -> Run:
        """A run ready to denoise: prompts encoded, the schedule and its slice, the starting latents."""
        assert request.seed is not None and request.height is not None, "resolve() the request first"
        source = source or Source()
        timings = Timings(load=self.load_seconds)
        # 1. Encode the prompt (and the negative prompt for classifier-free guidance).
        start = clock(self.device)
        cond, uncond = self._encode(request)
        image, negative = self._image(request, source)
        cond = replace(cond, control=self._controls(request, source), image=image)
        uncond = None if uncond is None else replace(uncond, image=negative)
        timings.encode = clock(self.device) - start
        # 2. Scheduler from the model folder's config, its explicit timestep list, and the slice to run.
        scheduler = make_scheduler(
            request.scheduler, self.scheduler_config, request.beta_schedule, request.timestep_spacing
        )
        timesteps = self._timesteps(scheduler, request)
        begin, stop = schedule_slice(
            timesteps, scheduler.config.num_train_timesteps, request.denoising_start, request.denoising_end
        )
        # 3. Noise from a CPU generator (same seed, same video on every device), drawn whatever the start.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        shape = self.codec.latent_shape(request.num_videos, request.frames, request.height, request.width)
        noise = self.denoiser_for(request).initial_noise(shape, generator, self.device, self.denoiser.dtype)
        # 4. Where denoising starts: saved latents, a source re-noised, or the noise; and the inpainting mask.
        run = Run(request, cond, uncond, scheduler, generator, timesteps, begin, stop, noise, timings)
        encoded = self.encode(source.frames) if source.frames is not None else None  # (1, C, F, h, w)
        self._start(run, source, encoded, noise)
        if source.mask is not None:
            if encoded is None:
                raise InvalidArgument("--image-seeds", "a mask needs an image or video to inpaint")
            mask = self.codec.latent_mask(source.mask).to(self.device, self.denoiser.dtype)  # (1, 1, F', h, w)
            run.inpaint = Inpaint(encoded, mask, noise)
        whole = source.latents is None and encoded is None and not run.begin and stop == len(timesteps)
        if request.free_init.passes > 1 and not whole:
            raise InvalidArgument(
                "--free-init", "re-samples a whole text-to-video run from noise (no sources, no split)"
            )
        return run

    def control_model(self, uri: ControlNetUri) -> nn.Module:
        """A ControlNet or SparseCtrl model (folder or single file), loaded once and kept for later runs."""
        if uri.path not in self.control_models:
            if not self.spec.steering:
                raise InvalidArgument("--control-nets", f"ControlNets steer UNet backbones; this is {self.spec.name}")
            model = load_control_model(uri, self.denoiser.dtype, self.device)
            check_control_fits(model, self.denoiser.module, self.codec.spatial, uri.path)
            self.control_models[uri.path] = model
        return self.control_models[uri.path]

    def _controls(self, request: GenerationRequest, source: Source) -> tuple[Control, ...]:
        """Each ControlNet with its images for every frame: RGB in [0, 1] (1, 3, F, H, W); SparseCtrl's placed on
        its frames (RGB ones VAE-encoded), zeros elsewhere, with the mask of those frames."""
        if not request.control.on:
            return ()
        if source.control is None:
            raise InvalidArgument("--control-nets", 'needs control images: --image-seeds "CTRL"')
        controls = []
        for uri, images in zip(request.control.uris(), source.control, strict=True):
            model = self.control_model(uri)
            x = torch.from_numpy(images).permute(3, 0, 1, 2)[None].to(self.device, self.denoiser.dtype) / 255
            if not isinstance(model, SparseControlNetModel):
                controls.append(Control(model, x, uri.scale, uri.start, uri.end))  # (1, 3, F, H, W)
                continue
            if self.denoiser.frames_independent:
                raise InvalidArgument("--control-nets", f"{uri.path} is SparseCtrl, which needs motion modules "
                                      "(--mode motion)")  # fmt: skip
            if model.use_simplified_condition_embedding:  # RGB SparseCtrl reads VAE latents
                x = self.encode(images)  # (1, 4, N, h, w)
            at = list(uri.frames or range(request.frames))
            placed = x.new_zeros((1, x.shape[1], request.frames, *x.shape[-2:]))  # (1, c, F, ., .)
            placed[:, :, at] = x[:, :, : len(at)]
            mask = x.new_zeros((1, 1, request.frames, *x.shape[-2:]))  # (1, 1, F, ., .)
            mask[:, :, at] = 1
            controls.append(Control(model, placed, uri.scale, uri.start, uri.end, mask))
        return tuple(controls)

    def ip_adapter(self, options: IPAdapterOptions) -> ImagePrompt | None:
        """The IP-Adapter a request names, installed on the UNet and kept for later runs with it (one at a time:
        another, or none, puts the UNet's own attention back first)."""
        wanted = (options.uri().path, options.encoder_path()) if options.on else None
        current = self.image_prompt
        if current is not None and (current.path, current.encoder_path) != wanted:
            current.remove()
            self.image_prompt = None
        if wanted is not None and self.image_prompt is None:
            if not self.spec.steering:
                raise InvalidArgument("--ip-adapters", f"IP-Adapters steer UNet backbones; this is {self.spec.name}")
            self.image_prompt = ImagePrompt.load(self.denoiser.module, *wanted, self.denoiser.dtype)
        return self.image_prompt

    def _image(self, request: GenerationRequest, source: Source) -> tuple[ImageCond | None, ImageCond | None]:
        """The IP-Adapter's image embeddings for each guidance side (zeros for the negative one, as diffusers):
        one per video (B, D), or interpolated per frame between keyframes (B, F, D); the scale likewise."""
        prompt = self.ip_adapter(request.ip_adapter)
        if prompt is None:
            return None, None
        if not source.adapter:
            raise InvalidArgument("--ip-adapters", 'needs an image: --image-seeds "adapter: ref.png"')
        keys, n = sorted(source.adapter), request.num_videos
        embeds = prompt.embed([source.adapter[k] for k in keys])  # (K, D)
        if len(keys) == 1:
            image = embeds[:1].expand(n, -1)  # (B, D)
        else:
            image = interpolate({k: embeds[i : i + 1].expand(n, -1) for i, k in enumerate(keys)}, request.frames)
        scales = request.ip_adapter.uri().scales()
        if len(scales) == 1:
            scale: float | Tensor = float(next(iter(scales.values())))
        else:
            keyed = {k: torch.tensor([[v]], device=self.device) for k, v in scales.items()}
            scale = interpolate(keyed, request.frames)[0, :, 0]  # (F,)
        negative = ImageCond(prompt, torch.zeros_like(image), scale) if request.cfg else None
        return ImageCond(prompt, image, scale), negative

    def _timesteps(self, scheduler: SchedulerMixin, request: GenerationRequest) -> Tensor:
        h, w = self.codec.latent_shape(1, 1, request.height, request.width)[-2:]
        return timesteps_for(scheduler, request.steps, self.device, tokens=h * w // 4)

    def _start(self, run: Run, source: Source, encoded: Tensor | None, noise: Tensor) -> None:
        """Set the run's starting latents and step: resumed exactly (scheduler and generator state) or from a
        fraction of saved latents; an img2img source noised to where `strength` begins; or the noise."""
        request, scheduler, timesteps = run.request, run.scheduler, run.timesteps
        restored = False
        if source.latents is not None:
            run.latents, run.begin, restored = self._resume(source.latents, run)
        elif encoded is not None and request.denoising_start is None:
            run.begin = img2img_begin(request.steps, request.strength, scheduler.order)
        if not restored and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(min(run.begin, len(timesteps) - 1))
        if source.latents is None and encoded is not None:
            at = timesteps[run.begin : run.begin + 1]
            run.latents = add_noise(scheduler, encoded, noise, at) if run.begin < len(timesteps) else encoded
        elif source.latents is None:
            run.latents = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # (B, C, F, h, w)

    @torch.inference_mode()
    def sample(self, run: Run, progress: bool = True, callback: StepCallback | None = None) -> Run:
        """Denoise a prepared run (FreeInit: several passes, each re-initialised from the last one's low
        frequencies); `callback(step, t, latents)` after each step of the last pass."""
        request, scheduler = run.request, run.scheduler
        denoiser, passes, first = self.denoiser_for(request), request.free_init.passes, run.latents  # (B, C, F, h, w)
        start = clock(self.device)
        handles = self.denoiser.scale_motion(request.motion_scale)
        try:
            for i in range(passes):
                if i > 0:
                    o = request.free_init
                    mask = low_pass((1, *first.shape[1:]), o.method, o.order, o.spatial, o.temporal, self.device)
                    run.latents = reinitialize(run.latents, first, scheduler, run.generator, mask)
                    run.timesteps = self._timesteps(scheduler, request)
                run.latents = denoise(
                    denoiser, scheduler, run.latents, run.timesteps, run.cond, run.uncond, request.guidance_scale,
                    request.guidance_rescale, step_kwargs(scheduler, run.generator, request.eta), progress=progress,
                    callback=callback if i == passes - 1 else None, begin=run.begin, stop=run.stop,
                    inpaint=run.inpaint, caches=list(self.accelerators.values()),
                )  # fmt: skip
        finally:
            for handle in handles:
                handle.remove()
        run.timings.denoise = clock(self.device) - start
        run.timings.steps = max(run.stop - run.begin, 0) * passes
        run.timings.frames = request.frames * request.num_videos
        return run

    def _encode(self, request: GenerationRequest) -> tuple[Conditioning, Conditioning | None]:
        """(cond, uncond or None): per video, or per frame where a prompt travels. The negative prompt goes to
        every text encoder (diffusers' default for negative_prompt_2 and _3)."""
        n, length = request.num_videos, {"max_sequence_length": request.max_sequence_length}
        extra = dict(length, prompts_2=[request.prompt_2] * n if request.prompt_2 is not None else None,
                     prompts_3=[request.prompt_3] * n if request.prompt_3 is not None else None)  # fmt: skip
        if not request.travel.on:
            negatives = [request.negative_prompt] * n if request.cfg else None
            return self.prompt_encoder.encode_pair([request.prompt] * n, negatives, **extra)

        def encode(prompt: str, travel: dict[int, str] | None, options: dict, negative: bool = False) -> Conditioning:
            call = self.prompt_encoder.negative if negative else self.prompt_encoder
            if travel is None:
                return call([prompt] * n, **options)
            keyed = {f: call([p] * n, **options) for f, p in travel.items()}
            how, frames = request.travel.interpolation, request.frames
            embeds = interpolate({f: c.embeds for f, c in keyed.items()}, frames, how)  # (B, F, L, D)
            pooled = None
            if next(iter(keyed.values())).pooled is not None:
                pooled = interpolate({f: c.pooled for f, c in keyed.items()}, frames, how)  # (B, F, P)
            return Conditioning(embeds, pooled)

        cond = encode(request.prompt, request.travel.prompt, extra)
        uncond = encode(request.negative_prompt, request.travel.negative, length, True) if request.cfg else None
        return cond, uncond

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

    def enable_cache(self, *configs: CacheConfig) -> list[Cache]:
        """Turn on step caches, replacing any that are on (as diffusers' `enable_cache`): Pyramid Attention
        Broadcast (`PABConfig`) and DeepCache (`DeepCacheConfig`, UNets only); with none given, the backbone's
        best measured combination (`--fast`, the spec's `fast`). Returns the caches in the order they run."""
        self.disable_cache()
        applied: dict[str, Cache] = {}
        try:
            for config in configs or cache_configs(self.spec.fast):
                if isinstance(config, PABConfig):
                    applied["pab"] = apply_pab(self.denoiser, self.spec.attention_rules, config)
                elif isinstance(config, DeepCacheConfig):
                    if not self.spec.deep_cache:
                        raise InvalidArgument("--deep-cache", "this backbone has no UNet blocks to reuse (DeepCache "
                                              "needs a UNet)")  # fmt: skip
                    applied["deep_cache"] = apply_deep_cache(self.denoiser, config)
                else:
                    raise InvalidArgument("enable_cache", f"takes PABConfig or DeepCacheConfig, not {config!r}")
        except Exception:
            for cache in applied.values():
                cache.remove()
            raise
        self.accelerators = {name: applied[name] for name in CACHES if name in applied}
        return list(self.accelerators.values())

    def disable_cache(self) -> None:
        """Remove every step cache (their hooks and state)."""
        for cache in self.accelerators.values():
            cache.remove()
        self.accelerators = {}

    def _resume(self, item: LatentsFile, run: Run) -> tuple[Tensor, int, bool]:
        """Continue from saved latents: exactly (scheduler and generator state) when the file was saved by the
        same scheduler and step count, else from the fraction (`--denoising-start`, or the file's own)."""
        request, scheduler, timesteps, begin = run.request, run.scheduler, run.timesteps, run.begin
        meta = item.meta
        expected = self.codec.latent_shape(request.num_videos, request.frames, request.height, request.width)
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
                run.generator.set_state(item.generator_state)
            return latents, meta.step, True
        if request.denoising_start is None:
            if meta.denoised is None:
                raise InvalidArgument("--denoising-start", "needed: the latents file does not say where it stopped")
            begin = schedule_slice(timesteps, scheduler.config.num_train_timesteps, meta.denoised, None)[0]
        return latents, begin, False

    def encode(self, frames: np.ndarray, chunk_size: int = 8) -> Tensor:
        """Frames (F, H, W, 3) uint8 -> scaled latents (1, C, F, h, w)."""
        return self.codec.encode(frames, chunk_size)[None].to(self.denoiser.dtype)

    def snapshot(self, run: Run, latents: Tensor | None = None, step: int | None = None) -> LatentsFile:
        """A run's latents (default: where it stopped; or `latents` at `step`, from a step callback), with
        what a resume needs."""
        latents = run.latents if latents is None else latents  # (B, C, F, h, w)
        step = run.stop if step is None else step
        request = run.request
        done = request.denoising_end if step == run.stop and request.denoising_end is not None else None
        meta = LatentsMeta(
            family=self.codec.space,
            latent_channels=self.codec.channels,
            scaling_factor=self.codec.scaling,
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

    def decode(self, latents: Tensor, chunk_size: int = 8, timings: Timings | None = None) -> Iterator[np.ndarray]:
        """Decode one video's latents (C, F, h, w) in frame chunks, yielding (n, H, W, 3) uint8 arrays; the time
        is added to `timings` (a run's) when given."""
        chunks = self.codec.decode(latents, chunk_size)
        timings = timings or Timings()
        while True:
            start = clock(self.device)
            frames = next(chunks, None)
            timings.decode += clock(self.device) - start
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
        image_seeds: str | None = None,
        **options,
    ) -> VideoOutput:
        """Generate; `options` are GenerationRequest fields (frames, steps, seed, scheduler, ...) or its groups'
        fields by their flat names (context_length, free_init, prompt_travel, control_nets, ...). `image_seeds`
        names sources in dgenerate's grammar (latents, img2img, mask, control images); `source` gives them
        read already."""
        if output_type not in OUTPUT_TYPES:
            raise InvalidArgument("output_type", f"must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        request = GenerationRequest.from_options(prompt, **options)
        if image_seeds is not None:
            if source is not None:
                raise InvalidArgument("image_seeds", "give image_seeds or source, not both")
            source, request = self.resolve_source(request, image_seeds, decode_chunk_size=decode_chunk_size)
        else:
            request = self.resolve(request)
        run = self.generate_latents(request, progress=progress, callback=callback, source=source)
        if output_type == "latent":
            return VideoOutput(None, run.latents, run)
        videos = [np.concatenate(list(self.decode(video, decode_chunk_size, run.timings))) for video in run.latents]
        if output_type == "pil":
            from PIL import Image

            videos = [[Image.fromarray(frame) for frame in video] for video in videos]
        return VideoOutput(videos, run.latents, run)
