"""Source media for --image-seeds and training: images, videos, folders; one resize rule."""

from __future__ import annotations

import pickle

import imageio.v2 as imageio
import numpy as np
import pytest
from conftest import RunsCode
from PIL import Image

from vidiff.errors import InvalidArgument, LoadError
from vidiff.latents_io import load_latents
from vidiff.media import fit, read_frames, take_frames


def _frames(n: int, w: int = 96, h: int = 80) -> list[np.ndarray]:
    return [np.full((h, w, 3), 20 * i, dtype=np.uint8) for i in range(n)]


def test_fit_covers_then_crops_the_centre():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[:, 50:150] = 255  # a white centre band, half the width
    out = fit(Image.fromarray(image), 64, 64)
    assert out.shape == (64, 64, 3)
    assert out[:, 16:48].min() > 200  # the centre 100x100 -> 64x64 is all white


@pytest.mark.parametrize("kind", ["folder", "mp4", "gif", "webp", "png"])
def test_read_frames(tmp_path, kind):
    frames = _frames(5)
    if kind == "folder":
        path = tmp_path / "frames"
        path.mkdir()
        for i, f in enumerate(frames):
            Image.fromarray(f).save(path / f"{i:03d}.png")
    elif kind == "mp4":
        path = tmp_path / "v.mp4"
        imageio.mimwrite(path, frames, fps=8, macro_block_size=1)
    elif kind == "png":
        path = tmp_path / "still.png"
        Image.fromarray(frames[3]).save(path)
    else:
        path = tmp_path / f"v.{kind}"
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], lossless=True)
    out = read_frames(path, 48, 40, "--image-seeds")
    assert out.shape == ((1 if kind == "png" else 5), 40, 48, 3)
    assert take_frames(out, 4, path, "--image-seeds").shape == (4, 40, 48, 3)
    if kind != "mp4":  # lossy
        assert abs(int(out[-1].mean()) - (60 if kind == "png" else 80)) <= 2


def test_too_few_frames_and_unreadable_files(tmp_path):
    with pytest.raises(InvalidArgument, match="v.gif has 5 frames; --frames is 8"):
        take_frames(np.zeros((5, 4, 4, 3)), 8, tmp_path / "v.gif", "--image-seeds")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(InvalidArgument, match="cannot read"):
        read_frames(tmp_path / "bad.mp4", 8, 8, "--image-seeds")


def test_a_latents_pickle_that_needs_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"latents": RunsCode(marker)}, f, protocol=2)
    with pytest.raises(LoadError, match="needs code to unpickle"):
        load_latents(tmp_path / "evil.pt")
    assert not marker.exists()
