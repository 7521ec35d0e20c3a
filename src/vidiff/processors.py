"""Control-image preprocessing that needs no downloaded weights (`--control-image-processors`).

`canny` is OpenCV's Canny on the RGB image, as the ControlNet annotator runs it (thresholds 100 and 200 by
default), as a white-on-black RGB edge map; `invert` turns black lines on white into what scribble models
take; `none` leaves the images as given.
"""

from __future__ import annotations

import numpy as np

from .control import PROCESSORS, Processor
from .errors import InvalidArgument


def process(frames: np.ndarray, processor: Processor) -> np.ndarray:
    """Frames (N, H, W, 3) uint8 -> the control images (N, H, W, 3) uint8."""
    if processor.name == "invert":
        return 255 - frames
    if processor.name != "canny":
        return frames
    try:
        import cv2
    except ImportError:
        raise InvalidArgument(PROCESSORS, "canny needs OpenCV: pip install 'vidiff[control]'") from None
    lower, upper = processor.options["lower"], processor.options["upper"]
    edges = [cv2.Canny(np.ascontiguousarray(f), lower, upper) for f in frames]  # (H, W) each, 0 or 255
    return np.repeat(np.stack(edges)[..., None], 3, axis=-1)  # (N, H, W, 3)
