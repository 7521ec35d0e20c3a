"""Where denoising starts besides noise: `--image-seeds` sources resolved against a model's latent codec.

`resolve_source` reads what an image-seeds spec names (latents files, images, videos, frame folders, masks),
checks it against the model's latent codec (channels, latent space, frames) and fills the request's
frames and size from latents when they were not given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from .codec import LatentCodec
from .errors import InvalidArgument
from .image_seeds import ARG, ImageSeed, parse_image_seed
from .latents_io import LatentsFile, check_latents, load_latents
from .media import fit, read_frames, take_frames
from .names import is_latents_path
from .processors import process
from .request import GenerationRequest


@dataclass
class Source:
    """An img2img / inpaint source, a mask, saved noisy latents: what `generate_latents` starts from."""

    frames: np.ndarray | None = None  # (F, H, W, 3) uint8 at the request's size
    mask: np.ndarray | None = None  # (F, H, W) in [0, 1]: 1 = repaint, 0 = keep the source
    latents: LatentsFile | None = None  # continue from these (cooperative denoising, resume)
    control: list[np.ndarray] | None = None  # per ControlNet: (N, H, W, 3) uint8 control images, processed
    adapter: dict[int, np.ndarray] | None = None  # IP-Adapter images (H, W, 3) uint8 by keyframe, as given


def resolve_source(
    codec: LatentCodec,
    resolve: Callable[[GenerationRequest], GenerationRequest],
    request: GenerationRequest,
    image_seeds: str | ImageSeed | None = None,
    resume: LatentsFile | None = None,
    decode_chunk_size: int = 8,
) -> tuple[Source, GenerationRequest]:
    """The request resolved against the model by `resolve` (latents files supply the frames and size the
    request left open) and the Source that `image_seeds` (dgenerate's grammar) and `resume` name."""
    nets = len(request.control.nets)
    seed = parse_image_seed(image_seeds, nets) if isinstance(image_seeds, str) else image_seeds
    source = Source(latents=resume)
    if seed is not None and seed.latents is not None:
        source.latents = load_latents(seed.latents, ARG)
        frames, height, width = codec.pixel_size(source.latents.latents)
        made_by = source.latents.meta.seed  # the seed that made them, recorded again unless another is given
        request = replace(
            request, frames=request.frames or frames, height=request.height or height, width=request.width or width,
            seed=made_by if request.seed is None else request.seed,
        )  # fmt: skip
        check_latents(
            source.latents, seed.latents, codec.channels, codec.space, frames=codec.latent_frames(request.frames)
        )
    request = resolve(request)
    if seed is not None and seed.image is not None:
        if is_latents_path(str(seed.image)):  # latents in the img2img position: decoded by this VAE first
            item = load_latents(seed.image, ARG)
            check_latents(item, seed.image, codec.channels, codec.space)
            frames = np.concatenate(list(codec.decode(item.latents[0], decode_chunk_size)))
            frames = np.stack([fit(Image.fromarray(f), request.width, request.height) for f in frames])
        else:
            frames = read_frames(seed.image, request.width, request.height, ARG)
        source.frames = take_frames(frames, request.frames, seed.image, ARG)
    if seed is not None and seed.mask is not None:
        mask = read_frames(seed.mask, request.width, request.height, ARG).mean(axis=-1) / 255.0  # (N, H, W)
        source.mask = take_frames(mask, request.frames, seed.mask, ARG)
    if seed is not None and seed.control:
        source.control = control_images(request, seed.control)
    if seed is not None and seed.adapter:
        outside = [f for f in seed.adapter if f >= request.frames]
        if outside:
            raise InvalidArgument(ARG, f"adapter keyframes {outside} are outside a {request.frames}-frame video")
        source.adapter = {f: _rgb(p) for f, p in seed.adapter.items()}
    return source, request


def _rgb(path) -> np.ndarray:
    """An image as given (H, W, 3) uint8: the IP-Adapter's encoder does its own resizing."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def control_images(request: GenerationRequest, paths: tuple) -> list[np.ndarray]:
    """Each ControlNet's control images at the request's size, processed: one per frame, or one per listed
    frame for SparseCtrl's frames= (a still image fills them all)."""
    out = []
    for uri, processor, path in zip(request.control.uris(), request.control.processor_list(), paths, strict=True):
        count, wanted = (len(uri.frames), "its frames= names") if uri.frames else (request.frames, "")
        frames = take_frames(read_frames(path, request.width, request.height, ARG), count, path, ARG, wanted)
        out.append(process(frames, processor))  # (N, H, W, 3)
    return out
