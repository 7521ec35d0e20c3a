"""Backbone adapters: one small class per backbone, all behind the `VideoDenoiser` contract."""

from .base import Conditioning, VideoDenoiser
from .image_sequential import ImageSequentialDenoiser
from .unet_motion import UNetFramesDenoiser, UNetMotionDenoiser, merge_motion_unet

__all__ = [
    "Conditioning",
    "ImageSequentialDenoiser",
    "VideoDenoiser",
    "UNetFramesDenoiser",
    "UNetMotionDenoiser",
    "merge_motion_unet",
]
