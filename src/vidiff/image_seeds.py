"""The `--image-seeds` grammar (dgenerate's), for video.

    "latents: f.pt"  or  "latents= f.pt"      continue from noisy latents (cooperative denoising)
    "src"                                      img2img / video-to-video source
    "src;latents=f.pt"                         the source, continuing from noisy latents
    "src;mask=m.png;latents=f.pt"              inpainting: the mask's white is repainted

`src` is an image (used for every frame), a video (mp4/gif/webp/...), a folder of frames, or a latents
file, which the VAE decodes first. A mask is an image (every frame) or a video.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ARG = "--image-seeds"


@dataclass(frozen=True)
class ImageSeed:
    image: Path | None = None
    mask: Path | None = None
    latents: Path | None = None


def parse_image_seed(spec: str) -> ImageSeed:
    """Parse and check one spec; one-line errors for a malformed spec or a missing file."""
    from .errors import InvalidArgument

    parts = [p.strip() for p in spec.split(";")]
    if not all(parts):
        raise InvalidArgument(ARG, f"malformed spec {spec!r}: empty part")
    found: dict[str, Path] = {}
    for i, part in enumerate(parts):
        keyed = re.fullmatch(r"(latents|mask)\s*[:=]\s*(.*)", part)
        if keyed:
            key, value = keyed.group(1), keyed.group(2).strip()
        elif i == 0:
            key, value = "image", part
        else:
            raise InvalidArgument(ARG, f"malformed spec {spec!r}: {part!r} is not mask=... or latents=...")
        if not value:
            raise InvalidArgument(ARG, f"malformed spec {spec!r}: {key} names no file")
        if key in found:
            raise InvalidArgument(ARG, f"malformed spec {spec!r}: {key} given twice")
        found[key] = Path(value).expanduser()
    if "mask" in found and "image" not in found:
        raise InvalidArgument(ARG, f"malformed spec {spec!r}: a mask needs an image or video before it")
    for path in found.values():
        if not path.exists():
            raise InvalidArgument(ARG, f"no such file: {path}")
    return ImageSeed(**found)
