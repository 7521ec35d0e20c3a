"""The accelerators' settings: plain dataclasses, checked before any model loads (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import checks
from ..errors import InvalidArgument
from ..names import DEFAULT_DEEP_CACHE_SKIP

KINDS = ("spatial", "temporal", "cross")  # PAB's attention kinds
TIMESTEPS = 1000  # the training schedule's length, which step ranges are measured in


@dataclass
class PABConfig:
    """How often each attention kind is recomputed (None: always) and over which timesteps it may be skipped."""

    spatial_skip: int | None = 2
    temporal_skip: int | None = 3
    cross_skip: int | None = 6
    spatial_range: tuple[int, int] = (100, 800)
    temporal_range: tuple[int, int] = (100, 800)
    cross_range: tuple[int, int] = (100, 800)

    def validate(self) -> None:
        for kind in KINDS:
            skip, (lo, hi) = self.skip(kind), self.range(kind)
            if skip is not None:
                checks.integer(f"--pab-{kind}", skip, 1)
            for end in (lo, hi):
                checks.integer("--pab-range", end, 0, TIMESTEPS)
            if lo >= hi:
                raise InvalidArgument("--pab-range", f"must be LO HI with LO < HI, got {lo} {hi}")

    def skip(self, kind: str) -> int | None:
        return getattr(self, f"{kind}_skip")

    def range(self, kind: str) -> tuple[int, int]:
        return getattr(self, f"{kind}_range")


@dataclass
class DeepCacheConfig:
    """Recompute the inner blocks every `skip`-th step (1: never reuse), over `timestep_range`."""

    skip: int = DEFAULT_DEEP_CACHE_SKIP
    timestep_range: tuple[int, int] = (0, 1000)

    def validate(self) -> None:
        checks.integer("--deep-cache", self.skip, 1)
        lo, hi = self.timestep_range
        if not (checks.integer("--deep-cache", lo, 0, TIMESTEPS) < checks.integer("--deep-cache", hi, 0, TIMESTEPS)):
            raise InvalidArgument("--deep-cache", f"timestep range must be LO < HI, got {lo} {hi}")


CacheConfig = PABConfig | DeepCacheConfig
CACHES = {"pab": PABConfig, "deep_cache": DeepCacheConfig}  # by name, in the order they are applied


def cache_configs(fast: tuple[str, ...], *given: CacheConfig | None) -> list[CacheConfig]:
    """The caches a run turns on: the `fast` names' defaults (a spec's `--fast`), each replaced by a config of its
    kind in `given`; in application order."""
    chosen = {name: CACHES[name]() for name in fast}
    chosen |= {name: c for c in given if c is not None for name, kind in CACHES.items() if isinstance(c, kind)}
    return [chosen[name] for name in CACHES if name in chosen]
