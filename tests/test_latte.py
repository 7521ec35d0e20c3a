"""Latte through vidiff's loop: parity with diffusers' LattePipeline at tiny size; PAB's attention classes."""

from __future__ import annotations

import pytest
import torch
from diffusers import LattePipeline

from vidiff import VideoPipeline
from vidiff.accel.pab import attention_kinds
from vidiff.specs import SPECS

ATOL = 1e-4  # max abs latent difference vs diffusers, float32


@pytest.mark.parametrize(("temporal", "guidance"), [(True, 1.0), (True, 7.5), (False, 7.5)])
def test_latents_match_diffusers(latte_folder, temporal, guidance):
    ours = VideoPipeline.from_pretrained(
        str(latte_folder), mode="motion" if temporal else "sequential", dtype="float32"
    )
    got = ours("a red circle moving right", frames=4, height=64, width=64, steps=4, guidance_scale=guidance, seed=2,
               progress=False, output_type="latent").latents  # fmt: skip
    ref = LattePipeline.from_pretrained(latte_folder)
    ref.set_progress_bar_config(disable=True)
    want = ref("a red circle moving right", video_length=4, height=64, width=64, num_inference_steps=4,
               guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(2), output_type="latent",
               enable_temporal_attentions=temporal, clean_caption=False).frames  # fmt: skip
    assert got.shape == want.shape == (1, 4, 4, 8, 8)
    assert (got - want).abs().max().item() <= ATOL


def test_frames_limited_by_the_temporal_table_and_pab_kinds(latte_folder):
    from vidiff.errors import InvalidArgument

    pipe = VideoPipeline.from_pretrained(str(latte_folder), dtype="float32")
    with pytest.raises(InvalidArgument, match="makes exactly 4 frames"):
        pipe("x", frames=6, progress=False)
    kinds = attention_kinds(SPECS["latte"].attention_rules, pipe.denoiser.attention_modules())
    assert {k for n, k in kinds.items() if n.startswith("temporal_transformer_blocks")} == {"temporal"}
    assert {k for n, k in kinds.items() if n.startswith("transformer_blocks")} == {"spatial", "cross"}
    (pab,) = pipe.enable_cache()
    pipe("a cat", frames=4, height=64, width=64, steps=10, seed=0, progress=False, output_type="latent")
    assert all(pab.state.reused[k] > 0 for k in ("spatial", "temporal", "cross"))
