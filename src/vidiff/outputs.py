"""Where outputs go: the kind a name asks for, and whether it can be written, checked before any work starts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from . import checks
from .errors import InvalidArgument, OutputExists
from .names import LATENT_SUFFIXES

VIDEO_SUFFIXES = (".gif", ".mp4", ".webp")
FRAMES = "/"  # the kind of a folder of numbered PNG frames
FRAME_GLOB = "frame_*.png"
MAX_FPS = 1000.0  # GIF frame durations are whole milliseconds
DERIVED_NAME = 41  # bytes a name grows by in its temporaries and checkpoint (".NAME.resume.safetensors.XXXXXXXX...")


def output_kind(path: str, argument: str = "--output") -> str:
    """'.gif', '.mp4', '.webp', a latents suffix, or FRAMES for a folder (a name ending in / or an existing folder)."""
    checks.text(argument, path, empty=False)
    if path.endswith(("/", os.sep)) or Path(path).is_dir():
        return FRAMES
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES + LATENT_SUFFIXES:
        raise InvalidArgument(
            argument, f"cannot tell the format of {path!r}: end it in .gif, .mp4, .webp, .pt, .safetensors or /"
        )
    return suffix


def writable_folder(argument: str, folder: Path) -> None:
    """`folder` exists, is a folder, and a file can be created in it (tried: permissions, read-only mounts and
    special file systems all answer)."""
    if not folder.is_dir():
        raise InvalidArgument(argument, f"folder {folder} does not exist")
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".vidiff-probe-"):
            pass
    except OSError as e:
        raise InvalidArgument(argument, f"folder {folder} is not writable ({e.strerror or e})") from None


def check_target(path: Path, overwrite: bool, argument: str = "--output") -> None:
    """Refuse an existing file without `overwrite`, an existing folder in its place, and an unwritable folder."""
    if path.is_dir():
        raise InvalidArgument(argument, f"{path} is a folder")
    if path.exists() and not overwrite:
        raise OutputExists(argument, f"{path} exists; pass --overwrite to replace it")
    writable_folder(argument, path.parent)


def check_name_length(path: str, argument: str = "--output") -> None:
    """Every part of `path` short enough for the file system, with room for the names derived from it."""
    folder = Path(path).parent if Path(path).parent.is_dir() else Path(".")
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    for part in Path(path).parts:
        if len(os.fsencode(part)) + DERIVED_NAME > limit:
            raise InvalidArgument(argument, f"the name {part[:40]!r}... is {len(os.fsencode(part))} bytes; at most "
                                  f"{limit - DERIVED_NAME} fit ({limit} less what temporaries add)")  # fmt: skip


def check_output(path: str, overwrite: bool, argument: str = "--output") -> str:
    """Fail before any work if `path` cannot be written; returns its kind. An existing folder named without a
    final / is taken for frames only with `overwrite` (a name ending in / asks for a frames folder)."""
    check_name_length(checks.text(argument, path, empty=False), argument)
    kind = output_kind(path, argument)
    target = Path(path)
    if kind == FRAMES and target.is_dir() and not path.endswith(("/", os.sep)) and not overwrite:
        raise OutputExists(argument, f"{path} is an existing folder; end it in / to write frames into it, or pass "
                           "--overwrite")  # fmt: skip
    if kind != FRAMES:
        check_target(target, overwrite, argument)
    elif target.exists() and not target.is_dir():
        raise InvalidArgument(argument, f"{path} is a file, not a folder for frames")
    elif target.is_dir():
        if not overwrite and any(target.glob(FRAME_GLOB)):
            raise OutputExists(argument, f"{path} already holds frames; pass --overwrite to replace them")
        writable_folder(argument, target)
    else:
        writable_folder(argument, target.parent)
    return kind


def check_fps(fps: float) -> None:
    checks.number("--fps", fps, 0, MAX_FPS, above=True)
