"""Writers for GIF, MP4, WebP and numbered PNG frames: streamed, atomic, never overwriting by accident.

Frames arrive in decoded chunks of (n, H, W, 3) uint8. MP4 and PNG frames go to disk as they arrive; GIF
and WebP keep the compact uint8 frames until the end, because Pillow's animation encoders take them all at
once. Everything is written to a temporary name beside the target and renamed into place on `commit()`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import InvalidArgument, OutputExists

VIDEO_KINDS = {".gif": "gif", ".mp4": "mp4", ".webp": "webp", ".pt": "latents", ".pth": "latents"}
VIDEO_KINDS[".safetensors"] = "latents"  # written by latents_io, checked here like any output
PNG_PATTERN = "frame_{:05d}.png"


def publish(tmp: Path | str, path: Path | str) -> None:
    """Give a finished temporary file the permissions a normally created one would have, then rename it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def output_kind(path: str) -> str:
    """'gif', 'mp4', 'webp', 'latents' (.pt/.pth/.safetensors) or 'png' for a folder (ending in '/' or existing)."""
    if path.endswith(("/", os.sep)) or Path(path).is_dir():
        return "png"
    kind = VIDEO_KINDS.get(Path(path).suffix.lower())
    if kind is None:
        raise InvalidArgument(
            "--output", f"cannot tell the format of {path!r}: end it in .gif, .mp4, .webp, .pt, .safetensors or /"
        )
    return kind


def check_output(path: str, overwrite: bool) -> str:
    """Fail before any work if `path` cannot be written; returns its kind."""
    kind = output_kind(path)
    target = Path(path)
    if kind == "png":
        if target.is_dir() and not overwrite and any(target.glob("frame_*.png")):
            raise OutputExists("--output", f"{path} already holds frames; pass --overwrite to replace them")
        if not target.exists() and not target.parent.is_dir():
            raise InvalidArgument("--output", f"folder {target.parent} does not exist")
        return kind
    if target.exists() and not overwrite:
        raise OutputExists("--output", f"{path} exists; pass --overwrite to replace it")
    if not target.parent.is_dir():
        raise InvalidArgument("--output", f"folder {target.parent} does not exist")
    return kind


class FrameWriter:
    """Append frame chunks, then `commit()` (atomic rename) or `abort()` (nothing left behind).

    Used as a context manager it commits on success and aborts on any exception.
    """

    def __init__(self, path: str, fps: float, overwrite: bool = False) -> None:
        if fps <= 0:
            raise InvalidArgument("--fps", f"must be > 0, got {fps}")
        self.kind = check_output(path, overwrite)
        if self.kind == "latents":
            raise InvalidArgument("--output", f"{path} is a latents file, not a video")
        self.path = Path(path)
        self.fps = fps
        self.overwrite = overwrite
        self.count = 0
        self._frames: list[Image.Image] = []
        self._video = None
        self._made_folder = self.kind == "png" and not self.path.exists()
        if self.kind == "png":
            self.path.mkdir(exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(dir=self.path, prefix=".vidiff-"))
        else:
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=self.path.suffix)
            os.close(fd)
            self._tmp = Path(name)

    def append(self, frames: np.ndarray) -> None:
        """Add a chunk of frames (n, H, W, 3) uint8."""
        for frame in frames:
            if self.kind == "png":
                Image.fromarray(frame).save(self._tmp / PNG_PATTERN.format(self.count))
            elif self.kind == "mp4":
                self._mp4().append_data(frame)
            else:
                self._frames.append(Image.fromarray(frame))
            self.count += 1

    def _mp4(self):
        if self._video is None:
            import imageio.v2 as imageio

            self._video = imageio.get_writer(
                self._tmp, format="FFMPEG", fps=self.fps, codec="libx264", quality=8, macro_block_size=1
            )
        return self._video

    def commit(self) -> Path:
        """Finish the file and move it into place; on any failure nothing is left behind."""
        try:
            return self._commit()
        except BaseException:
            self.abort()
            raise

    def _commit(self) -> Path:
        if self.count == 0:
            raise InvalidArgument("--output", "no frames to write")
        duration = round(1000 / self.fps)  # milliseconds per frame
        if self.kind == "mp4":
            self._video.close()
        elif self.kind == "gif":
            self._frames[0].save(
                self._tmp,
                format="GIF",
                save_all=True,
                append_images=self._frames[1:],
                duration=duration,
                loop=0,
            )
        elif self.kind == "webp":
            self._frames[0].save(
                self._tmp,
                format="WEBP",
                save_all=True,
                append_images=self._frames[1:],
                duration=duration,
                loop=0,
                quality=90,
            )
        self._frames = []
        if self.kind == "png":
            check_output(str(self.path), self.overwrite)  # frames may have appeared meanwhile
            for i in range(self.count):
                name = PNG_PATTERN.format(i)
                os.replace(self._tmp / name, self.path / name)
            self._tmp.rmdir()
        else:
            check_output(str(self.path), self.overwrite)
            publish(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Remove everything written so far."""
        if self._video is not None:
            with contextlib.suppress(Exception):  # the partial file is removed below either way
                self._video.close()
        if self.kind == "png":
            shutil.rmtree(self._tmp, ignore_errors=True)
            if self._made_folder:
                self.path.rmdir()
        else:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
