"""Latents files: save, load, validate. vidiff's own and dgenerate's, never executing code.

A vidiff `.safetensors` latents file holds `latents` (B, C, F, h, w) and, in its header, what produced them
(family, channels, VAE scaling and shift, scheduler, fraction denoised, frames, size, seed, prompt). When
saved mid-schedule it also holds where the run stopped: the step index, the scheduler's running state
(multistep histories) and the noise generator's state, so a resumed run equals the uninterrupted one.
`.pt` / `.pth` files hold a plain tensor, as dgenerate writes them; loading accepts a bare tensor or a dict
with one of the keys `latent`, `latents`, `sample`, `samples`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .atomic import atomic_file
from .errors import InvalidArgument, LoadError
from .names import LATENT_SUFFIXES
from .tensor_files import read_tensors

DGENERATE_KEYS = ("latents", "latent", "samples", "sample")
FORMAT = "vidiff.latents/1"


@dataclass
class LatentsMeta:
    """What a latents file says about itself; None where a plain tensor file does not say."""

    family: str | None = None
    latent_channels: int | None = None
    scaling_factor: float | None = None
    shift_factor: float | None = None
    scheduler: str | None = None
    denoised: float | None = None  # fraction of the schedule done: 1.0 for finished latents
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    seed: int | None = None
    prompt: str | None = None
    steps: int | None = None
    step: int | None = None  # index into the timestep list where the run stopped
    request: dict | None = None  # the whole GenerationRequest
    job: dict | None = None  # the whole RenderJob (resume checkpoints), for --resume


@dataclass
class LatentsFile:
    latents: Tensor  # (B, C, F, h, w)
    meta: LatentsMeta = field(default_factory=LatentsMeta)
    scheduler_state: dict | None = None
    generator_state: Tensor | None = None


def _state_to_tensors(state: dict) -> tuple[dict[str, Tensor], dict]:
    """Scheduler state -> (tensors, JSON description): tensors and lists of tensors go to the tensor table."""
    tensors, described = {}, {}
    for name, value in state.items():
        if torch.is_tensor(value):
            tensors[f"scheduler.{name}"] = value
            described[name] = {"tensor": True}
        elif isinstance(value, list | tuple):
            present = [i for i, v in enumerate(value) if v is not None]
            for i in present:
                tensors[f"scheduler.{name}.{i}"] = value[i]
            described[name] = {"list": len(value), "present": present}
        else:
            described[name] = {"value": value.item() if hasattr(value, "item") else value}
    return tensors, described


def _state_from_tensors(described: dict, tensors: dict[str, Tensor]) -> dict:
    state = {}
    for name, how in described.items():
        if "tensor" in how:
            state[name] = tensors[f"scheduler.{name}"]
        elif "list" in how:
            items: list = [None] * how["list"]
            for i in how["present"]:
                items[i] = tensors[f"scheduler.{name}.{i}"]
            state[name] = items
        else:
            state[name] = how["value"]
    return state


def save_latents(path: str | Path, item: LatentsFile, overwrite: bool = False) -> Path:
    """Write latents atomically: `.safetensors` with metadata and state, `.pt`/`.pth` as a plain tensor."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LATENT_SUFFIXES:
        raise InvalidArgument("--output", f"latents go to {', '.join(LATENT_SUFFIXES)}, not {path.name}")
    latents = item.latents.detach().to("cpu").contiguous()
    if suffix != ".safetensors":
        with atomic_file(path, overwrite) as tmp:
            torch.save(latents, tmp)
        return path
    tensors = {"latents": latents}
    header = {"format": FORMAT, "meta": json.dumps(asdict(item.meta))}
    if item.scheduler_state is not None:
        state_tensors, described = _state_to_tensors(item.scheduler_state)
        tensors |= {k: v.detach().to("cpu").contiguous() for k, v in state_tensors.items()}
        header["scheduler_state"] = json.dumps(described)
    if item.generator_state is not None:
        tensors["generator_state"] = item.generator_state
    with atomic_file(path, overwrite) as tmp:
        save_file(tensors, tmp, metadata=header)
    return path


def load_latents(path: str | Path, argument: str = "--image-seeds") -> LatentsFile:
    """Read a vidiff or dgenerate latents file; a 4-D (N, C, h, w) tensor is N frames of one video."""
    path = Path(path)
    if path.suffix.lower() not in LATENT_SUFFIXES:
        raise LoadError(argument, f"{path}: latents files end in {', '.join(LATENT_SUFFIXES)}")
    data = read_tensors(path, argument)
    header: dict[str, str] = {}
    if path.suffix.lower() == ".safetensors":
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
    if torch.is_tensor(data):
        tensor = data
    elif not isinstance(data, dict):
        raise LoadError(argument, f"{path} holds a {type(data).__name__}, not a latents tensor")
    else:
        key = next((k for k in DGENERATE_KEYS if k in data), None)
        if key is None and len(data) == 1:
            key = next(iter(data))
        if key is None or not torch.is_tensor(data[key]):
            raise LoadError(argument, f"{path} holds no latents tensor (expected one of {', '.join(DGENERATE_KEYS)})")
        tensor = data[key]
    if tensor.dim() == 4:
        tensor = tensor.transpose(0, 1).unsqueeze(0)  # (N, C, h, w) -> (1, C, N, h, w)
    if tensor.dim() != 5:
        raise LoadError(argument, f"{path}: latents must be 4-D or 5-D, got shape {tuple(tensor.shape)}")
    if tensor.is_complex() or tensor.dtype == torch.bool or tensor.numel() == 0:
        raise LoadError(
            argument, f"{path}: latents must be real numbers, got {tensor.dtype} of shape {tuple(tensor.shape)}"
        )
    if not torch.isfinite(tensor).all():
        raise LoadError(argument, f"{path}: the latents hold NaN or infinite values")
    item = LatentsFile(tensor.float())
    if header.get("format") == FORMAT:
        try:
            item.meta = LatentsMeta(**json.loads(header["meta"]))
            if "scheduler_state" in header:
                item.scheduler_state = _state_from_tensors(json.loads(header["scheduler_state"]), data)
        except (KeyError, TypeError, ValueError) as e:
            raise LoadError(argument, f"{path}: its vidiff header is damaged ({e})") from e
        item.generator_state = data.get("generator_state")
    return item


def check_latents(
    item: LatentsFile,
    path: str | Path,
    channels: int,
    family: str | None,
    frames: int | None = None,
    argument: str = "--image-seeds",
) -> None:
    """One-line errors naming the file and the mismatch."""
    b, c, f, h, w = item.latents.shape
    name = Path(path).name
    if c != channels:
        raise InvalidArgument(argument, f"{name} has {c} latent channels; this model's latents have {channels}")
    if family is not None and item.meta.family is not None and item.meta.family != family:
        raise InvalidArgument(argument, f"{name} holds {item.meta.family} latents; this model is {family}")
    if frames is not None and f != frames:
        raise InvalidArgument(argument, f"{name} has {f} frames; --frames is {frames}")
