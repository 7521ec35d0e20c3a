"""Memory preflight: estimate a run's peak memory from the model's files and the request, before loading.

The estimate adds up
- the weights: every tensor in the model's safetensors files (headers only) at the run's dtype; other
  weight files by size;
- denoising: activations grow with the batch (videos x 2 with classifier-free guidance), the frames the
  backbone sees at once (a context window, or a frame batch), the latent area and the backbone's first
  width, times a constant measured on UNets from the demo's to SDXL's size (80-160 bytes per element);
- ControlNets: the residuals each adds to the UNet's skip connections, held through the UNet call: at SD 1.5's
  widths 5.5 channels per first-width channel, 22 bytes per element in float32 (from the shapes, not
  measured); the ControlNet's own activations come and go before the UNet's;
- decoding: the VAE's first width at full resolution over one decode chunk (6-24 bytes per element
  measured, the most at 512 pixels), plus the frames a GIF or WebP keeps until it is written;
- on a CPU, a floor under the working memory (thread pools, allocator arenas, the writer: 16-27 MiB measured
  in float32 and bfloat16 alike) and the runtime itself (Python, torch, diffusers).
Activations scale with the dtype's size: bfloat16 on a CPU measured 0.51x float32's above that floor.
When it exceeds the memory the device has free, the run is refused with what would fit; `force` runs it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from .control_files import safetensors_shapes
from .errors import InvalidArgument
from .export import keeps_every_frame
from .families import OPEN_CLIP
from .job import default_output
from .request import DEFAULT_FRAMES
from .windowing import DEFAULT_LENGTH, context_for

GIB = 2**30
DENOISE_BYTES = 160  # per (batch x frame x latent pixel x first-width channel), float32; measured 80-130 on
# UNets from the demo's to SD 1.5's size, 160 on SDXL's (its 10-block transformers at the lowest level)
CONTROL_BYTES = 22  # per ControlNet, the same unit as DENOISE_BYTES: its residuals (5.5 x 4 bytes)
DECODE_BYTES = 24  # per (frame x pixel x VAE first-width channel), float32; measured 6-9 up to 256 pixels,
# 24 at 512 pixels (the SD / SDXL VAE in bfloat16: its full-resolution blocks keep several such tensors alive)
RUNTIME_BYTES = GIB // 2  # Python + torch + diffusers on a CPU, measured 0.45 GiB
WORKING_FLOOR = 24 * 2**20  # CPU working memory that no run size explains, measured 16-27 MiB
ELEMENT = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
SD15_WIDTH, SD15_VAE_WIDTH = 320, 128  # what a single-file checkpoint is taken to be


@dataclass(frozen=True)
class RunShape:
    """What the estimate needs of a run: sizes in pixels, how many frames the backbone sees at once."""

    frames: int
    height: int
    width: int
    batch: int  # videos x 2 with classifier-free guidance
    frames_at_once: int  # a context window or a frame batch; else all frames
    decode_chunk: int
    element: int  # bytes of the run's dtype
    keeps_frames: bool  # GIF and WebP writers hold every frame until the end
    controls: int = 0  # ControlNets and SparseCtrl models steering each UNet call


@dataclass(frozen=True)
class Estimate:
    weights: int
    denoise: int
    decode: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.denoise + self.decode + self.runtime

    def summary(self) -> str:
        parts = (("weights", self.weights), ("denoising", self.denoise), ("decoding", self.decode),
                 ("runtime", self.runtime))  # fmt: skip
        return f"{self.total / GIB:.1f} GiB (" + " + ".join(f"{n} {b / GIB:.1f}" for n, b in parts) + ")"


def _tensor_elements(path: Path) -> int | None:
    """Elements in a safetensors file, from its header alone; None if it is not one."""
    shapes = safetensors_shapes(path)
    if shapes is None:
        return None
    return sum(math.prod(d if isinstance(d, int) else 1 for d in shape) for shape in shapes.values())


def weight_bytes_on_disk(paths: list[Path], element: int) -> int:
    """The weights in these files and folders at `element` bytes per value (non-safetensors: file size)."""
    total = 0
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.suffix in WEIGHT_SUFFIXES]
        for file in files:
            if file.name.startswith("."):  # training checkpoints and temporaries
                continue
            elements = _tensor_elements(file) if file.suffix == ".safetensors" else None
            total += elements * element if elements is not None else file.stat().st_size
    return total


def _config(folder: Path, name: str) -> dict:
    try:
        return json.loads((folder / name / "config.json").read_text())
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class ModelFigures:
    weight_paths: tuple[Path, ...]
    width: int  # the backbone's first width: a UNet's first block, a transformer's hidden size
    vae_width: int  # the VAE's first (full-resolution) width
    default_size: int  # pixels
    vae_factor: int = 8  # pixels per latent pixel
    frame_table: int = 32  # frames the motion modules' position table holds: context windows start past it


def model_figures(folder: Path, extra: tuple[Path, ...] = ()) -> ModelFigures:
    """What the estimate needs of a model, from its configs and file headers (no weights loaded)."""
    if folder.is_file():  # widths from a safetensors header where there is one; else SD 1.5's
        shapes = safetensors_shapes(folder) or {}
        width = shapes.get("model.diffusion_model.input_blocks.0.0.weight", (SD15_WIDTH,))[0]
        vae_width = shapes.get("first_stage_model.encoder.conv_in.weight", (SD15_VAE_WIDTH,))[0]
        size = 1024 if any(k.startswith(OPEN_CLIP) for k in shapes) else 512  # SDXL's native size
        return ModelFigures((folder, *extra), width, vae_width, size, 8)
    unet, transformer, vae = (_config(folder, n) for n in ("unet", "transformer", "vae"))
    backbone = unet or transformer
    if unet.get("block_out_channels"):
        width = unet["block_out_channels"][0]
    else:
        width = transformer.get("num_attention_heads", 16) * transformer.get("attention_head_dim", 72)
    vae_blocks = vae.get("block_out_channels") or [SD15_VAE_WIDTH] * 4
    factor = 2 ** (len(vae_blocks) - 1)
    size = backbone.get("sample_size", 64)
    adapters = [_config(p.parent, p.name) for p in (*extra, folder / "motion_adapter") if p.is_dir()]
    table = next((a["motion_max_seq_length"] for a in adapters if "motion_max_seq_length" in a), 32)
    size = size * factor if isinstance(size, int) else 512
    return ModelFigures((folder, *extra), width, vae_blocks[0], size, factor, table)


def run_shape(job, figures: ModelFigures, element: int) -> RunShape:
    """The RunShape of a RenderJob (before its request is resolved: the model's defaults fill it in)."""
    r = job.request
    frames = r.frames or DEFAULT_FRAMES
    windows = context_for(r, frames, figures.frame_table)
    if job.load.frame_by_frame:
        at_once = job.load.frame_batch or frames
    elif windows is None or windows.motion_only:  # motion scope: one backbone call over every frame
        at_once = frames
    else:
        at_once = min(frames, windows.length)
    return RunShape(
        frames, r.height or figures.default_size, r.width or figures.default_size, r.num_videos * (2 if r.cfg else 1),
        at_once, job.decode_chunk_size, element, keeps_every_frame(job.output or default_output(r.prompt, 0)),
        len(r.control.nets),
    )  # fmt: skip


def estimate(weights: int, figures: ModelFigures, run: RunShape, cpu: bool) -> Estimate:
    area = (run.height // figures.vae_factor) * (run.width // figures.vae_factor)  # latent pixels
    scale = run.element / 4  # the constants were measured in float32
    per_width = (DENOISE_BYTES + CONTROL_BYTES * run.controls) * scale  # bytes per element of the first width
    denoise = per_width * run.batch * run.frames_at_once * area * figures.width
    denoise += WORKING_FLOOR if cpu else 0
    decode = DECODE_BYTES * scale * run.decode_chunk * run.height * run.width * figures.vae_width
    if run.keeps_frames:
        decode += run.frames * run.height * run.width * 3
    return Estimate(weights, int(denoise), int(decode), RUNTIME_BYTES if cpu else 0)


def free_bytes(device) -> int:
    """Memory the device has free now: the CUDA driver's figure, else the OS's available memory."""
    if device.type == "cuda":
        import torch

        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check(est: Estimate, free: int, run: RunShape, figures: ModelFigures, in_use: int = 0) -> None:
    """Refuse a run whose estimate, less what the process holds already (`in_use`), exceeds `free`; the
    message names the options that would fit."""

    def fits(changed: RunShape) -> bool:
        weights = int(est.weights * changed.element / run.element)
        return estimate(weights, figures, changed, est.runtime > 0).total - in_use <= free

    if est.total - in_use <= free:
        return
    options = (("--decode-chunk-size 1", replace(run, decode_chunk=1)),
               (f"--context-length {DEFAULT_LENGTH}",
                replace(run, frames_at_once=min(run.frames_at_once, DEFAULT_LENGTH))),
               ("--dtype bfloat16", replace(run, element=min(run.element, 2))))  # fmt: skip
    names = [flag for flag, changed in options if changed != run and fits(changed)]
    frames = run.frames // 2
    while frames >= 1 and not fits(replace(run, frames=frames, frames_at_once=min(run.frames_at_once, frames))):
        frames //= 2
    if frames >= 1:
        names.append(f"--frames {frames}")
    hint = f"would fit: {', '.join(names)}" if names else "lower --height/--width"
    raise InvalidArgument(
        "--force", f"this run needs about {est.summary()}, {free / GIB:.1f} GiB is free; {hint}; --force runs anyway"
    )
