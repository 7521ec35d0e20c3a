"""FreeInit equals diffusers' enable_free_init on the same weights and seed; one pass is the plain run."""

from __future__ import annotations

import pytest
import torch
from diffusers import AnimateDiffPipeline, MotionAdapter
from helpers import LATENT

from vidiff import InvalidArgument
from vidiff.free_init import low_pass

OPTS = LATENT | dict(frames=4, steps=3, seed=6)
TOL = 1e-4  # float32 latents


@pytest.mark.parametrize("method", ["butterworth", "gaussian", "ideal"])
def test_equals_diffusers(motion_pipe, sd1_folder, adapter_folder, method):
    ref = AnimateDiffPipeline.from_pretrained(sd1_folder, motion_adapter=MotionAdapter.from_pretrained(adapter_folder))
    ref.set_progress_bar_config(disable=True)
    ref.enable_free_init(num_iters=2, method=method)
    want = ref("a cat", num_frames=4, height=64, width=64, num_inference_steps=3, output_type="latent",
               generator=torch.Generator("cpu").manual_seed(6)).frames  # fmt: skip
    out = motion_pipe("a cat", free_init=2, free_init_method=method, **OPTS)
    got = out.latents
    assert out.timings.steps == 6  # both passes
    assert (got - want).abs().max() <= TOL
    assert not torch.allclose(got, motion_pipe("a cat", **OPTS).latents, atol=1e-3)  # the second pass changed it


def test_one_pass_is_the_plain_run_and_box_keeps_low_frequencies(motion_pipe):
    assert torch.equal(motion_pipe("a cat", free_init=1, **OPTS).latents, motion_pipe("a cat", **OPTS).latents)
    mask = low_pass((1, 4, 8, 16, 16), "box", 4, 0.25, 0.5, "cpu")
    assert mask[0, 0, 4, 8, 8] == 1 and mask[0, 0, 4, 0, 0] == 0 and mask.shape == (1, 4, 8, 16, 16)
    assert torch.isfinite(motion_pipe("a cat", free_init=2, free_init_method="box", **OPTS).latents).all()


def test_bad_free_init(motion_pipe):
    with pytest.raises(InvalidArgument, match="--free-init: must be >= 1"):
        motion_pipe("a cat", free_init=0, **OPTS)
    with pytest.raises(InvalidArgument, match="--free-init-method"):
        motion_pipe("a cat", free_init=2, free_init_method="sharp", **OPTS)
    with pytest.raises(InvalidArgument, match="--free-init: re-samples a whole"):
        motion_pipe("a cat", free_init=2, denoising_end=0.5, **OPTS)
