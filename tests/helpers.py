"""Shared by the tests: the CLI's exit code, and the option sets the pipeline tests start from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vidiff.cli import main

LATENT = dict(height=64, width=64, progress=False, output_type="latent")  # pipeline calls that stop at latents


def cli(*args) -> int:
    """The CLI's exit code (argparse errors exit through SystemExit)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return e.code


def source_and_mask(folder: Path) -> str:
    """A 10-frame 96x80 random GIF and a 64x64 mask whose centre is repainted; returns the image-seeds spec."""
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)) for _ in range(10)]
    frames[0].save(folder / "src.gif", save_all=True, append_images=frames[1:])
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    return f"{folder / 'src.gif'};mask={folder / 'mask.png'}"
