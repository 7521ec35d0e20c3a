"""Single-file Stable Diffusion 1.x and SDXL checkpoints (CompVis / A1111 / Civitai layout), offline.

The file's keys (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`) are
converted by diffusers' own single-file conversion; what that needs from a config is read off the weights'
shapes (channels per level, layers per level, which levels attend, input channels: 9 for an inpainting
UNet, cross-attention width, latent channels, text width, depth and vocabulary). What the shapes cannot
tell comes from Stable Diffusion 1.x's own configuration: 8 attention heads, 32 norm groups, a 64-cell
native latent size, the VAE scaling factor 0.18215, 64-wide CLIP heads, and the scheduler SD 1.5 folders
ship. SDXL files (`conditioner.embedders.0.transformer.*` CLIP-L and `conditioner.embedders.1.model.*`
OpenCLIP bigG) differ in what the shapes cannot tell: 64-wide attention heads at every level, a 128-cell
latent size, VAE scaling 0.13025, 256-wide micro-conditioning embeddings, and OpenCLIP's GELU. The
tokenizers are the real CLIP vocabulary that ships with vidiff (SDXL's second pads with "!"). Files of
other architectures (SD 2.x, the SDXL refiner, SD 3, ...) are named in one line.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sf
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from .errors import LoadError
from .families import OPEN_CLIP, family_from_names
from .layout import clip_text_config
from .tensor_files import read_state_dict, tensor_names

UNET = "model.diffusion_model."
VAE_PREFIXES = ("first_stage_model.", "vae.")
SD1_HEADS = 8  # SD 1.x attends with 8 heads at every level (num_heads=8 in its v1-inference.yaml)
SD1_GROUPS = 32
SD1_SAMPLE_SIZE = 64  # 512 pixels
SD1_VAE_SCALING = 0.18215
CLIP_HEAD_DIM = 64
SD1_SCHEDULER = {  # the scheduler config SD 1.5 folders ship (as DDIM)
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}
SDXL_HEAD_DIM = 64  # SDXL attends with 64-wide heads (num_head_channels=64 in its sd_xl_base.yaml)
SDXL_SAMPLE_SIZE = 128  # 1024 pixels
SDXL_VAE_SCALING = 0.13025
SDXL_TIME_EMBED = 256  # the width of each micro-conditioning number's sinusoid (adm's 256)
NOT_SD1 = {"v2": "Stable Diffusion 2.x", "inpainting_v2": "Stable Diffusion 2.x inpainting", "xl_base": "SDXL",
           "xl_refiner": "SDXL refiner", "xl_inpaint": "SDXL inpainting", "playground-v2-5": "Playground v2.5",
           "sd3": "Stable Diffusion 3", "sd35_medium": "Stable Diffusion 3.5", "sd35_large": "Stable Diffusion 3.5",
           "flux-dev": "Flux", "flux-schnell": "Flux", "upscale": "an SD upscaler"}  # fmt: skip


def _levels(unet: dict[str, torch.Tensor]) -> tuple[list[int], int, list[bool]]:
    """(channels per level, resnets per level, attention per level) from the LDM input blocks."""
    indices = sorted({int(m.group(1)) for k in unet if (m := re.match(r"input_blocks\.(\d+)\.", k))})
    channels: list[int] = []
    attends: list[bool] = []
    counts: list[int] = []
    for i in indices[1:]:
        if f"input_blocks.{i}.0.op.weight" in unet:  # a downsampler ends a level
            continue
        if not channels or f"input_blocks.{i - 1}.0.op.weight" in unet:  # the first resnet of a level
            channels.append(unet[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0])
            attends.append(False)
            counts.append(0)
        counts[-1] += 1
        attends[-1] = attends[-1] or f"input_blocks.{i}.1.proj_in.weight" in unet
    return channels, counts[0], attends


def _transformer_depths(unet: dict[str, torch.Tensor], levels: int) -> list[int]:
    """Transformer blocks per attention at each level (SDXL: 1, 2, 10), from the down path's attentions."""
    depths, level = [1] * levels, 0
    for i in sorted({int(m.group(1)) for k in unet if (m := re.match(r"input_blocks\.(\d+)\.", k))})[1:]:
        if f"input_blocks.{i}.0.op.weight" in unet:  # a downsampler ends a level
            level += 1
            continue
        pattern = re.compile(rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.")
        blocks = {int(m.group(1)) for k in unet if (m := pattern.match(k))}
        depths[level] = max(blocks) + 1 if blocks else depths[level]
    return depths


def unet_config(checkpoint: dict[str, torch.Tensor], sdxl: bool = False) -> dict:
    unet = {k.removeprefix(UNET): v for k, v in checkpoint.items() if k.startswith(UNET)}
    channels, layers, attends = _levels(unet)
    cross = next(v.shape[1] for k, v in unet.items() if k.endswith("attn2.to_k.weight"))
    proj_in = next(v for k, v in unet.items() if k.endswith("1.proj_in.weight"))
    config = {
        "sample_size": SD1_SAMPLE_SIZE,
        "in_channels": unet["input_blocks.0.0.weight"].shape[1],
        "out_channels": unet["out.2.weight"].shape[0],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
        "cross_attention_dim": cross,
        "attention_head_dim": SD1_HEADS,
        "norm_num_groups": SD1_GROUPS,
        "use_linear_projection": proj_in.dim() == 2,
    }
    if not sdxl:
        return config
    return config | {
        "sample_size": SDXL_SAMPLE_SIZE,
        "attention_head_dim": [max(1, c // SDXL_HEAD_DIM) for c in channels],  # diffusers: heads per level
        "transformer_layers_per_block": _transformer_depths(unet, len(channels)),
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": SDXL_TIME_EMBED,
        "projection_class_embeddings_input_dim": unet["label_emb.0.0.weight"].shape[1],
    }


def vae_config(vae: dict[str, torch.Tensor], scaling: float = SD1_VAE_SCALING) -> dict:
    levels = sorted({int(m.group(1)) for k in vae if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    blocks = {int(m.group(1)) for k in vae if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    return {
        "in_channels": vae["encoder.conv_in.weight"].shape[1],
        "out_channels": vae["decoder.conv_out.weight"].shape[0],
        "latent_channels": vae["encoder.conv_out.weight"].shape[0] // 2,
        "block_out_channels": [vae[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in levels],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "layers_per_block": len(blocks),
        "norm_num_groups": SD1_GROUPS,
        "sample_size": SD1_SAMPLE_SIZE * 8,
        "scaling_factor": scaling,
    }


def _build(cls, config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype, what: str, argument: str):
    with init_empty_weights():
        model = cls(**config) if isinstance(config, dict) else cls(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise LoadError(argument, f"the {what} in it has an unexpected layout (missing {missing[:2]}, "
                                  f"unexpected {unexpected[:2]})")  # fmt: skip
    for name, buffer in model.named_buffers():
        if buffer.is_meta:  # CLIP's position ids
            model.get_submodule(name.rpartition(".")[0]).register_buffer(
                name.rpartition(".")[2], torch.arange(buffer.shape[-1]).expand(buffer.shape), persistent=False
            )
    return torch.nn.Module.to(model, dtype=dtype).eval().requires_grad_(False)  # no fp32-module warning


def checkpoint_family(path: Path, argument: str = "--model") -> str:
    """'sdxl' or 'sd1' from a single file's tensor names (a safetensors header, or a lazily mapped pickle);
    the SDXL refiner is refused by name. Other architectures are named when the file is read."""
    return family_from_names(tensor_names(path, argument), path.name) or "sd1"


def read_checkpoint(path: Path, argument: str = "--model", family: str = "sd1") -> dict[str, torch.Tensor]:
    """The state dict of a single-file checkpoint, its architecture checked: SD 1.x (or SDXL, for `family`
    'sdxl') or one line naming it."""
    checkpoint = read_state_dict(path, argument)
    kind = sf.infer_diffusers_model_type(checkpoint) if family == "sd1" else None
    if kind in NOT_SD1:
        raise LoadError(argument, f"{path.name} is a {NOT_SD1[kind]} checkpoint; vidiff runs Stable Diffusion 1.x")
    if not any(k.startswith(UNET) for k in checkpoint):
        raise LoadError(argument, f"{path.name} is not a Stable Diffusion checkpoint (no {UNET}* weights)")
    return checkpoint


def load_unet(checkpoint: dict, dtype: torch.dtype, argument: str = "--model", sdxl: bool = False):
    config = unet_config(checkpoint, sdxl)
    state = sf.convert_ldm_unet_checkpoint(checkpoint, config)
    return _build(UNet2DConditionModel, config, state, dtype, "UNet", argument)


def load_vae(
    checkpoint: dict, dtype: torch.dtype, argument: str = "--model", scaling: float = SD1_VAE_SCALING
) -> AutoencoderKL:
    """The VAE of a whole checkpoint (`first_stage_model.*`) or of a VAE-only file (bare `encoder.*` keys)."""
    prefix = next((p for p in VAE_PREFIXES if any(k.startswith(p) for k in checkpoint)), "")
    vae = {k.removeprefix(prefix): v for k, v in checkpoint.items() if k.startswith(prefix)}
    if "encoder.conv_in.weight" not in vae:
        raise LoadError(argument, "holds no VAE weights (no first_stage_model.encoder.* or encoder.* keys)")
    config = vae_config(vae, scaling)
    state = sf.convert_ldm_vae_checkpoint({f"{VAE_PREFIXES[0]}{k}": v for k, v in vae.items()}, config)
    return _build(AutoencoderKL, config, state, dtype, "VAE", argument)


def _clip(cls, state: dict, dtype: torch.dtype, argument: str, **extra):
    """A CLIP text model from its diffusers-named state (`text_model.` prefix optional), config off the shapes."""
    state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    embed = state["embeddings.token_embedding.weight"]  # (vocab, width)
    layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
    fc1 = state["encoder.layers.0.mlp.fc1.weight"]  # (intermediate, width)
    width = embed.shape[1]
    config = clip_text_config(embed.shape[0], width, len(layers), max(1, width // CLIP_HEAD_DIM), fc1.shape[0], **extra)
    config.max_position_embeddings = state["embeddings.position_embedding.weight"].shape[0]
    with init_empty_weights():
        nested = hasattr(cls(config), "text_model")  # transformers < 5 keeps a text_model level for CLIPTextModel
    outer = ("text_projection.",)
    state = {(k if k.startswith(outer) or not nested else f"text_model.{k}"): v for k, v in state.items()}
    return _build(cls, config, state, dtype, "text encoder", argument)


def load_text_encoder(checkpoint: dict, dtype: torch.dtype, argument: str = "--model") -> CLIPTextModel:
    state = sf.convert_ldm_clip_checkpoint(checkpoint)
    if not any(k.endswith("embeddings.token_embedding.weight") for k in state):
        raise LoadError(argument, "holds no CLIP text encoder (no cond_stage_model.transformer.* or "
                                  "conditioner.embedders.0.transformer.* weights)")  # fmt: skip
    return _clip(CLIPTextModel, state, dtype, argument)


def load_open_clip(checkpoint: dict, dtype: torch.dtype, argument: str = "--model") -> CLIPTextModelWithProjection:
    """SDXL's OpenCLIP bigG (`conditioner.embedders.1.model.*`) as diffusers' `text_encoder_2`."""
    projection = checkpoint[f"{OPEN_CLIP}text_projection"]  # (width, projection)
    state = sf.convert_open_clip_checkpoint(None, checkpoint, prefix=OPEN_CLIP)
    return _clip(CLIPTextModelWithProjection, state, dtype, argument, projection_dim=projection.shape[1],
                 hidden_act="gelu")  # fmt: skip
