"""Whether a run denoises in context windows, and how wide: one torch-free decision that the request's
validation, the memory preflight and the pipeline all take from here."""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    """The context-window group of a request: windows of `length` frames, starting every `stride` frames
    (None: `length - overlap`), fused per frame; FreeNoise's initial noise. Left open (None), the length is 16
    (or the backbone's table, if shorter) and the windows come on by themselves past the table."""

    length: int | None = None  # frames per window
    overlap: int | None = None  # frames neighbouring windows share (None: 4, fewer for shorter windows)
    stride: int | None = None  # frames between window starts (diffusers' context_stride); None: from the overlap
    schedule: str = "uniform"  # uniform | looped | static
    fuse: str = "pyramid"  # flat | pyramid | gauss | delayed_reverse_sawtooth
    noise: str = "random"  # FreeNoise initial noise: random | shuffle | repeat
    scope: str = "backbone"  # windows over the whole backbone, or only its temporal attention ("motion")

    @property
    def asked(self) -> bool:
        """Windows were asked for (a length, or FreeNoise's noise), not only allowed."""
        return self.length is not None or self.noise != "random"

    def resolved(self, length: int = DEFAULT_LENGTH) -> ContextOptions:
        """With the length (`length` when it names none) and the overlap filled in."""
        length = self.length if self.length is not None else length
        overlap = self.overlap if self.overlap is not None else default_overlap(length)
        return replace(self, length=length, overlap=overlap)

    @property
    def motion_only(self) -> bool:
        """Only the temporal attention runs in windows (`--context-scope motion`); the rest sees every frame."""
        return self.scope == "motion"

    @property
    def step(self) -> int:
        return self.stride if self.stride is not None else self.length - self.overlap

    def validate(self) -> None:
        """Every single-field and cross-field rule of the windows (an open length taken as 16)."""
        if self.length is not None:
            checks.integer("--context-length", self.length, 1)
        if self.length is None or self.overlap is None:
            return self.resolved().validate()
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
    if not request.context.asked and (table is None or frames <= table):
        return None
    return request.context.resolved(min(DEFAULT_LENGTH, table or DEFAULT_LENGTH))
