"""Frames from images, videos (mp4/gif/webp/...) and folders of frames, with one resize rule.

The rule: scale the frame so it covers the target size (keeping its aspect ratio), then crop the centre.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from .errors import InvalidArgument

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".gif", ".webp", ".mov", ".mkv", ".avi")


def fit(image: Image.Image, width: int, height: int) -> np.ndarray:
    """Cover (width, height), then centre-crop: (height, width, 3) uint8."""
    image = image.convert("RGB")
    w, h = image.size
    scale = max(width / w, height / h)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    image = image.resize(size, Image.BICUBIC) if size != (w, h) else image
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))


def read_frames(path: str | Path, width: int, height: int, argument: str) -> np.ndarray:
    """All frames of an image (one frame), a video, or a folder of images (sorted by name): (N, H, W, 3)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InvalidArgument(argument, f"{path} holds no image frames")
        return np.stack([fit(Image.open(p), width, height) for p in files])
    if not path.is_file():
        raise InvalidArgument(argument, f"no such file: {path}")
    try:
        if path.suffix.lower() in (*IMAGE_SUFFIXES, ".gif"):  # stills and animations: every frame via Pillow
            with Image.open(path) as image:
                return np.stack([fit(frame, width, height) for frame in ImageSequence.Iterator(image)])
        import imageio.v3 as iio

        return np.stack([fit(Image.fromarray(f[..., :3]), width, height) for f in iio.imiter(path)])
    except Exception as e:  # every reader's error: unreadable is unreadable
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]  # ffmpeg's first line, not its log
        raise InvalidArgument(argument, f"cannot read {path} as an image or video ({reason})") from e


def take_frames(frames: np.ndarray, count: int, path: str | Path, argument: str, wanted: str = "") -> np.ndarray:
    """A still image is repeated; a video gives its first `count` frames and must have that many (`wanted`:
    what asks for them, in the error; default --frames)."""
    if len(frames) == 1:
        return np.repeat(frames, count, axis=0)
    check_count(len(frames), count, path, argument, wanted)
    return frames[:count]


def check_count(have: int, count: int, path: str | Path, argument: str, wanted: str = "") -> None:
    """Refuse a video or folder of fewer than `count` frames (a still image is fine: it is repeated)."""
    if 1 < have < count or (have == 0 and count):
        raise InvalidArgument(argument, f"{Path(path).name} has {have} frames; {wanted or '--frames is'} {count}")


def frame_count(path: str | Path, argument: str) -> int:
    """How many frames an image (1), animation, video or folder of frames holds, without resizing them."""
    path = Path(path)
    if path.is_dir():
        return sum(1 for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    try:
        if path.suffix.lower() in (*IMAGE_SUFFIXES, ".gif"):
            with Image.open(path) as image:
                return getattr(image, "n_frames", 1)
        import imageio.v3 as iio

        return sum(1 for _ in iio.imiter(path))
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InvalidArgument(argument, f"cannot read {path} as an image or video ({reason})") from e
