"""Whether a run denoises in context windows, and how wide: one torch-free decision that the request's
validation, the memory preflight and the pipeline all take from here."""

from __future__ import annotations

from dataclasses import dataclass

from . import checks
from .errors import InvalidArgument
from .names import CONTEXT_FUSES, CONTEXT_SCHEDULES, CONTEXT_SCOPES, NOISE_TYPES

DEFAULT_LENGTH = 16  # what the released motion modules were trained on
DEFAULT_OVERLAP = 4  # ComfyUI-AnimateDiff-Evolved's


def default_overlap(length: int) -> int:
    """The overlap when none is given: 4 frames, fewer for windows too short to share 4."""
    return max(min(DEFAULT_OVERLAP, length - 1), 0)


@dataclass(frozen=True)
class ContextOptions:
    """Context windows: `length` frames each, starting every `stride` frames (None: `length - overlap`)."""

    length: int = DEFAULT_LENGTH
    stride: int | None = None  # frames between window starts; None: length - overlap
    overlap: int = DEFAULT_OVERLAP
    schedule: str = "uniform"
    fuse: str = "pyramid"
    noise: str = "random"
    scope: str = "backbone"

    @property
    def motion_only(self) -> bool:
        """Only the temporal attention runs in windows (`--context-scope motion`); the rest sees every frame."""
        return self.scope == "motion"

    @property
    def step(self) -> int:
        return self.stride if self.stride is not None else self.length - self.overlap

    def validate(self) -> None:
        """Every single-field and cross-field rule of the windows."""
        checks.integer("--context-length", self.length, 1)
        if self.stride is None and not 0 <= checks.integer("--context-overlap", self.overlap, 0) < self.length:
            raise InvalidArgument("--context-overlap", f"must be in [0, {self.length}) for windows of "
                                  f"{self.length} frames, got {self.overlap}")  # fmt: skip
        if self.stride is not None and not 1 <= checks.integer("--context-stride", self.stride, 1) <= self.length:
            raise InvalidArgument("--context-stride", f"must be in [1, {self.length}] for windows of {self.length} "
                                  f"frames, got {self.stride}")  # fmt: skip
        checks.choice("--context-schedule", self.schedule, CONTEXT_SCHEDULES)
        checks.choice("--context-fuse", self.fuse, CONTEXT_FUSES)
        checks.choice("--noise-type", self.noise, NOISE_TYPES)
        checks.choice("--context-scope", self.scope, CONTEXT_SCOPES)


def context_for(request, frames: int, table: int | None = None) -> ContextOptions | None:
    """The windows a request runs in over `frames` latent frames, for a backbone whose positional table holds
    `table` frames (None: not known yet, or unbounded): asked for (a length, or FreeNoise's noise), or on by
    themselves past the table; None when the backbone sees every frame at once."""
    asked = request.context_length is not None or request.noise_type != "random"
    if not asked and (table is None or frames <= table):
        return None
    return request.context(min(DEFAULT_LENGTH, table or DEFAULT_LENGTH))
