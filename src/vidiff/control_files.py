"""What a ControlNet file or folder is (kind, architecture), from its config or its tensor names and shapes,
without loading weights: safetensors headers and folder configs are read torch-free; a pickle is read
tensor-only (`weights_only`), which also refuses one that needs code before any model loads."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .control import NETS, ControlNetUri
from .errors import InvalidArgument

A1111 = "control_model."
MAX_HEADER = 100 * 2**20  # safetensors' own limit on its JSON header
ARCHITECTURES = {"sdxl": "SDXL", "sd3": "Stable Diffusion 3", "flux": "Flux", "xs": "ControlNet-XS"}
FOLDER_CLASSES = {"SD3ControlNetModel": "sd3", "FluxControlNetModel": "flux", "ControlNetXSAdapter": "xs"}


@dataclass(frozen=True)
class ControlInfo:
    kind: str  # "controlnet" | "sparsectrl"
    architecture: str  # "sd1" | "sdxl" | "sd3" | "flux" | "xs"


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor names and shapes from a safetensors header alone; None if the file is not one."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > MAX_HEADER:
                return None
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None
    if not isinstance(header, dict):
        return None
    return {k: tuple(v.get("shape") or ()) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
        shapes = safetensors_shapes(path)
        if shapes is None:
            raise InvalidArgument(NETS, f"{path} is not a readable safetensors file")
        return shapes
    from .tensor_files import read_state_dict  # a pickle: read tensor-only (torch)

    return {k: tuple(v.shape) for k, v in read_state_dict(path, NETS).items()}


def inspect(path: str | Path) -> ControlInfo:
    """The kind and architecture of a ControlNet folder (its config) or single file (its keys)."""
    path = Path(path)
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            raise InvalidArgument(
                NETS, f"{path} has no readable config.json (a diffusers ControlNet has one)"
            ) from None
        name = config.get("_class_name", "")
        arch = FOLDER_CLASSES.get(name) or ("sdxl" if config.get("addition_embed_type") == "text_time" else "sd1")
        return ControlInfo("sparsectrl" if name == "SparseControlNetModel" else "controlnet", arch)
    return info_from_keys(_shapes(path), path.name)


def info_from_keys(shapes: dict[str, tuple[int, ...]], name: str) -> ControlInfo:
    """The kind and architecture of a single file, from its tensor names (and shapes)."""
    keys = {k.removeprefix(A1111): s for k, s in shapes.items()}
    if any(".motion_modules." in k for k in keys):
        return ControlInfo("sparsectrl", "sd1")
    if any(k.startswith(("transformer_blocks.", "controlnet_blocks.", "pos_embed.")) for k in keys):
        return ControlInfo("controlnet", "sd3")
    if any(k.startswith(("label_emb.", "add_embedding.")) for k in keys):
        return ControlInfo("controlnet", "sdxl")
    if not any(k.startswith(("input_hint_block.", "controlnet_cond_embedding.")) for k in keys):
        raise InvalidArgument(NETS, f"{name} is not a ControlNet (no input_hint_block or "
                              "controlnet_cond_embedding weights)")  # fmt: skip
    return ControlInfo("controlnet", "sd1")


def check_control(uri: ControlNetUri, info: ControlInfo | None = None) -> ControlInfo:
    """The ControlNet's ControlInfo (`info`, or read from its file), refusing in one line one for another
    architecture, and frames= on a ControlNet that is not SparseCtrl."""
    info = info or inspect(uri.path)
    if info.architecture != "sd1":
        raise InvalidArgument(NETS, f"{Path(uri.path).name} is a {ARCHITECTURES[info.architecture]} ControlNet; "
                              "vidiff's ControlNets steer Stable Diffusion 1.x models")  # fmt: skip
    if uri.frames is not None and info.kind != "sparsectrl":
        raise InvalidArgument(NETS, f"{uri.path}: frames= places SparseCtrl images; this is a ControlNet, which "
                              "steers every frame")  # fmt: skip
    return info
