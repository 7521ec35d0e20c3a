"""vidiff: turn image diffusion models into video generators, AnimateDiff-style."""

from .errors import InvalidArgument, LoadError, OutputExists, VidiffError
from .pipeline import Timings, VideoOutput, VideoPipeline
from .request import GenerationRequest

__all__ = [
    "GenerationRequest",
    "InvalidArgument",
    "LoadError",
    "OutputExists",
    "Timings",
    "VideoOutput",
    "VideoPipeline",
    "VidiffError",
]
__version__ = "0.1.0"
