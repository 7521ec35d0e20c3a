"""The one atomic writer: write under a temporary name beside the target, fsync, rename into place.

Every output goes through here: videos, frame folders, latents, resume checkpoints, trained weights. An
interruption or an error leaves the previous file (or nothing) behind, never a partial one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .outputs import check_target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: Path | str, path: Path | str) -> None:
    """fsync a finished temporary file, give it the permissions a normally created one would have, rename it."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: Path | str, overwrite: bool = True, argument: str = "--output") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any exception it is removed."""
    path = Path(path)
    check_target(path, overwrite, argument)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        check_target(path, overwrite, argument)  # the target may have appeared meanwhile
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: Path | str) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success each file in it is published into `path` (created if
    needed, other files kept), so every file appears whole; on any exception nothing is published."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        path.mkdir(exist_ok=True)
        for file in sorted(tmp.rglob("*")):
            if file.is_file():
                target = path / file.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                publish(file, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
