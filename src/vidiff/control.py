"""Steering options in dgenerate's URI grammar: `--control-nets` and `--control-image-processors`. Torch-free.

    --control-nets "PATH;scale=1.0;start=0.0;end=1.0"     a ControlNet on every frame
    --control-nets "PATH;frames=0,8,15"                   SparseCtrl: control images on these frames only
    --control-image-processors "canny;lower=100;upper=200" "none"    one per ControlNet, in order

Several ControlNets: repeat the flag or separate the URIs by commas (a `frames=` list keeps its commas).
`start`/`end` are the fractions of the schedule a ControlNet acts on, as diffusers' `control_guidance_start/end`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import checks
from .errors import InvalidArgument

NETS = "--control-nets"
PROCESSORS = "--control-image-processors"
CONTROL_KEYS = ("scale", "start", "end", "frames")
CANNY_DEFAULTS = {"lower": 100, "upper": 200}  # the ControlNet annotator's thresholds
NEED_WEIGHTS = ("openpose", "dwpose", "depth", "midas", "zoe", "hed", "pidi", "lineart", "mlsd", "normal", "seg")


@dataclass(frozen=True)
class ControlNetUri:
    """One ControlNet: its file or folder, conditioning scale, the schedule fractions it acts on and, for
    SparseCtrl, the frames its control images go to."""

    path: str
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    frames: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, spec: str) -> ControlNetUri:
        parts = [p.strip() for p in checks.text(NETS, spec, empty=False).split(";")]
        if not parts[0] or "=" in parts[0]:
            raise InvalidArgument(NETS, f"{spec!r} must start with a ControlNet file or folder")
        values: dict = {}
        for part in parts[1:]:
            key, sep, value = (s.strip() for s in part.partition("="))
            if key not in CONTROL_KEYS or not sep:
                raise InvalidArgument(NETS, f"{spec!r}: unknown key {key!r} (keys: {', '.join(CONTROL_KEYS)})")
            if key in values:
                raise InvalidArgument(NETS, f"{spec!r}: {key} given twice")
            values[key] = _frames(spec, value) if key == "frames" else _number(spec, key, value)
        uri = cls(parts[0], **values)
        checks.number(NETS, uri.scale, 0)
        checks.number(NETS, uri.start, 0, 1)
        checks.number(NETS, uri.end, 0, 1)
        if uri.start >= uri.end:
            raise InvalidArgument(NETS, f"{spec!r}: start {uri.start} must be below end {uri.end}")
        return uri


def _number(spec: str, key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise InvalidArgument(NETS, f"{spec!r}: {key}={value!r} is not a number") from None


def _frames(spec: str, value: str) -> tuple[int, ...]:
    items = [v.strip() for v in value.split(",")]
    if not items or not all(re.fullmatch(r"\d+", v) for v in items):
        raise InvalidArgument(NETS, f"{spec!r}: frames={value!r} must be frame numbers like 0,8,15")
    frames = tuple(int(v) for v in items)
    if len(set(frames)) != len(frames):
        raise InvalidArgument(NETS, f"{spec!r}: frames={value!r} names a frame twice")
    return frames


def split_uris(values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The flag's values as one URI each: comma-separated URIs split, a `frames=` list's numbers kept."""
    uris: list[str] = []
    for value in values:
        for piece in value.split(","):
            if uris and re.fullmatch(r"\s*\d+\s*", piece) and "frames=" in uris[-1].replace(" ", ""):
                uris[-1] += "," + piece.strip()
            else:
                uris.append(piece.strip())
    return tuple(uris)


@dataclass(frozen=True)
class Processor:
    """A control-image preprocessor that needs no downloaded weights: `canny` (OpenCV's, the ControlNet
    annotator's thresholds 100/200), `invert` (white lines on black, as scribble models take), `none`."""

    name: str
    options: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Processor:
        name, *rest = [p.strip() for p in checks.text(PROCESSORS, spec, empty=False).split(";")]
        if name in NEED_WEIGHTS:
            raise InvalidArgument(PROCESSORS, f"{name} needs its detector's weights, which vidiff does not ship; "
                                  f"give control images made by it (a pose or depth video) instead")  # fmt: skip
        allowed = {"canny": CANNY_DEFAULTS, "invert": {}, "none": {}}
        if name not in allowed:
            raise InvalidArgument(PROCESSORS, f"unknown processor {name!r} (choose from {', '.join(allowed)})")
        options = dict(allowed[name])
        for part in rest:
            key, _, value = (s.strip() for s in part.partition("="))
            if key not in allowed[name] or not re.fullmatch(r"\d+", value):
                raise InvalidArgument(PROCESSORS, f"{spec!r}: {part!r} is not one of {name}'s integer options "
                                      f"({', '.join(allowed[name]) or 'none'})")  # fmt: skip
            options[key] = int(value)
        if name == "canny" and not 0 <= options["lower"] <= options["upper"]:
            raise InvalidArgument(PROCESSORS, f"{spec!r}: canny needs 0 <= lower <= upper")
        return cls(name, options)


@dataclass(frozen=True)
class ControlOptions:
    """The ControlNet group of a request: the URIs (`--control-nets`) and one processor per ControlNet."""

    nets: tuple[str, ...] = ()
    processors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("nets", "processors"):  # lists from JSON or callers; a single string is one item
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, split_uris(value) if name == "nets" else tuple(value))

    @property
    def on(self) -> bool:
        return bool(self.nets)

    def uris(self) -> tuple[ControlNetUri, ...]:
        return tuple(ControlNetUri.parse(s) for s in self.nets)

    def processor_list(self) -> tuple[Processor, ...]:
        """One per ControlNet (`none` for those not named)."""
        given = tuple(Processor.parse(s) for s in self.processors)
        return given + (Processor("none"),) * (len(self.nets) - len(given))

    def validate(self, frames: int | None) -> None:
        """The URIs, the processors (no more than ControlNets) and, once the frame count is known, SparseCtrl
        frame indices within the video."""
        for name in ("nets", "processors"):
            if not isinstance(getattr(self, name), tuple) or not all(isinstance(s, str) for s in getattr(self, name)):
                raise InvalidArgument(NETS if name == "nets" else PROCESSORS, "must be a list of strings")
        uris = self.uris()
        if len(self.processors) > len(self.nets):
            raise InvalidArgument(PROCESSORS, f"{len(self.processors)} processors for {len(self.nets)} ControlNets "
                                  "(one per ControlNet, in order; 'none' skips one)")  # fmt: skip
        self.processor_list()
        for uri in uris:
            outside = [f for f in uri.frames or () if frames is not None and f >= frames]
            if outside:
                raise InvalidArgument(NETS, f"{uri.path}: frames {outside} are outside a {frames}-frame video "
                                      f"(frames count from 0)")  # fmt: skip


IP = "--ip-adapters"


@dataclass(frozen=True)
class IPAdapterUri:
    """An IP-Adapter file and its scale: one number, or keyframes {frame: scale} interpolated over the frames
    (`scale=0:0.2,15:0.8`)."""

    path: str
    scale: float | dict[int, float] = 1.0

    @classmethod
    def parse(cls, spec: str) -> IPAdapterUri:
        parts = [p.strip() for p in checks.text(IP, spec, empty=False).split(";")]
        if not parts[0] or "=" in parts[0]:
            raise InvalidArgument(IP, f"{spec!r} must start with an IP-Adapter file")
        scale: float | dict[int, float] = 1.0
        for part in parts[1:]:
            key, sep, value = (s.strip() for s in part.partition("="))
            if key != "scale" or not sep:
                raise InvalidArgument(IP, f"{spec!r}: unknown key {key!r} (keys: scale)")
            scale = _keyed_scale(spec, value) if ":" in value else _ip_number(spec, value)
        return cls(parts[0], scale)

    def scales(self) -> dict[int, float]:
        """The scale keyframes ({0: s} for one number)."""
        return dict(self.scale) if isinstance(self.scale, dict) else {0: self.scale}


def _ip_number(spec: str, value: str) -> float:
    try:
        return checks.number(IP, float(value), 0)
    except ValueError:
        raise InvalidArgument(IP, f"{spec!r}: scale={value!r} is not a number") from None


def _keyed_scale(spec: str, value: str) -> dict[int, float]:
    keyed = {}
    for item in value.split(","):
        frame, _, number = (s.strip() for s in item.partition(":"))
        if not re.fullmatch(r"\d+", frame) or int(frame) in keyed:
            raise InvalidArgument(
                IP, f"{spec!r}: scale keyframes are FRAME:SCALE with distinct frames, like 0:0.2,15:0.8"
            )
        keyed[int(frame)] = _ip_number(spec, number)
    return keyed


@dataclass(frozen=True)
class IPAdapterOptions:
    """The IP-Adapter group of a request: the adapter URI (`--ip-adapters`) and the CLIP vision folder that
    embeds its images (`--image-encoder`; default: an `image_encoder/` folder beside the adapter)."""

    adapter: str | None = None
    image_encoder: str | None = None

    @property
    def on(self) -> bool:
        return self.adapter is not None

    def uri(self) -> IPAdapterUri | None:
        return None if self.adapter is None else IPAdapterUri.parse(self.adapter)

    def encoder_path(self) -> str | None:
        """The image encoder's folder: given, or `image_encoder/` beside the adapter file."""
        if self.adapter is None:
            return None
        return self.image_encoder or str(Path(self.uri().path).parent / "image_encoder")

    def validate(self, frames: int | None) -> None:
        """The URI, an image encoder given only with an adapter, scale keyframes within the video."""
        if self.adapter is None:
            if self.image_encoder is not None:
                raise InvalidArgument("--image-encoder", "embeds IP-Adapter images; give --ip-adapters too")
            return
        uri = self.uri()
        outside = [f for f in uri.scales() if frames is not None and f >= frames]
        if outside:
            raise InvalidArgument(IP, f"scale keyframes {outside} are outside a {frames}-frame video")
