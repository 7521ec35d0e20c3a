"""Prompt travel: a prompt that changes over the frames of one video.

Keyframes `{frame: prompt}` (`"0: a cat sitting | 32: a cat running"`, or a JSON file) are encoded once each;
every frame gets the embeddings interpolated between the keyframes around it (linear, or `slerp` per
token vector), before the first keyframe the first prompt's and after the last the last's. The UNet batch is
frames, so per-frame conditioning costs nothing extra.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InvalidArgument

if TYPE_CHECKING:
    from torch import Tensor


def parse_travel(spec: str, argument: str = "--prompt-travel") -> dict[int, str]:
    """`"0: a cat | 32: a dog"` or a JSON file holding `{"0": "a cat", "32": "a dog"}`; a frame keyed twice is
    refused."""
    path = Path(spec)
    if spec.endswith(".json") and path.is_file():
        try:
            pairs = json.loads(path.read_text(), object_pairs_hook=lambda items: items)
            pairs = [(int(k), str(v)) for k, v in pairs]
        except (OSError, ValueError, TypeError) as e:
            raise InvalidArgument(argument, f"{path.name} is not a JSON object of frame: prompt ({e})") from e
    else:
        pairs = []
        for part in spec.split("|"):
            match = re.fullmatch(r"\s*(\d+)\s*:\s*(.*?)\s*", part)
            if match is None or not match.group(2):
                raise InvalidArgument(
                    argument, f"cannot read {part.strip()!r}: write FRAME: PROMPT | FRAME: PROMPT ..."
                )
            pairs.append((int(match.group(1)), match.group(2)))
    keyframes: dict[int, str] = {}
    for frame, prompt in pairs:
        if frame in keyframes:
            raise InvalidArgument(argument, f"frame {frame} is keyed twice ({keyframes[frame]!r} and {prompt!r})")
        keyframes[frame] = prompt
    check_keys(keyframes, argument)
    return keyframes


def check_keys(keyframes, argument: str = "--prompt-travel") -> None:
    """Keyframes map frame numbers >= 0 to prompts (as the Python API and JSON files give them too)."""
    if not isinstance(keyframes, dict) or not keyframes:
        raise InvalidArgument(argument, "names no keyframe: give {frame: prompt, ...}")
    for frame, prompt in keyframes.items():
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0 or not isinstance(prompt, str):
            raise InvalidArgument(argument, f"{frame!r}: {prompt!r} is not frame (>= 0): prompt")


def check_travel(keyframes: dict[int, str], frames: int, argument: str = "--prompt-travel") -> None:
    check_keys(keyframes, argument)
    last = max(keyframes)
    if last >= frames:
        raise InvalidArgument(argument, f"keyframe {last} is beyond the last frame ({frames - 1})")


def _slerp(a: Tensor, b: Tensor, w: float) -> Tensor:
    """Spherical interpolation per vector along the last dimension (falls back to linear when parallel)."""
    import torch

    na, nb = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((na * nb).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))  # (..., 1)
    so = torch.sin(omega)
    out = (torch.sin((1 - w) * omega) / so) * a + (torch.sin(w * omega) / so) * b
    return torch.where(so.abs() < 1e-6, (1 - w) * a + w * b, out)


def interpolate(keyed: dict[int, Tensor], frames: int, how: str = "linear") -> Tensor:
    """Per-frame values (B, F, ...) from keyframe values (B, ...)."""
    import torch

    keys = sorted(keyed)
    out = []
    for f in range(frames):
        lo = max([k for k in keys if k <= f], default=keys[0])
        hi = min([k for k in keys if k >= f], default=keys[-1])
        w = 0.0 if hi == lo else (f - lo) / (hi - lo)
        a, b = keyed[lo], keyed[hi]
        out.append(a if w == 0 else b if w == 1 else (_slerp(a, b, w) if how == "slerp" else (1 - w) * a + w * b))
    return torch.stack(out, dim=1)  # (B, F, ...)
