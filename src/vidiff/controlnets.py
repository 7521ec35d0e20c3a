"""ControlNet and SparseCtrl models from the layouts users have, and what they add to a UNet step.

Loading: a diffusers folder (`ControlNetModel`, `SparseControlNetModel`), an A1111 / lllyasviel single file
(`control_v11p_sd15_openpose.pth`, `control_model.*` keys, fp16 or fp32) converted by diffusers' own
single-file conversion with the configuration read off the shapes, or an original AnimateDiff SparseCtrl file
(`v3_sd15_sparsectrl_rgb.ckpt`, `scribble`), whose keys differ from diffusers' only in the motion modules'
names. `control_files` tells the kind and architecture from a file's keys, before any weights load.

A `Control` is one ControlNet's part of a run: the model, its images prepared for all frames, scale and
schedule span; `residuals` runs every ControlNet for one UNet call and sums what they add (as diffusers'
MultiControlNetModel does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel, SparseControlNetModel
from diffusers.loaders import single_file_utils as sf
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from torch import Tensor, nn

from .control import NETS, ControlNetUri
from .control_files import A1111, check_control, info_from_keys
from .errors import LoadError
from .motion.animatediff_format import DEFAULT_MAX_FRAMES
from .single_file import SD1_GROUPS, SD1_HEADS, _build, _levels
from .tensor_files import read_state_dict

SPARSE_MOTION_HEADS = 8  # AnimateDiff's motion modules attend with 8 heads


def load_control_model(uri: ControlNetUri, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """A ControlNetModel or SparseControlNetModel from a folder or a single file, in eval mode on `device`."""
    path = Path(uri.path)
    if path.is_dir():
        cls = SparseControlNetModel if check_control(uri).kind == "sparsectrl" else ControlNetModel
        try:
            model = cls.from_pretrained(path, torch_dtype=dtype)
        except (OSError, ValueError, KeyError) as e:
            raise LoadError(NETS, f"{path} is not a readable {cls.__name__} folder ({str(e).splitlines()[0]})") from e
    else:  # read once: its keys say what it is
        state = read_state_dict(path, NETS)
        info = check_control(uri, info_from_keys({k: tuple(v.shape) for k, v in state.items()}, path.name))
        build = _sparse_from_original if info.kind == "sparsectrl" else _controlnet_from_single_file
        model = build(state, dtype)
    return model.to(device).eval().requires_grad_(False)


def check_control_fits(model: nn.Module, unet: nn.Module, spatial: int, path: str) -> None:
    """Refuse a ControlNet shaped for another UNet (block widths, text width) or VAE (how far its image
    embedding scales pixels down: `spatial` pixels per latent cell)."""
    got = (tuple(model.config.block_out_channels), model.config.cross_attention_dim)
    want = (tuple(unet.config.block_out_channels), unet.config.cross_attention_dim)
    if got != want:
        raise LoadError(NETS, f"{Path(path).name} was made for a UNet with block widths {got[0]} and text width "
                        f"{got[1]}; this model's UNet has {want[0]} and {want[1]}")  # fmt: skip
    latent_input = getattr(model.config, "use_simplified_condition_embedding", False)
    down = 2 ** (len(model.config.conditioning_embedding_out_channels) - 1)
    if not latent_input and down != spatial:
        raise LoadError(NETS, f"{Path(path).name} scales its images down {down}x; this model's VAE makes one "
                        f"latent cell of {spatial}x{spatial} pixels")  # fmt: skip


def controlnet_config(state: dict[str, Tensor]) -> dict:
    """A ControlNetModel configuration read off LDM-layout weights (what shapes cannot say is SD 1.x's)."""
    channels, layers, attends = _levels(state)
    cross = next(v.shape[1] for k, v in state.items() if k.endswith("attn2.to_k.weight"))
    proj_in = next(v for k, v in state.items() if k.endswith("1.proj_in.weight"))
    hint = [state[f"input_hint_block.{i}.weight"].shape[0] for i in (0, 4, 8, 12)]
    return {
        "in_channels": state["input_blocks.0.0.weight"].shape[1],
        "conditioning_channels": state["input_hint_block.0.weight"].shape[1],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "cross_attention_dim": cross,
        "attention_head_dim": SD1_HEADS,
        "norm_num_groups": SD1_GROUPS,
        "use_linear_projection": proj_in.dim() == 2,
        "conditioning_embedding_out_channels": hint,
    }


def _controlnet_from_single_file(state: dict[str, Tensor], dtype: torch.dtype) -> ControlNetModel:
    state = {k.removeprefix(A1111): v for k, v in state.items()}
    if "input_hint_block.0.weight" not in state:
        raise LoadError(NETS, "holds no ControlNet in the A1111 layout (no input_hint_block.* weights)")
    config = controlnet_config(state)
    converted = sf.convert_controlnet_checkpoint(state, config)
    return _build(ControlNetModel, config, converted, dtype, "ControlNet", NETS)


def sparse_config(state: dict[str, Tensor], table: int) -> dict:
    """A SparseControlNetModel configuration read off diffusers-named weights (heads as SD 1.x's); `table`: the
    motion modules' frame positions."""
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"down_blocks\.(\d+)\.", k))})
    layers = len({m.group(1) for k in state if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))})
    simplified = "controlnet_cond_embedding.weight" in state
    embed = state["controlnet_cond_embedding.weight" if simplified else "controlnet_cond_embedding.conv_in.weight"]
    cross = next(v.shape[1] for k, v in state.items() if k.endswith("attn2.to_k.weight"))
    attends = [f"down_blocks.{i}.attentions.0.proj_in.weight" in state for i in levels]
    config = {
        "in_channels": state["conv_in.weight"].shape[1],
        "conditioning_channels": embed.shape[1] - 1,  # the mask is concatenated to the image
        "block_out_channels": [state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in levels],
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlockMotion" if a else "DownBlockMotion" for a in attends],
        "cross_attention_dim": cross,
        "attention_head_dim": SD1_HEADS,
        "norm_num_groups": SD1_GROUPS,
        "use_linear_projection": state["down_blocks.0.attentions.0.proj_in.weight"].dim() == 2,
        "motion_max_seq_length": table,
        "motion_num_attention_heads": SPARSE_MOTION_HEADS,
        "use_simplified_condition_embedding": simplified,
    }
    if not simplified:
        hint = [state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0] for i in (1, 3, 5)]
        config["conditioning_embedding_out_channels"] = [embed.shape[0], *hint]
    return config


def _sparse_from_original(state: dict[str, Tensor], dtype: torch.dtype) -> SparseControlNetModel:
    """An original AnimateDiff SparseCtrl file: its motion modules renamed as diffusers' AnimateDiff conversion
    does (the stored frame sinusoids are recomputed, identical), the rest already diffusers-named."""
    state = {k.removeprefix("controlnet."): v for k, v in state.items()}
    table = next((v.shape[1] for k, v in state.items() if k.endswith("pos_encoder.pe")), DEFAULT_MAX_FRAMES)
    renamed = convert_animatediff_checkpoint_to_diffusers(state)
    with init_empty_weights():  # parameters on meta; the sinusoid buffers are computed
        model = SparseControlNetModel(**sparse_config(renamed, table))
    missing, unexpected = model.load_state_dict(renamed, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith(".pos_embed.pe")]
    if missing or unexpected:
        raise LoadError(NETS, f"the SparseCtrl model in it has an unexpected layout (missing {missing[:2]}, "
                        f"unexpected {unexpected[:2]})")  # fmt: skip
    return nn.Module.to(model, dtype=dtype)


@dataclass
class Control:
    """One ControlNet's part of a run: `images` for every frame (SparseCtrl: zeros except at `mask`'s frames),
    batch 1, broadcast over the videos and both guidance halves."""

    model: nn.Module
    images: Tensor  # (1, c, F, H, W) in [0, 1]; SparseCtrl RGB: (1, 4, F, h, w) VAE latents
    scale: float
    start: float = 0.0
    end: float = 1.0
    mask: Tensor | None = None  # (1, 1, F, H, W) SparseCtrl: 1 on frames with a control image

    @property
    def sparse(self) -> bool:
        return self.mask is not None

    def frames(self, index: Tensor | slice) -> Control:
        mask = None if self.mask is None else self.mask[:, :, index]
        return replace(self, images=self.images[:, :, index], mask=mask)

    def at_step(self, i: int, steps: int) -> Control | None:
        """This ControlNet at step i of `steps` (the full schedule), or None outside its span (diffusers' rule)."""
        off = i / steps < self.start or (i + 1) / steps > self.end
        return None if off or self.scale == 0 else self


def residuals(latents: Tensor, t: Tensor, embeds: Tensor, controls: tuple[Control, ...]) -> dict:
    """What the ControlNets add to one UNet call on latents (B, C, F, h, w) with embeds (B*F, L, D): summed
    down-block and mid-block residuals as the UNet's keyword arguments (none without ControlNets)."""
    down: list[Tensor] | None = None
    mid: Tensor | None = None
    b, _, f = latents.shape[:3]
    for c in controls:
        if c.sparse:  # runs on the 5-D latent (and zeroes it: SparseCtrl reads only its images)
            d, m = c.model(latents, t, encoder_hidden_states=embeds, controlnet_cond=c.images,
                           conditioning_mask=c.mask, conditioning_scale=c.scale, return_dict=False)  # fmt: skip
        else:
            x = latents.transpose(1, 2).flatten(0, 1)  # (B*F, C, h, w)
            images = c.images.transpose(1, 2).flatten(0, 1).repeat(b, 1, 1, 1)  # (B*F, c, H, W)
            step = t if t.dim() == 0 or len(t) == b * f else t.repeat_interleave(f)  # scalar or (B*F,)
            d, m = c.model(x, step, encoder_hidden_states=embeds, controlnet_cond=images.to(x.dtype),
                           conditioning_scale=c.scale, return_dict=False)  # fmt: skip
        down = list(d) if down is None else [a + r for a, r in zip(down, d, strict=True)]
        mid = m if mid is None else mid + m
    if down is None:
        return {}
    return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}
