"""Latte (diffusers' LatteTransformer3DModel): a video DiT with interleaved spatial and temporal blocks."""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import InvalidArgument
from .base import Conditioning, VideoDenoiser


class LatteDenoiser(VideoDenoiser):
    """Takes the 5-D latent as it is; drops the learned-variance half of the output, as LattePipeline does."""

    family = "sd1"  # Latte works in the SD VAE's 4-channel latent space
    pab_family = "latte"

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
        out = self.transformer(
            hidden_states=latents,  # (B, C, F, h, w)
            encoder_hidden_states=cond.embeds,  # (B, L, D)
            timestep=t.expand(latents.shape[0]),
            enable_temporal_attentions=self.temporal_attention,
            return_dict=False,
        )[0]  # (B, C or 2C, F, h, w)
        return out[:, : self.latent_channels]  # (B, C, F, h, w)
