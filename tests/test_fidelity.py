"""Fidelity to the code the motion modules were trained with (guoyww/AnimateDiff), not only to diffusers.

`tests/data/animatediff_original.safetensors` holds the inputs and the outputs of one UNet forward of the
original code (guoyww/AnimateDiff at commit e92bd56, its `UNet3DConditionModel` with the v1, v2 and v3
inference configs, run with its pinned diffusers 0.11.1 on torch 2.13.0 CPU, float32) on the weights
`reference_weights()` makes: every tensor drawn in name order from one seeded generator, so both sides build
the same weights without shipping them. Here the same weights are saved as a diffusers SD 1.x folder plus an
original-layout motion module file and loaded through vidiff's real loading code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import MotionAdapter, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from vidiff import VideoPipeline
from vidiff.adapters.base import Conditioning
from vidiff.motion import to_original_keys
from vidiff.tiny import save_tiny_sd1

REFERENCE = Path(__file__).parent / "data" / "animatediff_original.safetensors"
UNET = dict(
    block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
)  # fmt: skip
MAX_FRAMES = {"v1": 24, "v2": 32, "v3": 32}
ORIGINAL_TOL = 2e-5  # float32; measured 2.6e-6 to 3.0e-6 with outputs peaking near 2.5
DEVIATION = 0.01  # diffusers' GroupNorm placement moves the output by far more than float noise


def _fill(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter in name order: matrices ~ N(0, 1/fan_in), norm scales 1 + N(0, 0.1), biases N(0, 0.02)."""
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * p[0].numel() ** -0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))


def reference_weights(version: str) -> tuple[UNet2DConditionModel, MotionAdapter]:
    """The tiny image UNet and a `version` motion module (v2: with a mid block), seeded, not initialised."""
    generator = torch.Generator().manual_seed(20240)
    unet = UNet2DConditionModel(**UNET)
    _fill(unet, generator)
    adapter = MotionAdapter(
        block_out_channels=UNET["block_out_channels"], motion_layers_per_block=1, motion_num_attention_heads=8,
        motion_norm_num_groups=32, motion_max_seq_length=MAX_FRAMES[version], use_motion_mid_block=True,
    )  # fmt: skip
    _fill(adapter, generator)
    if version != "v2":  # v1 and v3 have no mid-block motion module: the same weights without it
        state = {k: v for k, v in adapter.state_dict().items() if not k.startswith("mid_block.")}
        adapter = MotionAdapter(**{**adapter.config, "use_motion_mid_block": False})
        adapter.load_state_dict(state)
    return unet, adapter


def reference_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {
        "latents": torch.randn(1, 4, 8, 16, 16, generator=generator),  # (B, C, F, h, w)
        "embeds": torch.randn(1, 77, 32, generator=generator),  # (B, L, D)
        "timestep": torch.tensor(500),
    }


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(REFERENCE)


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_one_forward_equals_the_original_code(tmp_path, reference, version):
    inputs = reference_inputs()
    assert all(torch.equal(inputs[k], reference[k]) for k in inputs)  # the inputs were drawn the same way
    unet, adapter = reference_weights(version)
    folder = save_tiny_sd1(tmp_path / "model")
    unet.save_pretrained(folder / "unet")
    state = {k: v.clone().contiguous() for k, v in to_original_keys(adapter.state_dict()).items()}
    save_file(state, tmp_path / f"mm_{version}.safetensors")  # as released: original keys, with the table
    cond = Conditioning(inputs["embeds"])
    outputs = {}
    for mode in ("auto", "diffusers"):  # auto: a released module runs as the original code trained it
        pipe = VideoPipeline.from_pretrained(
            str(folder), str(tmp_path / f"mm_{version}.safetensors"), dtype="float32", groupnorm=mode
        )
        with torch.no_grad():
            outputs[mode] = pipe.denoiser.predict(inputs["latents"], inputs["timestep"], cond)
    assert pipe.notes == [f"motion module: {version}, original layout; GroupNorm as in diffusers"]
    expected = reference[f"out_{version}"]
    assert (outputs["auto"] - expected).abs().max() <= ORIGINAL_TOL
    assert (outputs["diffusers"] - expected).abs().max() > DEVIATION  # the deviation the default corrects
