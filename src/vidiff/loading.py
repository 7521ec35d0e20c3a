"""Model specs -> loaded components: diffusers folders, hub ids, and the tiny random smoke model."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPTextModel, CLIPTokenizer

from .adapters.unet_motion import merge_motion_unet
from .errors import InvalidArgument, LoadError
from .motion.animatediff_format import load_motion_adapter

TINY_RANDOM = "tiny-random"
DEMO = "demo"
AUTO = "auto"  # the dtype: see default_dtype
DEMO_FOLDER = Path(__file__).resolve().parent / "demo" / "tiny-t2v"
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
SD1_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
UNSUPPORTED_PIPELINES = {"StableDiffusionXLPipeline": "SDXL", "FluxPipeline": "Flux"}
SD3_PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda[:N]' or 'mps', checked against what this machine has."""
    kind = name.split(":")[0]
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if kind not in available:
        raise InvalidArgument("--device", f"unknown device {name!r} (choose from cpu, cuda, mps)")
    if not available[kind]:
        raise InvalidArgument("--device", f"{kind} is not available on this machine")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic on this CPU (AVX-512 BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def default_dtype(device: torch.device) -> torch.dtype:
    """`--dtype auto`: bfloat16 on a CPU with native bf16 and on GPUs that have it, float16 on other GPUs,
    float32 on other CPUs."""
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """A dtype name valid on `device` ('auto': `default_dtype`): float16 needs a GPU (use bfloat16 on CPU)."""
    if name == AUTO:
        return default_dtype(device)
    if name not in DTYPES:
        raise InvalidArgument("--dtype", f"unknown dtype {name!r} (choose from auto, float32, bfloat16, float16)")
    dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise InvalidArgument("--dtype", "float16 is not supported on cpu; use bfloat16")
    return dtype


@dataclass
class SD1Components:
    """A Stable Diffusion 1.x model with its motion modules merged into the UNet."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNetMotionModel | UNet2DConditionModel  # the image UNet alone when motion=False
    vae: AutoencoderKL
    scheduler_config: dict
    seconds: float  # wall time spent loading


def _cache_dir() -> Path:
    return Path(os.environ.get("VIDIFF_CACHE", Path.home() / ".cache" / "vidiff"))


def _tiny_random_folder() -> Path:
    from .tiny import save_tiny_sd1

    folder = _cache_dir() / TINY_RANDOM
    if not (folder / "model_index.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tiny-"))
        save_tiny_sd1(tmp, motion_adapter=True)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    parts = (*SD1_PARTS, *SD3_PARTS, "text_encoder_3", "tokenizer_3", "motion_adapter")
    patterns = ["model_index.json"] + [f"{p}/*.{ext}" for p in parts for ext in ("json", "txt", "model", "safetensors")]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=["*fp16*", "*non_ema*"]))
    except Exception as e:  # network, auth, missing repo, offline cache miss: all one message
        raise LoadError(
            "--model",
            f"{repo_id!r} is not a local folder and could not be fetched from the hub or its cache ({e})",
        ) from e


def resolve_model_folder(model: str) -> Path:
    """A local diffusers folder for a model spec (folder path, hub id, or `tiny-random`)."""
    if model == TINY_RANDOM:
        return _tiny_random_folder()
    if model == DEMO:
        return DEMO_FOLDER
    path = Path(model).expanduser()
    if path.is_file():
        raise LoadError("--model", f"{path} is a file; pass a diffusers model folder (single files are not supported)")
    if path.is_dir():
        return path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith((".", "/")):
        return _download(model)
    raise LoadError("--model", f"no such folder: {path}")


def _check_sd1_folder(folder: Path) -> None:
    index_path = folder / "model_index.json"
    if index_path.is_file():
        family = UNSUPPORTED_PIPELINES.get(json.loads(index_path.read_text()).get("_class_name", ""))
        if family:
            raise LoadError("--model", f"{folder} is a {family} model; this backbone needs Stable Diffusion 1.x")
    missing = [p for p in SD1_PARTS if not (folder / p).is_dir()]
    if missing:
        raise LoadError(
            "--model", f"{folder} is not a diffusers Stable Diffusion folder (missing {', '.join(missing)})"
        )


def _from_pretrained(load, path: Path, **kwargs):
    try:
        return load(path, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise LoadError("--model", f"cannot load {path} ({str(e).splitlines()[0]})") from e


def load_sd1(
    model: str, motion_module: str | None, dtype: torch.dtype, device: torch.device, motion: bool = True
) -> SD1Components:
    """Load an SD 1.x folder and merge a motion module (argument, or the folder's own motion_adapter/).

    With `motion=False` the image UNet is returned as it is, for frame-by-frame generation.
    """
    start = time.perf_counter()
    folder = resolve_model_folder(model)
    _check_sd1_folder(folder)
    tokenizer = _from_pretrained(CLIPTokenizer.from_pretrained, folder / "tokenizer")
    text_encoder = _from_pretrained(CLIPTextModel.from_pretrained, folder / "text_encoder", dtype=dtype)
    vae = _from_pretrained(AutoencoderKL.from_pretrained, folder / "vae", torch_dtype=dtype)
    scheduler_config = dict(_from_pretrained(DDIMScheduler.load_config, folder / "scheduler"))

    unet_class = json.loads((folder / "unet" / "config.json").read_text()).get("_class_name")
    if motion_module is None and (folder / "motion_adapter").is_dir():
        motion_module = str(folder / "motion_adapter")
    if not motion:
        if unet_class == "UNetMotionModel":
            raise LoadError(
                "--mode", f"{folder}'s UNet has motion modules built in; sequential mode needs an image UNet"
            )
        unet = _from_pretrained(UNet2DConditionModel.from_pretrained, folder / "unet", torch_dtype=dtype)
    elif unet_class == "UNetMotionModel":  # saved by AnimateDiffPipeline: motion modules already inside
        unet = _from_pretrained(UNetMotionModel.from_pretrained, folder / "unet", torch_dtype=dtype)
        if motion_module is not None:
            unet.load_motion_modules(load_motion_adapter(motion_module, dtype))
    else:
        if motion_module is None:
            raise LoadError("--motion-module", f"{folder} has no motion module; pass an AnimateDiff motion module")
        unet2d = _from_pretrained(UNet2DConditionModel.from_pretrained, folder / "unet", torch_dtype=dtype)
        unet = merge_motion_unet(unet2d, load_motion_adapter(motion_module, dtype))

    for module in (text_encoder, vae, unet):
        module.to(device).eval().requires_grad_(False)
    return SD1Components(tokenizer, text_encoder, unet, vae, scheduler_config, time.perf_counter() - start)


def load_vae(model: str, dtype: torch.dtype, device: torch.device) -> AutoencoderKL:
    """Just the VAE of a model folder (to decode saved latents)."""
    folder = resolve_model_folder(model)
    if not (folder / "vae").is_dir():
        raise LoadError("--model", f"{folder} has no vae/ folder")
    vae = _from_pretrained(AutoencoderKL.from_pretrained, folder / "vae", torch_dtype=dtype)
    return vae.to(device).eval().requires_grad_(False)


def model_family(folder: Path) -> str:
    """'latte' for a LattePipeline folder, 'sd3' for StableDiffusion3Pipeline, else 'sd1'."""
    index = folder / "model_index.json"
    name = json.loads(index.read_text()).get("_class_name", "") if index.is_file() else ""
    if name == "LattePipeline":
        return "latte"
    return "sd3" if name == "StableDiffusion3Pipeline" or (folder / "transformer").is_dir() else "sd1"


@dataclass
class SD3Components:
    """A Stable Diffusion 3 / 3.5 model: three text encoders (T5 optional), the MMDiT, the VAE."""

    tokenizers: list  # [clip-l, clip-g, t5 or None]
    text_encoders: list
    transformer: object  # SD3Transformer2DModel
    vae: AutoencoderKL
    scheduler_config: dict
    seconds: float


def load_sd3(folder: Path, dtype: torch.dtype, device: torch.device, use_t5: bool = True) -> SD3Components:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

    start = time.perf_counter()
    missing = [p for p in SD3_PARTS if not (folder / p).is_dir()]
    if missing:
        raise LoadError("--model", f"{folder} is not a diffusers SD 3 folder (missing {', '.join(missing)})")
    tokenizers = [_from_pretrained(CLIPTokenizer.from_pretrained, folder / p) for p in ("tokenizer", "tokenizer_2")]
    encoders = [
        _from_pretrained(CLIPTextModelWithProjection.from_pretrained, folder / p, dtype=dtype)
        for p in ("text_encoder", "text_encoder_2")
    ]
    has_t5 = use_t5 and (folder / "text_encoder_3").is_dir()
    tokenizers.append(_from_pretrained(AutoTokenizer.from_pretrained, folder / "tokenizer_3") if has_t5 else None)
    t5 = _from_pretrained(T5EncoderModel.from_pretrained, folder / "text_encoder_3", dtype=dtype) if has_t5 else None
    encoders.append(t5)
    transformer = _from_pretrained(SD3Transformer2DModel.from_pretrained, folder / "transformer", torch_dtype=dtype)
    vae = _from_pretrained(AutoencoderKL.from_pretrained, folder / "vae", torch_dtype=dtype)
    config = dict(_from_pretrained(FlowMatchEulerDiscreteScheduler.load_config, folder / "scheduler"))
    for module in (*[e for e in encoders if e is not None], transformer, vae):
        module.to(device).eval().requires_grad_(False)
    return SD3Components(tokenizers, encoders, transformer, vae, config, time.perf_counter() - start)


@dataclass
class LatteComponents:
    tokenizer: object
    text_encoder: object  # T5EncoderModel
    transformer: object  # LatteTransformer3DModel
    vae: AutoencoderKL
    scheduler_config: dict
    seconds: float


def load_latte(folder: Path, dtype: torch.dtype, device: torch.device) -> LatteComponents:
    from diffusers import LatteTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel

    start = time.perf_counter()
    parts = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    missing = [p for p in parts if not (folder / p).is_dir()]
    if missing:
        raise LoadError("--model", f"{folder} is not a diffusers Latte folder (missing {', '.join(missing)})")
    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, folder / "tokenizer")
    text_encoder = _from_pretrained(T5EncoderModel.from_pretrained, folder / "text_encoder", dtype=dtype)
    transformer = _from_pretrained(LatteTransformer3DModel.from_pretrained, folder / "transformer", torch_dtype=dtype)
    vae = _from_pretrained(AutoencoderKL.from_pretrained, folder / "vae", torch_dtype=dtype)
    config = dict(_from_pretrained(DDIMScheduler.load_config, folder / "scheduler"))
    for module in (text_encoder, transformer, vae):
        module.to(device).eval().requires_grad_(False)
    return LatteComponents(tokenizer, text_encoder, transformer, vae, config, time.perf_counter() - start)
