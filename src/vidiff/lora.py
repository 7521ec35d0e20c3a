"""LoRAs on the image model (`--lora`) and on the motion modules (`--motion-lora`), fused into the weights;
and the spatial LoRA `vidiff train motion --lora-rank` trains and writes in diffusers' layout.

Files in the layouts users have (kohya / A1111 `lora_unet_*` and `lora_te_*` with `alpha`, diffusers, peft,
diffusers' AnimateDiff motion LoRAs) are read and applied by diffusers' own LoRA loader and peft; the
original AnimateDiff motion LoRAs (`v2_lora_PanLeft.ckpt` ...) by `motion/original_lora.py`. LoRAs are fused
at load time (and the peft layers removed), so a step costs what it costs without them; a pipeline with other
LoRAs is another pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from . import checks
from .errors import LoadError
from .families import SD1_LORA, SDXL_LORA
from .motion.original_lora import is_original_lora, merge_original_lora
from .tensor_files import read_state_dict

SDXL = (SDXL_LORA, "SDXL")
DIT = (r"^transformer\.|^lora_transformer_|joint_blocks|context_embedder", "SD 3 / Flux (a DiT)")
UNET = (r"^unet\.|^lora_unet_|down_blocks", "Stable Diffusion 1.x (a UNet)")
SD1 = (SD1_LORA, "Stable Diffusion 1.x")


@dataclass(frozen=True)
class LoraTarget:
    """What a backbone's LoRAs load into: its name (for messages), the key patterns of LoRAs made for other
    backbones (refused, naming what they are for), and diffusers' loader for its denoiser."""

    name: str
    foreign: tuple[tuple[str, str], ...]
    dit: bool  # a transformer (SD 3's loader), else a UNet (with kohya alphas and text-encoder layers)
    sdxl: bool = False  # SDXL's loader (kohya `lora_te1_` / `lora_te2_`, `input_blocks`)


SD1_TARGET = LoraTarget("Stable Diffusion 1.x", (SDXL, DIT), dit=False)
SD3_TARGET = LoraTarget("SD 3", (SDXL, UNET), dit=True)
SDXL_TARGET = LoraTarget("SDXL", (SD1, DIT), dit=False, sdxl=True)


@dataclass(frozen=True)
class Lora:
    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, spec: str, argument: str = "--lora") -> Lora:
        """'FILE' or 'FILE:SCALE' (a Windows drive letter is not a scale)."""
        path, scale = checks.weighted_file(argument, spec)
        return cls(path) if scale is None else cls(path, scale)


def _check_architecture(state: dict, path: str, argument: str, target: LoraTarget) -> None:
    for pattern, what in target.foreign:
        if any(re.search(pattern, k) for k in state):
            raise LoadError(argument, f"{Path(path).name} is a LoRA for {what}; this model is {target.name}")


def _read(lora: Lora, argument: str, motion_only: bool, target: LoraTarget) -> dict:
    path = Path(lora.path)
    if not path.is_file():
        raise LoadError(argument, f"no such file: {path}")
    state = read_state_dict(path, argument)  # safetensors or a tensor-only pickle, never code
    if not any("lora" in k.lower() for k in state):
        raise LoadError(argument, f"{path.name} holds no LoRA weights (no lora_* / *.lora_A / *_lora keys)")
    _check_architecture(state, lora.path, argument, target)
    if motion_only:
        state = {k: v for k, v in state.items() if "motion_modules" in k}
        if not state:
            raise LoadError(argument, f"{path.name} holds no motion-module LoRA layers")
    return state


def apply_loras(
    unet: nn.Module,
    text_encoders: dict[str, nn.Module],
    loras: list[Lora],
    argument: str,
    motion_only: bool = False,
    fuse: bool = True,
    target: LoraTarget = SD1_TARGET,
) -> list[str]:
    """Load each LoRA through diffusers/peft into the UNet (and the text encoders, by their diffusers prefix:
    `text_encoder`, `text_encoder_2`), or SD 3's transformer, at its scale, then fuse them into the weights and
    drop the peft layers; `motion_only` keeps only motion-module layers (motion LoRAs). One note per LoRA."""
    notes, names, scales = [], [], []
    texts: dict[str, tuple[list, list]] = {prefix: ([], []) for prefix in text_encoders}
    for i, lora in enumerate(loras):
        state = _read(lora, argument, motion_only, target)
        name = f"vidiff_{i}"
        if is_original_lora(state):  # AnimateDiff's own layout: merged directly
            layers = merge_original_lora(unet, state, lora.scale, argument)
            notes.append(f"{argument} {Path(lora.path).name}: {layers} layers (AnimateDiff layout) at {lora.scale:g}")
            continue
        before = len(list(unet.modules()))
        for prefix in _load(unet, text_encoders, state, name, target, lora, argument):
            texts[prefix][0].append(name), texts[prefix][1].append(lora.scale)
        if len(list(unet.modules())) == before:
            raise LoadError(argument, f"{Path(lora.path).name} matched no layer of this model")
        names.append(name), scales.append(lora.scale)
        notes.append(f"{argument} {Path(lora.path).name} at {lora.scale:g}")
    _activate(unet, text_encoders, names, scales, texts, fuse)
    return notes


def _load(unet, text_encoders: dict, state: dict, name: str, target: LoraTarget, lora: Lora, argument: str):
    """One LoRA into peft layers on the UNet/transformer and the text encoders it has layers for (their
    prefixes returned)."""
    from diffusers.loaders import SD3LoraLoaderMixin, StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    try:
        if target.dit:
            converted = SD3LoraLoaderMixin.lora_state_dict(dict(state))
            SD3LoraLoaderMixin.load_lora_into_transformer(converted, transformer=unet, adapter_name=name)
            return []
        loader = StableDiffusionXLLoraLoaderMixin if target.sdxl else StableDiffusionLoraLoaderMixin
        extra = {"unet_config": unet.config} if target.sdxl else {}  # kohya's SGM block names need its layout
        converted, alphas = loader.lora_state_dict(dict(state), **extra)
        loader.load_lora_into_unet(converted, alphas, unet=unet, adapter_name=name)
        prefixes = [p for p in text_encoders if any(k.startswith(f"{p}.") for k in converted)]
        for prefix in prefixes:
            loader.load_lora_into_text_encoder(
                converted, alphas, text_encoder=text_encoders[prefix], prefix=prefix, adapter_name=name
            )
        return prefixes
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise LoadError(argument, f"{Path(lora.path).name} does not fit this model ({str(e).splitlines()[0]})") from e


def _activate(unet, text_encoders: dict, names: list, scales: list, texts: dict, fuse: bool) -> None:
    """Set every LoRA's scale, then (`fuse`) fuse them into the weights and remove the peft layers."""
    from diffusers.loaders.lora_base import fuse_text_encoder_lora
    from diffusers.utils.peft_utils import recurse_remove_peft_layers, set_weights_and_activate_adapters

    if names:
        unet.set_adapters(names, weights=scales)
    for prefix, (text_names, text_scales) in texts.items():
        if text_names:
            set_weights_and_activate_adapters(text_encoders[prefix], text_names, text_scales)
    if not fuse:  # live peft layers (to measure what fusing saves)
        return
    if names:
        unet.fuse_lora(lora_scale=1.0, adapter_names=names)
        unet.unload_lora()
    for prefix, (text_names, _) in texts.items():
        if text_names:
            fuse_text_encoder_lora(text_encoders[prefix], lora_scale=1.0, adapter_names=text_names)
            recurse_remove_peft_layers(text_encoders[prefix])


# the spatial attention projections (SD 1.x attn1/attn2, the MMDiT's attn), never a motion module's
SPATIAL_ATTENTION = r"^(?!.*motion_modules).*\.attn[12]?\.(to_q|to_k|to_v|to_out\.0)$"


def add_training_lora(model: nn.Module, rank: int) -> None:
    """A fresh peft LoRA (alpha = rank, so scale 1) on `model`'s spatial attention, ready to train."""
    from peft import LoraConfig

    model.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=SPATIAL_ATTENTION)
    )


def save_training_lora(model: nn.Module, prefix: str, path: Path, dtype) -> None:
    """The LoRA of `model` as diffusers writes it (`{prefix}.<layer>.lora_A.weight`), atomically."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .atomic import atomic_file

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(model))
    tensors = {f"{prefix}.{k}": v.detach().to(dtype).contiguous() for k, v in state.items()}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
