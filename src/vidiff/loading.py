"""Where models come from and what they run on: folders, hub ids, built-in models, devices and dtypes.

How each backbone loads its parts is its adapter's business (`adapters/`), chosen by its spec (`specs.py`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from .errors import InvalidArgument, LoadError

TINY_RANDOM = "tiny-random"
DEMO = "demo"
AUTO = "auto"  # the dtype: see default_dtype
DEMO_FOLDER = Path(__file__).resolve().parent / "demo" / "tiny-t2v"
CLIP_TOKENIZER = DEMO_FOLDER / "tokenizer"  # the real CLIP vocabulary (49,408 tokens), for single files
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


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


def _cache_dir() -> Path:
    return Path(os.environ.get("VIDIFF_CACHE", Path.home() / ".cache" / "vidiff"))


def _tiny_random_folder() -> Path:
    from .tiny import tiny_random_folder  # built on first use, then cached

    return tiny_random_folder(_cache_dir())


BUILTIN_MODELS = {DEMO: lambda: DEMO_FOLDER, TINY_RANDOM: _tiny_random_folder}


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json"] + [f"*/*.{ext}" for ext in ("json", "txt", "model", "safetensors")]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=["*fp16*", "*non_ema*"]))
    except Exception as e:  # network, auth, missing repo, offline cache miss: all one message
        raise LoadError(
            "--model",
            f"{repo_id!r} is not a local folder and could not be fetched from the hub or its cache ({e})",
        ) from e


def resolve_model_folder(model: str) -> Path:
    """A local diffusers folder for a model spec (folder path, hub id, or `tiny-random`)."""
    if model in BUILTIN_MODELS:
        return BUILTIN_MODELS[model]()
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise LoadError(
                "--model", f"{path} is not a model folder or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})"
            )
        return path  # a single-file checkpoint
    if path.is_dir():
        return path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith((".", "/")):
        return _download(model)
    raise LoadError("--model", f"no such folder: {path}")


def require_parts(folder: Path, parts: tuple[str, ...], kind: str) -> None:
    """Refuse a folder that lacks any of a backbone's sub-folders, naming them."""
    missing = [p for p in parts if not (folder / p).is_dir()]
    if missing:
        raise LoadError("--model", f"{folder} is not a diffusers {kind} folder (missing {', '.join(missing)})")


def load_part(load, path: Path, **kwargs):
    """`load(path, **kwargs)` (a `from_pretrained`), any failure as one `--model` line."""
    try:
        return load(path, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise LoadError("--model", f"cannot load {path} ({str(e).splitlines()[0]})") from e


def load_vae(model: str, dtype: torch.dtype, device: torch.device) -> AutoencoderKL:
    """Just the VAE of a model folder or single-file checkpoint (to decode saved latents)."""
    folder = resolve_model_folder(model)
    if folder.is_file():
        from .families import family_from_names
        from .single_file import SD1_VAE_SCALING, SDXL_VAE_SCALING
        from .single_file import load_vae as from_checkpoint
        from .tensor_files import read_state_dict

        state = read_state_dict(folder, "--model")  # one read: the family from its names, then the VAE
        scaling = SDXL_VAE_SCALING if family_from_names(state, folder.name) == "sdxl" else SD1_VAE_SCALING
        return from_checkpoint(state, dtype, scaling=scaling).to(device)
    if not (folder / "vae").is_dir():
        raise LoadError("--model", f"{folder} has no vae/ folder")
    vae = load_part(AutoencoderKL.from_pretrained, folder / "vae", torch_dtype=dtype)
    return vae.to(device).eval().requires_grad_(False)
