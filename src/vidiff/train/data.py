"""Training data: the synthetic moving-shapes clips, or a folder of the user's captioned videos.

Both give batches as (B, F, 3, H, W) float tensors in [-1, 1] with one caption per clip, drawn from a
numpy Generator the trainer seeds per step, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..demo.data import SEEN, render_clip
from ..errors import InvalidArgument
from ..media import VIDEO_SUFFIXES, read_frames


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def pick_frames(
    videos: torch.Tensor, captions: list[str], rng: np.random.Generator, keyframe_share: float
) -> tuple[torch.Tensor, list[str]]:
    """One frame per clip: the first one (the keyframe the clip starts from) with probability `keyframe_share`,
    any frame otherwise. Where a clip starts depends on where it goes, so keyframes make the caption's motion
    words matter to an image model trained on them, and its features carry them to the motion modules."""
    b, f = videos.shape[:2]  # videos: (B, F, 3, H, W)
    if keyframe_share == 0:
        pick = rng.integers(f, size=b)
    else:
        pick = np.where(rng.random(b) < keyframe_share, 0, rng.integers(f, size=b))
    return videos[torch.arange(b), torch.from_numpy(pick)], captions  # (B, 3, H, W)


class DemoClips:
    """Infinite synthetic clips of the seen colour x shape x direction combinations (`crossing`: each crosses
    the frame edge to edge, `--data demo-crossing`)."""

    def __init__(self, frames: int = 16, size: int = 64, crossing: bool = False) -> None:
        if size != 64:
            raise InvalidArgument("--size", "the demo data is 64x64 pixels")
        self.frames, self.crossing = frames, crossing

    def clips(self, rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, list[str]]:
        picks = [SEEN[i] for i in rng.integers(len(SEEN), size=batch)]
        clips = [render_clip(*c, rng, self.frames, crossing=self.crossing) for c in picks]
        return torch.stack([to_tensor(c.frames) for c in clips]), [c.caption for c in clips]  # (B, F, 3, H, W)

    def images(
        self, rng: np.random.Generator, batch: int, keyframe_share: float = 0.0
    ) -> tuple[torch.Tensor, list[str]]:
        return pick_frames(*self.clips(rng, batch), rng, keyframe_share)


class VideoFolder:
    """Captioned videos: `captions.jsonl` lines {"file": ..., "caption": ...}, or a side-car `name.txt`."""

    def __init__(self, root: str | Path, frames: int, size: int) -> None:
        root = Path(root)
        if not root.is_dir():
            raise InvalidArgument("--data", f"no such folder: {root}")
        captions: dict[str, str] = {}
        index = root / "captions.jsonl"
        if index.is_file():
            for line in index.read_text().splitlines():
                if line.strip():
                    item = json.loads(line)
                    captions[item["file"]] = item["caption"]
        self.videos: list[tuple[np.ndarray, str]] = []
        for path in sorted(root.iterdir()):
            is_video = path.suffix.lower() in VIDEO_SUFFIXES or (path.is_dir() and not path.name.startswith("."))
            if not is_video:
                continue
            caption = captions.get(path.name)
            if caption is None and path.with_suffix(".txt").is_file():
                caption = path.with_suffix(".txt").read_text().strip()
            if caption is None:
                raise InvalidArgument("--data", f"{path.name} has no caption (captions.jsonl or {path.stem}.txt)")
            video = read_frames(path, size, size, "--data")
            if len(video) < frames:
                raise InvalidArgument("--data", f"{path.name} has {len(video)} frames, fewer than --frames {frames}")
            self.videos.append((video, caption))
        if not self.videos:
            raise InvalidArgument("--data", f"{root} holds no videos (mp4/gif/webp or frame folders)")
        self.frames = frames

    def clips(self, rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, list[str]]:
        out, captions = [], []
        for i in rng.integers(len(self.videos), size=batch):
            video, caption = self.videos[i]
            start = rng.integers(len(video) - self.frames + 1)
            out.append(to_tensor(video[start : start + self.frames]))
            captions.append(caption)
        return torch.stack(out), captions  # (B, F, 3, H, W)

    def images(
        self, rng: np.random.Generator, batch: int, keyframe_share: float = 0.0
    ) -> tuple[torch.Tensor, list[str]]:
        return pick_frames(*self.clips(rng, batch), rng, keyframe_share)


def open_data(spec: str, frames: int, size: int) -> DemoClips | VideoFolder:
    if spec in DEMO_DATA:
        return DemoClips(frames, size, crossing=spec == "demo-crossing")
    return VideoFolder(spec, frames, size)


DEMO_DATA = ("demo", "demo-crossing")
