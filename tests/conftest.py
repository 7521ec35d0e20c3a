"""Tiny seeded SD 1.x components saved in the real formats, loaded back through vidiff's loading code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import MotionAdapter
from safetensors.torch import save_file

from vidiff import VideoPipeline
from vidiff.motion import to_original_keys
from vidiff.tiny import save_tiny_latte, save_tiny_sd1, save_tiny_sd3, tiny_motion_adapter


class RunsCode:
    """Unpickling this calls Path.touch on the marker: a stand-in for a checkpoint that runs arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def save_original(adapter: MotionAdapter, folder: Path, stem: str) -> dict[str, Path]:
    """Write an adapter in the original AnimateDiff single-file layout, as .ckpt and .safetensors."""
    state = {k: v.clone().contiguous() for k, v in to_original_keys(adapter.state_dict()).items()}
    paths = {"ckpt": folder / f"{stem}.ckpt", "safetensors": folder / f"{stem}.safetensors"}
    torch.save(state, paths["ckpt"])
    save_file(state, paths["safetensors"])
    return paths


@pytest.fixture(scope="session")
def sd1_folder(tmp_path_factory) -> Path:
    return save_tiny_sd1(tmp_path_factory.mktemp("sd1") / "model")


@pytest.fixture(scope="session")
def sd3_folder(tmp_path_factory) -> Path:
    return save_tiny_sd3(tmp_path_factory.mktemp("sd3") / "model")


@pytest.fixture(scope="session")
def latte_folder(tmp_path_factory) -> Path:
    return save_tiny_latte(tmp_path_factory.mktemp("latte") / "model", video_length=4)


@pytest.fixture(scope="session")
def motion_pipe(sd1_folder, adapter_folder) -> VideoPipeline:
    """The tiny SD 1.x model with its motion adapter, float32, GroupNorm as diffusers places it (the parity
    tests compare with diffusers' AnimateDiffPipeline): what the parity, latents and cache tests run."""
    return VideoPipeline.from_pretrained(
        str(sd1_folder), motion_module=str(adapter_folder), dtype="float32", groupnorm="diffusers"
    )


@pytest.fixture(scope="session")
def adapter_folder(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("adapter") / "motion_adapter"
    tiny_motion_adapter().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def original_files(adapter_folder, tmp_path_factory) -> dict[str, Path]:
    return save_original(MotionAdapter.from_pretrained(adapter_folder), tmp_path_factory.mktemp("original"), "mm_v2")
