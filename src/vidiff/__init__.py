"""vidiff: turn image diffusion models into video generators, AnimateDiff-style."""

from .accel.deep_cache import DeepCacheConfig
from .accel.pab import PABConfig
from .errors import InvalidArgument, LoadError, OutputExists, RenderInterrupted, VidiffError
from .job import Renderer, RenderJob, RenderResult, decode_file, render
from .pipeline import Timings, VideoOutput, VideoPipeline
from .request import GenerationRequest
from .sources import Source

__all__ = [
    "DeepCacheConfig",
    "GenerationRequest",
    "InvalidArgument",
    "LoadError",
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
