"""The `--image-seeds` grammar (dgenerate's), for video.

    "latents: f.pt"  or  "latents= f.pt"      continue from noisy latents (cooperative denoising)
    "src"                                      img2img / video-to-video source
    "src;latents=f.pt"                         the source, continuing from noisy latents
    "src;mask=m.png;latents=f.pt"              inpainting: the mask's white is repainted
    "ctrl"  or  "ctrl_a, ctrl_b"               with --control-nets: the control source(s), one per ControlNet
    "src;control=ctrl_a, ctrl_b"               video-to-video (or inpainting with mask=) steered by them
    "adapter: ref.png"  or  "src;adapter=ref.png"    the IP-Adapter's image (with --ip-adapters)
    "adapter: 0=a.png, 15=b.png"               keyframed IP-Adapter images, interpolated over the frames

`src` is an image (used for every frame), a video (mp4/gif/webp/...), a folder of frames, or a latents
file, which the VAE decodes first. A mask is an image (every frame) or a video. A control source is an
image (every frame), a video or a folder of frames.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ARG = "--image-seeds"


@dataclass(frozen=True)
class ImageSeed:
    image: Path | None = None
    mask: Path | None = None
    latents: Path | None = None
    control: tuple[Path, ...] = ()  # one control source per ControlNet, in order
    adapter: dict[int, Path] | None = None  # the IP-Adapter's image(s) by keyframe ({0: path} for one)


def parse_image_seed(spec: str, control_nets: int = 0) -> ImageSeed:
    """Parse and check one spec (`control_nets`: how many ControlNets the job names); one-line errors for a
    malformed spec, a missing file, or control sources that do not match the ControlNets."""
    from .errors import InvalidArgument

    parts = [p.strip() for p in spec.split(";")]
    if not all(parts):
        raise InvalidArgument(ARG, f"malformed spec {spec!r}: empty part")
    found: dict[str, str] = {}
    for i, part in enumerate(parts):
        keyed = re.fullmatch(r"(latents|mask|control|adapter)\s*[:=]\s*(.*)", part)
        if keyed:
            key, value = keyed.group(1), keyed.group(2).strip()
        elif i == 0:
            key, value = "image", part
        else:
            raise InvalidArgument(
                ARG, f"malformed spec {spec!r}: {part!r} is not mask=, latents=, control= or adapter="
            )
        if not value:
            raise InvalidArgument(ARG, f"malformed spec {spec!r}: {key} names no file")
        if key in found:
            raise InvalidArgument(ARG, f"malformed spec {spec!r}: {key} given twice")
        found[key] = value
    if control_nets and "control" not in found and "image" in found:  # dgenerate: a bare source steers
        if "mask" in found:
            raise InvalidArgument(ARG, f"{spec!r}: inpainting with ControlNets names its control images: "
                                  "SRC;mask=MASK;control=CTRL")  # fmt: skip
        found["control"] = found.pop("image")
    if "mask" in found and "image" not in found:
        raise InvalidArgument(ARG, f"malformed spec {spec!r}: a mask needs an image or video before it")
    control = tuple(Path(p.strip()).expanduser() for p in found.pop("control", "").split(",") if p.strip())
    if control and not control_nets:
        raise InvalidArgument(ARG, f"{spec!r} names control images but no --control-nets are given")
    if control_nets and len(control) != control_nets:
        raise InvalidArgument(ARG, f"{len(control)} control sources for {control_nets} ControlNets (one per "
                              "--control-nets entry, in order)")  # fmt: skip
    adapter = _keyframes(spec, found.pop("adapter")) if "adapter" in found else None
    paths = {k: Path(v).expanduser() for k, v in found.items()}
    for path in (*paths.values(), *control, *(adapter or {}).values()):
        if not path.exists():
            raise InvalidArgument(ARG, f"no such file: {path}")
    return ImageSeed(**paths, control=control, adapter=adapter)


def _keyframes(spec: str, value: str) -> dict[int, Path]:
    """`ref.png` -> {0: ref.png}; `0=a.png, 15=b.png` -> {0: a.png, 15: b.png}."""
    from .errors import InvalidArgument

    items = [v.strip() for v in value.split(",")]
    if len(items) == 1 and not re.match(r"\d+\s*=", items[0]):
        return {0: Path(items[0]).expanduser()}
    keyed: dict[int, Path] = {}
    for item in items:
        frame, sep, path = (s.strip() for s in item.partition("="))
        if not sep or not frame.isdigit() or not path or int(frame) in keyed:
            raise InvalidArgument(ARG, f"{spec!r}: keyframed adapter images are FRAME=IMAGE with distinct frames, "
                                  "like adapter: 0=a.png, 15=b.png")  # fmt: skip
        keyed[int(frame)] = Path(path).expanduser()
    return keyed
