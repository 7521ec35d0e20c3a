"""AnimateDiff motion modules: every released layout -> diffusers `MotionAdapter`, with version and variant.

Original files name their temporal layers `*.motion_modules.N.temporal_transformer.*` with
`attention_blocks.{0,1}`, `norms.{0,1}`, `ff_norm` and, from the releases up to v3, a stored sinusoid
`pos_encoder.pe` (1, max_len, C); the original code's current version keeps it as a non-persistent buffer,
so files it writes have none. Accepted around them: a `state_dict` (training checkpoint) or `module`
wrapper, a `module.` key prefix, a whole-UNet state dict (only `motion_modules.` keys are taken, as the
original loader does), a v3 module saved with its domain-adapter LoRA (`*.processor.to_q_lora.down.*`
outside the motion modules), and diffusers-keyed single files (AnimateDiff-Lightning's `*_diffusers`).
diffusers' own key conversion does the forward direction; the adapter's config is read off the keys, so no
config file and no network is needed.

Versions are read off the motion modules' own keys only (never off a bundled LoRA or other UNet weights):
v1 has a 24-frame positional table and no mid block, v2 has a mid block, v3 has neither (a file without a
table and without a mid block is taken as v3, the current code's layout). AnimateDiff-SDXL
(`mm_sdxl_v10_beta.ckpt`) has v3's keys at SDXL's three levels: which UNet family a module is for is read off
its block widths where they are a released shape (`RELEASE_WIDTHS`), else decided by the UNet it must fit.
Hotshot-XL's `hsxl_temporal_layers.safetensors` names the same layers `*.temporal_attentions.N.*` with a
stored `pos_encoder.positional_encoding` (24 frames); its keys are renamed to the original layout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import MotionAdapter
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from torch import nn

from ..errors import LoadError
from ..families import HOTSHOT_KEY, RELEASE_WIDTHS, motion_widths
from ..tensor_files import read_state_dict
from .groupnorm import CONFIG_KEY as GROUPNORM_KEY

ARG = "--motion-module"
PE_KEY = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.pos_encoder.pe"
# Not in the keys: the original code's VanillaTemporalModule defaults (num_attention_heads=8, and the
# TemporalTransformer3DModel's norm_num_groups=32), which every released SD 1.5 module was trained with.
HEADS = 8
NORM_GROUPS = 32
DEFAULT_MAX_FRAMES = 32  # the v2/v3 inference configs' temporal_position_encoding_max_len
_TO_ORIGINAL = [
    (".attn1.", ".attention_blocks.0."),
    (".attn2.", ".attention_blocks.1."),
    (".norm1.", ".norms.0."),
    (".norm2.", ".norms.1."),
    (".norm3.", ".ff_norm."),
]


SDXL_VERSIONS = {"sdxl": "AnimateDiff-SDXL", "hotshot": "Hotshot-XL"}  # versions for SDXL UNets
SDXL_LEVELS = 3


def is_motion_key(key: str) -> bool:
    """A motion module's own weight: under `motion_modules.` and not a LoRA's (LoRA keys say `lora`)."""
    return ".motion_modules." in key and "lora" not in key.lower()


def from_hotshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hotshot-XL's temporal layers renamed to the original AnimateDiff layout (the same modules)."""
    out = {}
    for key, value in state.items():
        if (match := HOTSHOT_KEY.fullmatch(key)) is None:
            out[key] = value
            continue
        head, index, tail = match.groups()
        tail = tail.replace("pos_encoder.positional_encoding", "pos_encoder.pe")
        out[f"{head}.motion_modules.{index}.temporal_transformer.{tail}"] = value
    return out


def detect_version(state: dict[str, torch.Tensor], name: str = "file") -> str:
    """'v1', 'v2' or 'v3' for an original-format motion module, read off its motion-module keys only; LoadError
    for anything else."""
    if any(k.startswith("controlnet_cond_embedding.") for k in state):
        raise LoadError(ARG, f"{name} is a SparseCtrl model, not a motion module")
    state = {k: v for k, v in state.items() if is_motion_key(k)}
    if not state:
        raise LoadError(ARG, f"{name} is not an AnimateDiff motion module (no motion_modules.* weights)")
    norm = "down_blocks.0.motion_modules.0.temporal_transformer.norm.weight"
    if norm not in state:
        raise LoadError(ARG, f"{name} is not in the original AnimateDiff layout (no {norm})")
    if PE_KEY in state and state[PE_KEY].shape[-1] != state[norm].shape[0]:
        raise LoadError(ARG, f"{name} has an inconsistent positional table")
    if any(k.startswith("mid_block.") for k in state):
        return "v2"
    return "v1" if PE_KEY in state and state[PE_KEY].shape[1] == 24 else "v3"


def _block_channels(state: dict[str, torch.Tensor]) -> list[int]:
    return list(motion_widths({k: v.shape for k, v in state.items()}))


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
        "motion_max_seq_length": state[PE_KEY].shape[1] if PE_KEY in state else DEFAULT_MAX_FRAMES,
        "use_motion_mid_block": mid_layers > 0,
    }


def adapter_from_original(state: dict[str, torch.Tensor], name: str = "file", kind: str = "") -> MotionAdapter:
    """Build a diffusers `MotionAdapter` from an original-format state dict (weights assigned, not copied);
    `kind` names the release in the error for a file with missing layers."""
    detect_version(state, name)
    state = {k: v for k, v in state.items() if is_motion_key(k)}
    if kind and len(_block_channels(state)) != SDXL_LEVELS:  # an SDXL release that lost whole levels
        raise LoadError(ARG, f"{name} is a {kind} file with missing layers (motion modules at "
                             f"{len(_block_channels(state))} of SDXL's {SDXL_LEVELS} levels)")  # fmt: skip
    config = adapter_config(state)
    with init_empty_weights():  # parameters on meta; the frame sinusoid buffers are computed
        adapter = MotionAdapter(**config)
    converted = convert_animatediff_checkpoint_to_diffusers(state)
    try:
        missing, unexpected = adapter.load_state_dict(converted, strict=False, assign=True)
    except RuntimeError as e:  # shapes that do not fit the layout the keys imply
        raise LoadError(ARG, f"{name} has an inconsistent layout ({str(e).splitlines()[-1].strip()})") from e
    missing = [k for k in missing if not k.endswith(".pos_embed.pe")]  # recomputed, identical sinusoid
    if kind and missing:
        raise LoadError(ARG, f"{name} is a {kind} file with missing layers (missing {missing[:2]})")
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


@dataclass
class MotionModule:
    """A loaded motion module and what was found out about it."""

    adapter: MotionAdapter
    version: str  # "v1", "v2", "v3" (SD 1.x), "sdxl" (AnimateDiff-SDXL) or "hotshot" (Hotshot-XL)
    layout: str  # where it came from, for the user
    groupnorm: str | None = None  # the GroupNorm mode it records it was trained with; None: not recorded
    domain_adapter: dict[str, torch.Tensor] = field(default_factory=dict)  # v3's spatial LoRA, if bundled

    @property
    def family(self) -> str | None:
        """The UNet family it was made for ('sd1', 'sdxl') where its keys or released widths say; else None."""
        if self.version in SDXL_VERSIONS:
            return "sdxl"
        return RELEASE_WIDTHS.get(tuple(self.adapter.config.block_out_channels)) if self.adapter else None

    def describe(self) -> str:
        extra = f"; domain-adapter LoRA ({len(self.domain_adapter) // 2} layers)" if self.domain_adapter else ""
        return f"{SDXL_VERSIONS.get(self.version, self.version)}, {self.layout}{extra}"


def folder_version(config: dict) -> str:
    """The version a diffusers MotionAdapter config implies (as its hub conversions are configured)."""
    if config.get("use_motion_mid_block", True):
        return "v2"
    return "v1" if config.get("motion_max_seq_length") == 24 else "v3"


def _diffusers_keyed(state: dict[str, torch.Tensor]) -> bool:
    return any(re.search(r"\.motion_modules\.\d+\.(norm|proj_in|transformer_blocks)\.", k) for k in state)


def load_motion_module(path: str | Path, dtype: torch.dtype) -> MotionModule:
    """A diffusers MotionAdapter folder, or a single file in any released layout (.ckpt/.pt/.pth/.safetensors)."""
    path = Path(path)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise LoadError(ARG, f"{path} is not a diffusers MotionAdapter folder (no config.json)")
        try:
            adapter = MotionAdapter.from_pretrained(path, torch_dtype=dtype)
        except (OSError, ValueError, TypeError) as e:
            raise LoadError(ARG, f"{path} is not a loadable MotionAdapter folder ({e})") from e
        config = json.loads(config_file.read_text())
        return MotionModule(adapter, folder_version(config), "diffusers folder", config.get(GROUPNORM_KEY))
    if not path.exists():
        raise LoadError(ARG, f"no such file or folder: {path}")
    # 1. Unwrap: state_dict / module containers (read_state_dict), a `module.` prefix on every key.
    state = read_state_dict(path, ARG)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    layout, kind = ["original layout"], ""
    if any(HOTSHOT_KEY.fullmatch(k) for k in state):  # 2. Hotshot-XL: the same modules under other names
        state, layout, kind = from_hotshot(state), ["Hotshot-XL layout"], "Hotshot-XL"
    # 3. LoRAs in AnimateDiff's own layout outside the motion modules: v3's domain adapter.
    domain = {k: v for k, v in state.items() if "_lora." in k and ".motion_modules." not in k}
    if any("lora" in k.lower() and ".motion_modules." not in k and k not in domain for k in state):
        raise LoadError(ARG, f"{path.name} bundles a LoRA in another layout than AnimateDiff's (kohya / peft keys); "
                             "save the motion modules alone and pass the LoRA with --lora")  # fmt: skip
    # 4. The motion modules alone (a whole-UNet or training checkpoint holds more).
    motion = {k: v for k, v in state.items() if is_motion_key(k)}
    if len(motion) < len(state) - len(domain):
        layout.append("motion part of a whole-UNet checkpoint")
    if _diffusers_keyed(motion):
        motion, layout = to_original_keys(motion), ["diffusers keys"]
    if motion and PE_KEY not in motion:
        layout.append("no positional table")
    adapter = adapter_from_original(motion or state, path.name, kind)
    version = "hotshot" if kind else detect_version(motion, path.name)
    return MotionModule(nn.Module.to(adapter, dtype=dtype), version, ", ".join(layout), None, domain)


def load_motion_adapter(path: str | Path, dtype: torch.dtype) -> MotionAdapter:
    """Just the diffusers MotionAdapter of `load_motion_module`."""
    return load_motion_module(path, dtype).adapter
