"""GroupNorm as the AnimateDiff motion modules were trained (the original code), or as diffusers runs them.

Two places differ between guoyww/AnimateDiff's `UNet3DConditionModel` and diffusers' `UNetMotionModel`:

(a) the motion modules' input norm (`TemporalTransformer3DModel.norm`): the original normalises each frame on
    its own (`b c f h w -> (b f) c h w` before the norm); diffusers over all frames of a video together.
(b) v1 only (its config has no `use_inflated_groupnorm`): the original's ResNet norms and `conv_norm_out`
    normalise over all frames of a video (a GroupNorm on the 5-D tensor); diffusers per frame.
(c) the motion modules' norm has 32 groups in the original (`TemporalTransformer3DModel`'s fixed default);
    diffusers' `UNetMotionModel` gives it the image UNet's `norm_num_groups` (the same 32 for SD 1.5).

For SDXL the two releases differ from each other. AnimateDiff-SDXL's code (guoyww/AnimateDiff, `sdxl`
branch) normalises its motion modules over all frames and its ResNets per frame: as diffusers does, so
(a)-(c) do not apply to it. Hotshot-XL's code normalises its temporal layers per frame as in (a) and its
ResNets and `conv_norm_out` over all frames of a video as in (b) (`ResnetBlock3D` norms the 5-D tensor).

`original` mode (the default for released modules) swaps those norms for the original's behaviour in place;
parameters and state dicts are untouched, and `diffusers` mode swaps them back. A module trained by
diffusers' code (vidiff's own trainer, the shipped demo adapter) records `diffusers` in its config.
"""

from __future__ import annotations

from torch import Tensor, nn

MOTION_GROUPS = 32  # the original TemporalTransformer3DModel's norm_num_groups
CONFIG_KEY = "vidiff_groupnorm"  # in a MotionAdapter folder's config.json: the mode it was trained with
HOOK = "_vidiff_frames_hook"
PER_VIDEO_RESNETS = ("v1", "hotshot")  # versions whose original code normalises ResNets over all frames


class PerFrameGroupNorm(nn.GroupNorm):
    """(B, C, F, H, W) normalised frame by frame: the original motion module's norm."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, f, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * f, c, h, w))  # (B*F, C, H, W)
        return y.reshape(b, f, c, h, w).transpose(1, 2)  # (B, C, F, H, W)


class PerVideoGroupNorm(nn.GroupNorm):
    """(B*F, C, H, W) normalised over all F frames of each video: the original v1 ResNet norms.

    `frames` is set by a pre-hook on the UNet from each call's sample."""

    frames: int = 1

    def forward(self, x: Tensor) -> Tensor:
        bf, c, h, w = x.shape
        f = self.frames
        y = super().forward(x.reshape(bf // f, f, c, h, w).transpose(1, 2))  # (B, C, F, H, W): over C/G, F, H, W
        return y.transpose(1, 2).reshape(bf, c, h, w)  # (B*F, C, H, W)


def _motion_norms(unet: nn.Module) -> list[nn.GroupNorm]:
    return [m.norm for name, m in unet.named_modules() if name.split(".")[-2:-1] == ["motion_modules"]]


def _resnet_norms(unet: nn.Module) -> list[nn.GroupNorm]:
    norms = [m for name, m in unet.named_modules() if ".resnets." in name and name.split(".")[-1] in ("norm1", "norm2")]
    return norms + ([unet.conv_norm_out] if getattr(unet, "conv_norm_out", None) is not None else [])


def resolve_mode(mode: str, version: str, recorded: str | None) -> str:
    """`auto`: what the module records it was trained with, else the original code's behaviour."""
    if mode != "auto":
        return mode
    return recorded or "original"


def set_groupnorm(unet: nn.Module, mode: str, version: str) -> None:
    """Make a UNetMotionModel's norms behave as in `mode` ('original' or 'diffusers') for a `version` module."""
    per_frame = mode == "original" and version != "sdxl"
    for norm in _motion_norms(unet):
        norm.__class__ = PerFrameGroupNorm if per_frame else nn.GroupNorm
        norm.num_groups = MOTION_GROUPS if per_frame else unet.config.norm_num_groups
    per_video = mode == "original" and version in PER_VIDEO_RESNETS
    for norm in _resnet_norms(unet):
        norm.__class__ = PerVideoGroupNorm if per_video else nn.GroupNorm
    handle = getattr(unet, HOOK, None)
    if handle is not None:
        handle.remove()
        delattr(unet, HOOK)
    if per_video:
        norms = _resnet_norms(unet)

        def frames(_module, args, kwargs) -> None:
            sample = args[0] if args else kwargs["sample"]  # (B, C, F, h, w)
            for norm in norms:
                norm.frames = sample.shape[2]

        setattr(unet, HOOK, unet.register_forward_pre_hook(frames, with_kwargs=True))
