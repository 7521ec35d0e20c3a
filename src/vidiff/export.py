"""Writers for GIF, MP4, WebP and numbered PNG frames: streamed, atomic, never overwriting by accident.

Frames arrive in decoded chunks of (n, H, W, 3) uint8. MP4 and PNG frames go to disk as they arrive; GIF
and WebP keep the compact uint8 frames until the end, because Pillow's animation encoders take them all at
once. Everything goes through `atomic`: written under a temporary name, renamed into place on success.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_file, atomic_folder
from .errors import InvalidArgument
from .outputs import FRAME_GLOB, FRAMES, check_fps, check_output, output_kind

PNG_PATTERN = "frame_{:05d}.png"


class _Sink:
    """Where one kind of output puts its frames: `add(frame)` each, `finish()` once, into the temporary `tmp`."""

    keeps_frames = False  # holds every frame until `finish` (what the memory preflight counts)

    def __init__(self, tmp: Path, fps: float) -> None:
        self.tmp, self.fps = tmp, fps

    def add(self, frame: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def close(self) -> None:
        """Release resources after a failure (the temporary is removed by the caller)."""


class _Animation(_Sink):
    """GIF / WebP through Pillow's animation encoder, which takes every frame at once."""

    options: dict = {}
    keeps_frames = True

    def __init__(self, tmp: Path, fps: float) -> None:
        super().__init__(tmp, fps)
        self.frames: list[Image.Image] = []

    def add(self, frame):
        self.frames.append(Image.fromarray(frame))

    def finish(self):
        duration = round(1000 / self.fps)  # milliseconds per frame
        self.frames[0].save(
            self.tmp, save_all=True, append_images=self.frames[1:], duration=duration, loop=0, **self.options
        )


class _Gif(_Animation):
    options = {"format": "GIF"}


class _Webp(_Animation):
    options = {"format": "WEBP", "quality": 90}


class _Mp4(_Sink):
    """H.264 through imageio's ffmpeg, frame by frame."""

    def __init__(self, tmp: Path, fps: float) -> None:
        import imageio.v2 as imageio

        super().__init__(tmp, fps)
        self.video = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=1)

    def add(self, frame):
        self.video.append_data(frame)

    def finish(self):
        self.video.close()

    def close(self):
        with contextlib.suppress(Exception):  # the partial file is removed either way
            self.video.close()


class _Png(_Sink):
    """Numbered PNG frames into a temporary folder, published into the target folder at the end."""

    def __init__(self, tmp: Path, fps: float) -> None:
        super().__init__(tmp, fps)
        self.count = 0

    def add(self, frame):
        Image.fromarray(frame).save(self.tmp / PNG_PATTERN.format(self.count))
        self.count += 1


WRITERS: dict[str, type[_Sink]] = {".gif": _Gif, ".mp4": _Mp4, ".webp": _Webp, FRAMES: _Png}


def keeps_every_frame(path: str) -> bool:
    """Whether the writer for `path` holds every decoded frame until the end (GIF, WebP)."""
    writer = WRITERS.get(output_kind(path))
    return writer is not None and writer.keeps_frames


class FrameWriter:
    """Append frame chunks, then `commit()` (atomic rename) or `abort()` (nothing left behind).

    Used as a context manager it commits on success and aborts on any exception.
    """

    def __init__(self, path: str, fps: float, overwrite: bool = False) -> None:
        check_fps(fps)
        kind = check_output(path, overwrite)
        if kind not in WRITERS:
            raise InvalidArgument("--output", f"{path} is a latents file, not a video")
        self.path, self.overwrite, self.count = Path(path), overwrite, 0
        self._atomic = atomic_folder(self.path) if kind == FRAMES else atomic_file(self.path, overwrite)
        tmp = self._atomic.__enter__()
        try:
            self._sink = WRITERS[kind](tmp, fps)
        except BaseException as e:
            self._atomic.__exit__(type(e), e, None)
            raise

    def append(self, frames: np.ndarray) -> None:
        """Add a chunk of frames (n, H, W, 3) uint8."""
        for frame in frames:
            self._sink.add(frame)
            self.count += 1

    def commit(self) -> Path:
        """Finish the file and move it into place; on any failure nothing is left behind."""
        try:
            if self.count == 0:
                raise InvalidArgument("--output", "no frames to write")
            self._sink.finish()
            if isinstance(self._sink, _Png):
                check_output(f"{self.path}/", self.overwrite)  # frames may have appeared meanwhile
            self._atomic.__exit__(None, None, None)
        except BaseException as e:
            self.abort(e)
            raise
        if isinstance(self._sink, _Png):  # an overwritten folder keeps no frames of the old, longer video
            for old in self.path.glob(FRAME_GLOB):
                number = re.fullmatch(r"frame_(\d+)\.png", old.name)
                if number and int(number.group(1)) >= self.count:
                    old.unlink(missing_ok=True)
        return self.path

    def abort(self, error: BaseException | None = None) -> None:
        """Remove everything written so far."""
        self._sink.close()
        error = error or RuntimeError("aborted")
        with contextlib.suppress(BaseException):
            self._atomic.__exit__(type(error), error, None)

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort(exc)
