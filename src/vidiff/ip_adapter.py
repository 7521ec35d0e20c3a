"""IP-Adapter: a reference image steers the video through extra cross-attention keys and values (h94's files).

`ImagePrompt.load` reads an adapter file (`ip-adapter_sd15.safetensors` with `image_proj.` / `ip_adapter.`
keys, or the original `.bin` of two dicts) and its CLIP vision encoder (a diffusers / transformers folder;
its `preprocessor_config.json`, else the default preprocessing at the encoder's size, as diffusers does), and
installs diffusers' IP-Adapter attention processors on the UNet (`_load_ip_adapter_weights`); `remove` puts
the UNet's own processors back. The image projection is kept here rather than in the UNet, so the image
tokens can differ per frame (keyframed images, interpolated) and the scale can too: the UNet gets
`encoder_hidden_states=(text, [image tokens])`, one row per frame, as diffusers' UNetMotionModel builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0
from torch import Tensor, nn
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from .control import IP
from .errors import LoadError
from .loading import load_part
from .tensor_files import read_tensors


class FrameScale:
    """A per-row IP-Adapter scale (N, 1, 1) where diffusers' processor multiplies by its scale; it is never
    "zero" (the processor's skip test), since some frames may be."""

    def __init__(self, scale: Tensor) -> None:
        self.scale = scale  # (N, 1, 1)

    def __eq__(self, other) -> bool:
        return False

    __hash__ = None  # type: ignore[assignment]

    def __mul__(self, x: Tensor) -> Tensor:
        return self.scale.to(x.dtype) * x

    __rmul__ = __mul__


def read_adapter(path: str) -> dict[str, dict[str, Tensor]]:
    """{"image_proj": ..., "ip_adapter": ...} from a safetensors file (prefixed keys) or the original pickle."""
    data = read_tensors(path, IP)
    if isinstance(data, dict) and isinstance(data.get("image_proj"), dict):
        return {"image_proj": data["image_proj"], "ip_adapter": data.get("ip_adapter", {})}
    if not isinstance(data, dict):
        raise LoadError(IP, f"{path} holds a {type(data).__name__}, not an IP-Adapter")
    split: dict[str, dict[str, Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in data.items():
        head, _, rest = key.partition(".")
        if head in split:
            split[head][rest] = value
    if not split["image_proj"] or not split["ip_adapter"]:
        raise LoadError(IP, f"{Path(path).name} is not an IP-Adapter (no image_proj.* and ip_adapter.* weights)")
    return split


def ip_processors(unet: nn.Module) -> list[nn.Module]:
    """The UNet's IP-Adapter attention processors (diffusers' two kinds)."""
    kinds = IPAdapterAttnProcessor | IPAdapterAttnProcessor2_0
    return [p for p in unet.attn_processors.values() if isinstance(p, kinds)]


@dataclass
class ImagePrompt:
    """A loaded IP-Adapter: its image encoder and preprocessing, its projection, and the UNet's processors
    it replaced (to put back)."""

    path: str
    encoder_path: str
    encoder: CLIPVisionModelWithProjection
    preprocess: CLIPImageProcessor
    projection: nn.Module  # diffusers' MultiIPAdapterImageProjection: (N, 1, D) -> [(N, 1, tokens, C)]
    unet: nn.Module
    saved: dict  # the UNet's attention processors before

    @classmethod
    def load(cls, unet: nn.Module, path: str, encoder_path: str, dtype: torch.dtype) -> ImagePrompt:
        state = read_adapter(path)
        if not (Path(encoder_path) / "config.json").is_file():
            raise LoadError("--image-encoder", f"{encoder_path} is not a CLIP vision folder (no config.json)")
        encoder = load_part(CLIPVisionModelWithProjection.from_pretrained, Path(encoder_path), dtype=dtype)
        if (Path(encoder_path) / "preprocessor_config.json").is_file():
            preprocess = CLIPImageProcessor.from_pretrained(encoder_path)
        else:  # diffusers' default for an encoder without one
            size = encoder.config.image_size
            preprocess = CLIPImageProcessor(size=size, crop_size=size)
        saved = dict(unet.attn_processors)
        try:
            unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
        except (KeyError, RuntimeError, ValueError) as e:
            unet.set_attn_processor(saved)
            raise LoadError(IP, f"{Path(path).name} does not fit this UNet ({str(e).splitlines()[0]})") from e
        projection = unet.encoder_hid_proj
        unet.encoder_hid_proj = None  # the adapter projects (per frame); the UNet gets the tokens
        unet.register_to_config(encoder_hid_dim_type=None)
        device = next(unet.parameters()).device
        encoder.to(device).eval().requires_grad_(False)
        projection.to(device, dtype).eval().requires_grad_(False)
        for p in ip_processors(unet):
            p.to(device, dtype)
        return cls(path, encoder_path, encoder, preprocess, projection, unet, saved)

    @property
    def modules(self) -> tuple[nn.Module, ...]:
        """What it adds to the process: the image encoder, the projection, the attention processors' weights."""
        return (self.encoder, self.projection, *ip_processors(self.unet))

    def remove(self) -> None:
        """Put the UNet's own attention processors back."""
        self.unet.set_attn_processor(self.saved)

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> Tensor:
        """Images (H, W, 3) uint8 -> CLIP image embeddings (n, D)."""
        pixels = self.preprocess(images=images, return_tensors="pt").pixel_values  # (n, 3, S, S)
        pixels = pixels.to(self.encoder.device, self.encoder.dtype)
        return self.encoder(pixels).image_embeds  # (n, D)

    def tokens(self, embeds: Tensor) -> list[Tensor]:
        """Embeddings (N, D), one per UNet batch row -> the attention processors' image tokens [(N, 1, T, C)]."""
        return self.projection([embeds[:, None]])  # one adapter: (N, 1, D) -> [(N, 1, T, C)]

    def set_scale(self, scale: float | Tensor) -> None:
        """One scale, or one per batch row (N,), on every IP-Adapter attention processor."""
        value = scale if isinstance(scale, float) else FrameScale(scale[:, None, None])
        for p in ip_processors(self.unet):
            p.scale = [value] * len(p.scale)


@dataclass
class ImageCond:
    """The IP-Adapter's part of one guidance side: image embeddings per video or per frame, and the scale."""

    prompt: ImagePrompt
    embeds: Tensor  # (B, D), or (B, F, D) per frame (keyframed images)
    scale: float | Tensor = 1.0  # or (F,) per frame (keyframed scales)

    def frames(self, index: Tensor | slice) -> ImageCond:
        embeds = self.embeds[:, index] if self.embeds.dim() == 3 else self.embeds
        scale = self.scale if isinstance(self.scale, float) else self.scale[index]
        return ImageCond(self.prompt, embeds, scale)

    def cat(self, other: ImageCond) -> ImageCond:
        """Stacked along the batch (per frame if either is)."""
        a, b = self.embeds, other.embeds
        if a.dim() != b.dim():
            frames = (a if a.dim() == 3 else b).shape[1]
            a, b = (x if x.dim() == 3 else x[:, None].expand(-1, frames, -1) for x in (a, b))
        return ImageCond(self.prompt, torch.cat([a, b]), self.scale)

    def inputs(self, batch: int, frames: int) -> list[Tensor]:
        """The image tokens for a UNet call over `batch` videos of `frames` frames, the scale set to match."""
        rows = self.embeds.flatten(0, 1) if self.embeds.dim() == 3 else self.embeds.repeat_interleave(frames, 0)
        self.prompt.set_scale(self.scale if isinstance(self.scale, float) else self.scale.repeat(batch))
        return self.prompt.tokens(rows)  # [(B*F, 1, T, C)]
