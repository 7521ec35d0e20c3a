"""AnimateDiff motion modules: original single files (v1/v2/v3) <-> diffusers `MotionAdapter`.

Original files name their temporal layers `*.motion_modules.N.temporal_transformer.*` with
`attention_blocks.{0,1}`, `norms.{0,1}`, `ff_norm` and a stored sinusoid `pos_encoder.pe` (1, max_len, C).
diffusers' own key conversion does the forward direction; the adapter's config is read off the keys, so no
config file and no network is needed. Versions: v1 has a 24-frame positional table and no mid block; v2 has
a mid block; v3 has neither a mid block nor a 24-frame table.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import MotionAdapter
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from torch import nn

from ..errors import LoadError
from ..tensor_files import read_state_dict

ARG = "--motion-module"
PE_KEY = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
HEADS = 8  # every released AnimateDiff SD 1.5 module uses 8 temporal attention heads
NORM_GROUPS = 32
_TO_ORIGINAL = [
    (".attn1.", ".attention_blocks.0."),
    (".attn2.", ".attention_blocks.1."),
    (".norm1.", ".norms.0."),
    (".norm2.", ".norms.1."),
    (".norm3.", ".ff_norm."),
]


def detect_version(state: dict[str, torch.Tensor], name: str = "file") -> str:
    """'v1', 'v2' or 'v3' for an original-format SD 1.5 motion module; LoadError for anything else."""
    if not any(".motion_modules." in k for k in state):
        raise LoadError(ARG, f"{name} is not an AnimateDiff motion module (no motion_modules.* weights)")
    if any(k.startswith("controlnet_cond_embedding.") for k in state):
        raise LoadError(ARG, f"{name} is a SparseCtrl model, not a motion module")
    if PE_KEY not in state:
        raise LoadError(ARG, f"{name} is not in the original AnimateDiff layout (no {PE_KEY})")
    if state[PE_KEY].shape[-1] != state["down_blocks.0.motion_modules.0.temporal_transformer.norm.weight"].shape[0]:
        raise LoadError(ARG, f"{name} has an inconsistent positional table")
    sdxl_key = "up_blocks.2.motion_modules.0.temporal_transformer.norm.weight"
    if sdxl_key in state and state[sdxl_key].shape[-1] == 320 and len(_block_channels(state)) == 3:
        raise LoadError(ARG, f"{name} is an SDXL motion module; vidiff runs SD 1.x motion modules")
    if any(k.startswith("mid_block.") for k in state):
        return "v2"
    return "v1" if state[PE_KEY].shape[1] == 24 else "v3"


def _block_channels(state: dict[str, torch.Tensor]) -> list[int]:
    pattern = re.compile(r"down_blocks\.(\d+)\.motion_modules\.0\.temporal_transformer\.norm\.weight")
    found = {int(m.group(1)): v.shape[0] for k, v in state.items() if (m := pattern.fullmatch(k))}
    return [found[i] for i in sorted(found)]


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def adapter_config(state: dict[str, torch.Tensor]) -> dict:
    """The `MotionAdapter` config an original-format state dict implies."""
    channels = _block_channels(state)
    layers = _count(state, r"down_blocks\.0\.motion_modules\.(\d+)\.")
    transformer_layers = _count(
        state, r"down_blocks\.0\.motion_modules\.0\.temporal_transformer\.transformer_blocks\.(\d+)\."
    )
    mid_layers = _count(state, r"mid_block\.motion_modules\.0\.temporal_transformer\.transformer_blocks\.(\d+)\.")
    return {
        "block_out_channels": channels,
        "motion_layers_per_block": layers,
        "motion_transformer_layers_per_block": transformer_layers,
        "motion_transformer_layers_per_mid_block": max(mid_layers, 1),
        "motion_num_attention_heads": HEADS,
        "motion_norm_num_groups": NORM_GROUPS,
        "motion_max_seq_length": state[PE_KEY].shape[1],
        "use_motion_mid_block": mid_layers > 0,
    }


def adapter_from_original(state: dict[str, torch.Tensor], name: str = "file") -> MotionAdapter:
    """Build a diffusers `MotionAdapter` from an original-format state dict (weights assigned, not copied)."""
    detect_version(state, name)
    config = adapter_config(state)
    with init_empty_weights():  # parameters on meta; the frame sinusoid buffers are computed
        adapter = MotionAdapter(**config)
    converted = convert_animatediff_checkpoint_to_diffusers(state)
    missing, unexpected = adapter.load_state_dict(converted, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith(".pos_embed.pe")]  # recomputed, identical sinusoid
    if missing or unexpected:
        raise LoadError(ARG, f"{name} has an unexpected layout (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return adapter


def to_original_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Invert diffusers' key conversion: a `MotionAdapter` state dict -> the original single-file layout."""
    out = {}
    for key, value in state.items():
        head, tail = re.fullmatch(r"(.*?\.motion_modules\.\d+)(\..*)", key).groups()
        if tail.endswith(".pos_embed.pe"):  # one stored sinusoid per attention block in the original
            block = tail.removesuffix(".pos_embed.pe")
            for i in (0, 1):
                out[f"{head}.temporal_transformer{block}.attention_blocks.{i}.pos_encoder.pe"] = value
            continue
        for new, old in _TO_ORIGINAL:
            tail = tail.replace(new, old)
        out[f"{head}.temporal_transformer{tail}"] = value
    return out


def load_motion_adapter(path: str | Path, dtype: torch.dtype) -> MotionAdapter:
    """A diffusers MotionAdapter folder, or an original single file (.ckpt/.pt/.pth/.safetensors)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LoadError(ARG, f"{path} is not a diffusers MotionAdapter folder (no config.json)")
        try:
            return MotionAdapter.from_pretrained(path, torch_dtype=dtype)
        except (OSError, ValueError, TypeError) as e:
            raise LoadError(ARG, f"{path} is not a loadable MotionAdapter folder ({e})") from e
    if not path.exists():
        raise LoadError(ARG, f"no such file or folder: {path}")
    state = read_state_dict(path, ARG)
    return nn.Module.to(adapter_from_original(state, path.name), dtype=dtype)  # no fp32-module warning
