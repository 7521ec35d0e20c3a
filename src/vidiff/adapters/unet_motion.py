"""SD 1.x UNet with AnimateDiff motion modules (diffusers' UNetMotionModel): all frames denoised together."""

from __future__ import annotations

from accelerate import init_empty_weights
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from torch import Tensor, nn

from ..errors import LoadError
from .base import Conditioning, VideoDenoiser


def merge_motion_unet(unet: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """Insert the adapter's temporal transformers into the image UNet.

    Same result as diffusers' `UNetMotionModel.from_unet2d(unet, adapter)`, without its random
    initialisation and copies: the structure is built on the meta device and the loaded tensors are
    assigned into it, so merging costs no time and no extra memory.
    """
    if adapter.config.get("conv_in_channels"):
        raise LoadError("--motion-module", "PIA-style motion adapters (extra conv_in channels) are not supported")
    try:
        with init_empty_weights():  # parameters on meta, buffers (frame positions) computed for real
            model = UNetMotionModel.from_unet2d(unet, adapter, load_weights=False)
    except ValueError as e:  # diffusers' block / layer compatibility checks
        raise LoadError("--motion-module", f"does not fit this UNet: {e}") from e
    state = {**unet.state_dict(), **adapter.state_dict()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise LoadError(
            "--motion-module", f"does not fit this UNet (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    # nn.Module.to: the only tensors not already in place are the computed frame-position buffers
    return nn.Module.to(model, device=unet.device, dtype=unet.dtype)


class UNetMotionDenoiser(VideoDenoiser):
    """`predict` runs the motion UNet on the 5-D latent; frames ride in the batch inside diffusers."""

    family = "sd1"

    def __init__(self, unet: UNetMotionModel) -> None:
        self.unet = unet
        self.latent_channels = unet.config.in_channels
        self.max_frames = unet.config.motion_max_seq_length

    @property
    def module(self) -> nn.Module:
        return self.unet

    def predict(self, latents: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        frames = latents.shape[2]
        embeds = cond.embeds.repeat_interleave(frames, dim=0)  # (B*F, L, D), frame-major per video
        return self.unet(latents, t, encoder_hidden_states=embeds).sample  # (B, C, F, h, w)
