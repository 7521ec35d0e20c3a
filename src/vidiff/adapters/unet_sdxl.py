"""SDXL UNet with AnimateDiff-SDXL or Hotshot-XL motion modules: the SD 1.x assembly (`unet_motion`) with SDXL's
two text encoders, pooled embedding and micro-conditioning.

SDXL's UNet also takes the second encoder's pooled embedding and six "time ids" (original size, crop corner,
target size), as diffusers' StableDiffusionXLPipeline makes them: original = target = the video's size, crop
(0, 0). The motion UNet (diffusers' UNetMotionModel) adds them to the timestep embedding once per video;
where the pooled embedding travels with the prompt, each frame gets its own (`frame_embeddings`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ..errors import LoadError
from ..loading import CLIP_TOKENIZER, load_part, require_parts
from ..lora import SDXL_TARGET
from ..text import SDXLPromptEncoder
from .base import Conditioning, Loaded, LoadOptions, per_frame
from .unet_motion import Parts, UNetFamily, UNetFramesDenoiser, UNetMotionDenoiser, assemble, unet_inputs

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
OPEN_CLIP_PAD = "!"  # SDXL's tokenizer_2 pads with "!" (OpenCLIP's zero token), its tokenizer with end-of-text
VAE_FACTOR = 8  # pixels per latent cell: the time ids are in pixels
REFINER_TIME_IDS = 5  # original size, crop corner, aesthetic score


def time_ids(latents: Tensor) -> Tensor:
    """SDXL's micro-conditioning for latents (..., h, w): (1, 6) = original size, crop (0, 0), target size."""
    h, w = latents.shape[-2] * VAE_FACTOR, latents.shape[-1] * VAE_FACTOR
    return torch.tensor([[h, w, 0, 0, h, w]], dtype=latents.dtype, device=latents.device)  # (1, 6)


def _frame_embedding(unet: nn.Module, t: Tensor, pooled: Tensor, ids: Tensor) -> Tensor:
    """The timestep + pooled-text embedding per frame (B*F, D), as UNetMotionModel makes it per video."""
    emb = unet.time_embedding(unet.time_proj(t).to(unet.dtype))  # (B*F, D)
    times = unet.add_time_proj(ids.flatten()).reshape(len(ids), -1)  # (B*F, 6 * 256)
    return emb + unet.add_embedding(torch.cat([pooled, times], dim=-1).to(emb.dtype))  # (B*F, D)


@contextmanager
def frame_embeddings(unet: nn.Module, emb: Tensor) -> Iterator[None]:
    """While inside: every UNet block receives `emb` (B*F, D) as its time embedding (per-frame pooled text)."""

    def swap(_module, args, kwargs):
        if "temb" in kwargs:
            return args, {**kwargs, "temb": emb}
        return (args[0], emb, *args[2:]), kwargs  # the mid block takes it second, positionally

    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    handles = [b.register_forward_pre_hook(swap, with_kwargs=True) for b in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class SDXLMotionDenoiser(UNetMotionDenoiser):
    """The motion UNet with SDXL's added conditioning: per video, or per frame when the pooled text travels."""

    def predict(self, latents: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        b, f = latents.shape[0], latents.shape[2]
        ids = time_ids(latents).expand(b, -1)  # (B, 6)
        pooled = cond.pooled[:, 0] if cond.per_frame else cond.pooled  # (B, P)
        added = {"text_embeds": pooled, "time_ids": ids}
        if not cond.per_frame:
            return self.unet(latents, t, added_cond_kwargs=added, **unet_inputs(latents, t, cond)).sample
        emb = _frame_embedding(self.unet, per_frame(t, b, f), cond.flat(f)[1], ids.repeat_interleave(f, dim=0))
        with frame_embeddings(self.unet, emb):
            return self.unet(latents, t, added_cond_kwargs=added, **unet_inputs(latents, t, cond)).sample


class SDXLFramesDenoiser(UNetFramesDenoiser):
    """An SDXL image UNet over the frames of a video (frame by frame), its added conditioning per frame."""

    def unet_kwargs(self, latents: Tensor, steps: Tensor, cond: Conditioning) -> dict:
        b, f = latents.shape[0], latents.shape[2]
        added = {"text_embeds": cond.flat(f)[1], "time_ids": time_ids(latents).expand(b * f, -1)}  # (B*F, ...)
        return {**unet_inputs(latents, steps, cond), "added_cond_kwargs": added}


def _read_vae(state: dict, dtype: torch.dtype, argument: str) -> AutoencoderKL:
    from .. import single_file

    return single_file.load_vae(state, dtype, argument, single_file.SDXL_VAE_SCALING)


def _version(keys_say: str) -> str:
    """On an SDXL UNet, a module with AnimateDiff's keys is AnimateDiff-SDXL (v3's keys at three levels)."""
    return keys_say if keys_say == "hotshot" else "sdxl"


SDXL = UNetFamily(
    "SDXL", "sdxl", "an SDXL motion module (mm_sdxl_v10_beta.ckpt or hsxl_temporal_layers.safetensors)",
    SDXL_TARGET, _read_vae, _version, SDXLMotionDenoiser, SDXLFramesDenoiser,
)  # fmt: skip


def _tokenizers(source: Path | None) -> list[CLIPTokenizer]:
    if source is None:  # a single file: the CLIP vocabulary vidiff ships, padded as SDXL's two tokenizers pad
        return [CLIPTokenizer.from_pretrained(CLIP_TOKENIZER),
                CLIPTokenizer.from_pretrained(CLIP_TOKENIZER, pad_token=OPEN_CLIP_PAD)]  # fmt: skip
    return [load_part(CLIPTokenizer.from_pretrained, source / p) for p in ("tokenizer", "tokenizer_2")]


def _refuse_refiner(unet_config: dict, pooled: int, path: Path) -> None:
    ids = (unet_config.get("projection_class_embeddings_input_dim") or 0) - pooled
    if ids == REFINER_TIME_IDS * unet_config.get("addition_time_embed_dim", 0):
        raise LoadError("--model", f"{path.name} is an SDXL refiner; vidiff runs SDXL base models")


def _file_parts(source: Path, options: LoadOptions, notes: list[str]) -> Parts:
    from .. import single_file

    dtype = options.dtype
    checkpoint = single_file.read_checkpoint(source, family="sdxl")
    encoders = [single_file.load_text_encoder(checkpoint, dtype), single_file.load_open_clip(checkpoint, dtype)]
    vae = _read_vae(checkpoint, dtype, "--model") if options.settings.vae is None else None
    unet = single_file.load_unet(checkpoint, dtype, sdxl=True)
    _refuse_refiner(dict(unet.config), encoders[1].config.projection_dim, source)
    notes.append(f"single-file SDXL checkpoint: UNet {tuple(unet.config.block_out_channels)}, "
                 f"{unet.config.in_channels} input channels")  # fmt: skip
    scheduler = dict(single_file.SD1_SCHEDULER)  # SDXL base trains on SD 1.x's betas
    return Parts(SDXLPromptEncoder(_tokenizers(None), encoders), _by_prefix(encoders), vae, scheduler, unet)


def _folder_parts(source: Path, options: LoadOptions) -> Parts:
    require_parts(source, PARTS, "SDXL")
    dtype = options.dtype
    encoders = [
        load_part(CLIPTextModel.from_pretrained, source / "text_encoder", dtype=dtype),
        load_part(CLIPTextModelWithProjection.from_pretrained, source / "text_encoder_2", dtype=dtype),
    ]
    unet_config = json.loads((source / "unet" / "config.json").read_text())
    _refuse_refiner(unet_config, encoders[1].config.projection_dim, source)
    vae = None
    if options.settings.vae is None:
        vae = load_part(AutoencoderKL.from_pretrained, source / "vae", torch_dtype=dtype)
    index = json.loads((source / "model_index.json").read_text()) if (source / "model_index.json").is_file() else {}
    encoder = SDXLPromptEncoder(_tokenizers(source), encoders, index.get("force_zeros_for_empty_prompt", True))
    scheduler = dict(load_part(DDIMScheduler.load_config, source / "scheduler"))
    return Parts(encoder, _by_prefix(encoders), vae, scheduler)


def _by_prefix(encoders: list[nn.Module]) -> dict[str, nn.Module]:
    return {"text_encoder": encoders[0], "text_encoder_2": encoders[1]}


def build(source: Path, options: LoadOptions) -> Loaded:
    """An SDXL folder or single-file checkpoint as a video backbone (the `sdxl` spec)."""
    start, notes = time.perf_counter(), []
    parts = _file_parts(source, options, notes) if source.is_file() else _folder_parts(source, options)
    return assemble(source, options, SDXL, parts, notes, start)
