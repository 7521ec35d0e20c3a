"""vidiff: turn image diffusion models into video generators, AnimateDiff-style.

The public names load on first use, so `vidiff --help` and argument errors do not wait for torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .errors import InvalidArgument, LoadError, OutputExists, RenderInterrupted, VidiffError

if TYPE_CHECKING:
    from .accel.configs import DeepCacheConfig, PABConfig
    from .control import ControlOptions, IPAdapterOptions
    from .job import RenderJob, RenderResult
    from .pipeline import Timings, VideoOutput, VideoPipeline
    from .renderer import Renderer, decode_file, render
    from .request import GenerationRequest
    from .settings import LoadSettings
    from .sources import Source

_WHERE = {
    "ControlOptions": "control",
    "IPAdapterOptions": "control",
    "DeepCacheConfig": "accel.configs",
    "PABConfig": "accel.configs",
    "GenerationRequest": "request",
    "LoadSettings": "settings",
    "RenderJob": "job",
    "RenderResult": "job",
    "Renderer": "renderer",
    "decode_file": "renderer",
    "render": "renderer",
    "Source": "sources",
    "Timings": "pipeline",
    "VideoOutput": "pipeline",
    "VideoPipeline": "pipeline",
}

__all__ = [
    "ControlOptions",
    "IPAdapterOptions",
    "DeepCacheConfig",
    "GenerationRequest",
    "InvalidArgument",
    "LoadError",
    "LoadSettings",
    "OutputExists",
    "PABConfig",
    "RenderInterrupted",
    "RenderJob",
    "RenderResult",
    "Renderer",
    "Source",
    "Timings",
    "VideoOutput",
    "VideoPipeline",
    "VidiffError",
    "decode_file",
    "render",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'vidiff' has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
