"""Value checks shared by every option's validation: each raises InvalidArgument naming the flag at fault.

They check the type too, so the Python API (and JSON job files) get the same one-line errors as the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from .errors import InvalidArgument


def integer(flag: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """An int (not a bool) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(flag, f"must be a whole number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise InvalidArgument(flag, f"must be {_span(lo, hi)}, got {value}")
    return value


def number(flag: str, value, lo: float | None = None, hi: float | None = None, above: bool = False) -> float:
    """A finite int or float in [lo, hi] (`above`: strictly above lo)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(flag, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidArgument(flag, f"must be a finite number, got {value}")
    if (lo is not None and (value <= lo if above else value < lo)) or (hi is not None and value > hi):
        raise InvalidArgument(flag, f"must be {_span(lo, hi, above)}, got {value}")
    return value


def choice(flag: str, value, allowed: Iterable[str], what: str = "") -> str:
    """One of `allowed`; the error says what kind of name (`what`: "scheduler") it is not."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise InvalidArgument(flag, f"unknown {what + ' ' if what else ''}{value!r} (choose from {', '.join(allowed)})")
    return value


def text(flag: str, value, empty: bool = True) -> str:
    """A string (NUL characters refused: no file name or tokenizer takes them)."""
    if not isinstance(value, str):
        raise InvalidArgument(flag, f"must be text, got {value!r}")
    if "\x00" in value:
        raise InvalidArgument(flag, "contains a NUL character")
    if not empty and not value.strip():
        raise InvalidArgument(flag, "is empty")
    return value


def weighted_file(flag: str, spec) -> tuple[str, float | None]:
    """'FILE' or 'FILE:SCALE' (a LoRA): the file and its finite scale (None: not given). A Windows drive
    letter or a file whose name holds a colon is not a scale."""
    text(flag, spec, empty=False)
    path, sep, scale = spec.rpartition(":")
    if not sep or "/" in scale or "\\" in scale or Path(spec).is_file():
        return spec, None
    try:
        value = float(scale)
    except ValueError:
        raise InvalidArgument(flag, f"scale {scale!r} in {spec!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidArgument(flag, f"scale {scale!r} in {spec!r} is not a finite number")
    return path, value


def existing(flag: str, path) -> Path:
    """A file or folder that exists."""
    found = Path(text(flag, path, empty=False)).expanduser()
    if not found.exists():
        raise InvalidArgument(flag, f"no such file or folder: {path}")
    return found


def _span(lo, hi, above: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if above else '['}{lo}, {hi}]"
    if lo is not None:
        return f"{'>' if above else '>='} {lo}"
    return f"<= {hi}"
