"""Latte (diffusers' LatteTransformer3DModel): a video DiT with interleaved spatial and temporal blocks.

`build` loads a LattePipeline folder; sequential mode turns its temporal attention off.
"""

from __future__ import annotations

import time
from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler
from torch import Tensor, nn

from ..errors import InvalidArgument
from ..loading import load_part, require_parts
from ..text import T5PromptEncoder
from .base import Conditioning, Loaded, LoadOptions, VideoDenoiser

PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


class LatteDenoiser(VideoDenoiser):
    """Takes the 5-D latent as it is; drops the learned-variance half of the output, as LattePipeline does."""

    def __init__(self, transformer, temporal_attention: bool = True) -> None:
        self.transformer = transformer
        self.temporal_attention = temporal_attention
        self.latent_channels = transformer.config.in_channels
        self.max_frames = transformer.config.video_length

    def check_frames(self, frames: int) -> None:
        if frames not in (1, self.max_frames):  # diffusers adds the whole temporal position table
            raise InvalidArgument(
                "--frames", f"this Latte model makes exactly {self.max_frames} frames (its video_length)"
            )

    @property
    def module(self) -> nn.Module:
        return self.transformer

    def predict(self, latents: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        if cond.per_frame:
            raise InvalidArgument("--prompt-travel", "Latte takes one prompt per video")
        out = self.transformer(
            hidden_states=latents,  # (B, C, F, h, w)
            encoder_hidden_states=cond.embeds,  # (B, L, D)
            timestep=t.expand(latents.shape[0]),
            enable_temporal_attentions=self.temporal_attention,
            return_dict=False,
        )[0]  # (B, C or 2C, F, h, w)
        return out[:, : self.latent_channels]  # (B, C, F, h, w)


def build(folder: Path, options: LoadOptions) -> Loaded:
    """A Latte folder as a video backbone (the `latte` spec)."""
    from diffusers import LatteTransformer3DModel
    from transformers import AutoTokenizer, T5EncoderModel

    start = time.perf_counter()
    require_parts(folder, PARTS, "Latte")
    options.refuse_sd1_only()
    dtype = options.dtype
    tokenizer = load_part(AutoTokenizer.from_pretrained, folder / "tokenizer")
    text_encoder = load_part(T5EncoderModel.from_pretrained, folder / "text_encoder", dtype=dtype)
    transformer = load_part(LatteTransformer3DModel.from_pretrained, folder / "transformer", torch_dtype=dtype)
    vae = load_part(AutoencoderKL.from_pretrained, folder / "vae", torch_dtype=dtype)
    config = dict(load_part(DDIMScheduler.load_config, folder / "scheduler"))
    for module in (text_encoder, transformer, vae):
        module.to(options.device).eval().requires_grad_(False)
    denoiser = LatteDenoiser(transformer, temporal_attention=not options.settings.frame_by_frame)
    encoder = T5PromptEncoder(tokenizer, text_encoder)
    return Loaded(encoder, denoiser, vae, config, transformer.config.sample_size, time.perf_counter() - start)
