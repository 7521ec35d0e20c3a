"""Read tensors from checkpoint files without executing code (safetensors, or pickles with weights_only)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import LoadError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
TENSOR_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def read_tensors(path: str | Path, argument: str) -> dict[str, torch.Tensor] | torch.Tensor:
    """Load a safetensors file or a tensor-only pickle; refuse a pickle that needs code to load."""
    path = Path(path)
    if not path.is_file():
        raise LoadError(argument, f"no such file: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise LoadError(argument, f"{path} is not a readable safetensors file ({e})") from e
    if path.suffix not in PICKLE_SUFFIXES:
        raise LoadError(argument, f"{path}: unsupported file type {path.suffix!r} (use {', '.join(TENSOR_SUFFIXES)})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):
            raise LoadError(argument, f"{path} is not a readable torch checkpoint (not a tensor-only pickle)") from e
        raise LoadError(
            argument,
            f"{path} needs code to unpickle and was refused (only tensors are loaded, weights_only=True); "
            "convert it to safetensors with a tool you trust",
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise LoadError(argument, f"{path} is not a readable torch checkpoint ({str(e).splitlines()[0]})") from e


def _unwrap(data):
    """The state dict inside the usual `state_dict` / `module` containers (training checkpoints)."""
    for key in ("state_dict", "module"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    return data


def read_state_dict(path: str | Path, argument: str) -> dict[str, torch.Tensor]:
    """A flat name -> tensor mapping, unwrapping the usual `state_dict` / `module` containers."""
    data = _unwrap(read_tensors(path, argument))
    if not isinstance(data, dict):
        raise LoadError(argument, f"{path} holds a {type(data).__name__}, not a state dict")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def tensor_names(path: str | Path, argument: str) -> list[str]:
    """The tensor names of a checkpoint without reading its tensors where the format allows (a safetensors
    header; a zip pickle mapped lazily), else by reading it tensor-only."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, "pt") as f:
                return list(f.keys())
        except (SafetensorError, OSError) as e:
            raise LoadError(argument, f"{path} is not a readable safetensors file ({e})") from e
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, OSError, EOFError):  # not a zip pickle: read it (and say why)
        data = read_tensors(path, argument)
    data = _unwrap(data)
    return list(data) if isinstance(data, dict) else []
