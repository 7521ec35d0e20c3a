"""Latents interchange: file round trips, split == unsplit for every scheduler, img2img and inpainting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import LATENT
from safetensors.torch import save_file

from vidiff import VideoPipeline
from vidiff.errors import InvalidArgument, LoadError
from vidiff.latents_io import LatentsFile, LatentsMeta, check_latents, load_latents, save_latents
from vidiff.pipeline import Source
from vidiff.schedules import DIFFUSION_SCHEDULERS

SPLIT_ATOL = 1e-5  # max abs latent difference, float32, between a split-and-resumed run and an unsplit one
OPTS = LATENT | dict(frames=8, steps=6, seed=4)


@pytest.fixture(scope="module")
def pipe(motion_pipe) -> VideoPipeline:
    return motion_pipe


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_round_trip(tmp_path, suffix):
    latents = torch.randn(1, 4, 5, 8, 8)
    meta = LatentsMeta(family="sd1", latent_channels=4, scheduler="ddim", denoised=0.5, frames=5, seed=3, prompt="x")
    path = save_latents(tmp_path / f"l{suffix}", LatentsFile(latents, meta))
    back = load_latents(path)
    assert torch.equal(back.latents, latents)
    if suffix == ".safetensors":
        assert back.meta == meta
    else:
        assert isinstance(torch.load(path, weights_only=True), torch.Tensor)  # a plain tensor, as dgenerate writes


@pytest.mark.parametrize("key", ["latent", "latents", "sample", "samples"])
def test_dgenerate_style_files(tmp_path, key):
    image_latents = torch.randn(1, 4, 8, 8)  # one image, dgenerate's layout (B, C, h, w)
    torch.save({key: image_latents}, tmp_path / "d.pt")
    save_file({key: image_latents}, tmp_path / "d.safetensors")
    for name in ("d.pt", "d.safetensors"):
        item = load_latents(tmp_path / name)
        assert item.latents.shape == (1, 4, 1, 8, 8)
        assert torch.equal(item.latents[:, :, 0], image_latents)


def test_checks_name_the_file_and_the_mismatch(tmp_path):
    item = LatentsFile(torch.zeros(1, 16, 4, 8, 8), LatentsMeta(family="sd3"))
    with pytest.raises(InvalidArgument, match="f.pt has 16 latent channels; this model's latents have 4"):
        check_latents(item, tmp_path / "f.pt", channels=4, family="sd1")
    with pytest.raises(InvalidArgument, match="holds sd3 latents"):
        check_latents(item, tmp_path / "f.pt", channels=16, family="sd1")
    with pytest.raises(InvalidArgument, match="f.pt has 4 frames; --frames is 8"):
        check_latents(item, tmp_path / "f.pt", channels=16, family="sd3", frames=8)
    torch.save({"weights": torch.zeros(2), "other": torch.zeros(3)}, tmp_path / "w.pt")
    with pytest.raises(LoadError, match="holds no latents tensor"):
        load_latents(tmp_path / "w.pt")


@pytest.mark.parametrize("scheduler", list(DIFFUSION_SCHEDULERS))
@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_split_equals_unsplit(pipe, tmp_path, scheduler, fraction):
    whole = pipe("a cat", scheduler=scheduler, **OPTS).latents
    half = pipe("a cat", scheduler=scheduler, denoising_end=fraction, **OPTS)
    path = save_latents(tmp_path / "half.safetensors", pipe.snapshot(half.run))
    first = half.latents
    rest = pipe(
        "a cat", scheduler=scheduler, denoising_start=fraction, source=Source(latents=load_latents(path)), **OPTS
    )
    assert (rest.latents - whole).abs().max().item() <= SPLIT_ATOL
    assert (first - whole).abs().max().item() > 1e-3  # the first half really stopped early


def test_plain_tensor_resumes_stateless_schedulers_exactly(pipe, tmp_path):
    """dgenerate's .pt carries no state; first-order schedulers need none."""
    for scheduler in ("ddim", "euler"):
        whole = pipe("a cat", scheduler=scheduler, **OPTS).latents
        first = pipe("a cat", scheduler=scheduler, denoising_end=0.5, **OPTS).latents
        save_latents(tmp_path / f"{scheduler}.pt", LatentsFile(first))
        item = load_latents(tmp_path / f"{scheduler}.pt")
        rest = pipe("a cat", scheduler=scheduler, denoising_start=0.5, source=Source(latents=item), **OPTS).latents
        assert (rest - whole).abs().max().item() <= SPLIT_ATOL


def test_img2img_strength_zero_returns_the_encoded_source(pipe):
    frames = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    out = pipe("a cat", strength=0.0, source=Source(frames=frames), **OPTS).latents
    assert torch.equal(out, pipe.encode(frames))


def test_img2img_strength_changes_more_with_more_strength(pipe):
    frames = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    encoded = pipe.encode(frames)
    low = pipe("a cat", strength=0.3, source=Source(frames=frames), **OPTS).latents
    high = pipe("a cat", strength=0.9, source=Source(frames=frames), **OPTS).latents
    assert 0 < (low - encoded).abs().mean() < (high - encoded).abs().mean()


def test_inpainting_keeps_the_unmasked_region(pipe):
    frames = np.random.default_rng(1).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    mask = np.zeros((8, 64, 64), dtype=np.float32)
    mask[:, 16:48, 16:48] = 1.0  # repaint the centre
    out = pipe("a cat", strength=1.0, source=Source(frames=frames, mask=mask), **OPTS).latents
    encoded = pipe.encode(frames)
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[2:6, 2:6] = False  # latent cells under the mask
    assert torch.equal(out[..., keep], encoded[..., keep])
    assert (out[..., ~keep] - encoded[..., ~keep]).abs().max() > 0.1
