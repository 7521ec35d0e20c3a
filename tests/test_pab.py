"""Pyramid Attention Broadcast: off/on/off, computed vs reused counts per the ranges, resets, clean removal."""

from __future__ import annotations

import pytest
import torch
from helpers import LATENT

from vidiff import VideoPipeline
from vidiff.accel.deep_cache import DeepCacheConfig, inner_blocks
from vidiff.accel.pab import PABConfig, attention_kinds
from vidiff.specs import SPECS
from vidiff.tiny import save_tiny_sd3

OPTS = LATENT | dict(frames=4, steps=10, seed=1)


@pytest.fixture(scope="module")
def motion(motion_pipe) -> VideoPipeline:
    yield motion_pipe
    motion_pipe.disable_cache()


def test_motion_unet_attention_is_told_apart(motion):
    kinds = attention_kinds(SPECS["sd1"].attention_rules, motion.denoiser.attention_modules())
    temporal = [n for n, k in kinds.items() if k == "temporal"]
    assert temporal and all("motion_modules" in n for n in temporal)
    assert all(n.endswith("attn1") for n, k in kinds.items() if k == "spatial")
    assert all(n.endswith("attn2") and "motion_modules" not in n for n, k in kinds.items() if k == "cross")
    assert set(kinds) == set(motion.denoiser.attention_modules())


def expected(timesteps: list[float], skip: int, span=(100, 800)) -> tuple[int, int]:
    """(computed, reused) for one module called once per step."""
    computed = sum(1 for i, t in enumerate(timesteps) if i == 0 or not span[0] < t < span[1] or i % skip == 0)
    return computed, len(timesteps) - computed


def test_off_on_off_and_counts(motion):
    off = motion("a cat", **OPTS).latents
    (pab,) = motion.enable_cache(PABConfig(spatial_skip=2, temporal_skip=3, cross_skip=4))
    out = motion("a cat", **OPTS)
    on = out.latents
    kinds = attention_kinds(SPECS["sd1"].attention_rules, motion.denoiser.attention_modules())
    timesteps = out.run.timesteps.tolist()
    for kind, skip in (("spatial", 2), ("temporal", 3), ("cross", 4)):
        n = sum(1 for k in kinds.values() if k == kind)
        computed, reused = expected(timesteps, skip)
        assert (pab.state.computed[kind], pab.state.reused[kind]) == (n * computed, n * reused), kind
    again = motion("a cat", **OPTS).latents  # state was reset: the same run again
    assert torch.equal(on, again)
    motion.disable_cache()
    assert torch.equal(motion("a cat", **OPTS).latents, off)
    assert (on - off).abs().max() > 0  # it did skip work
    assert (on - off).norm() / off.norm() < 0.5


def test_one_cache_switch_and_hooks_removed(motion):
    """`enable_cache(...)` replaces what was on (no config: the spec's `--fast`); `disable_cache()` removes it."""
    from diffusers.hooks import HookRegistry

    assert [type(c).__name__ for c in motion.enable_cache()] == ["PyramidAttentionBroadcast", "DeepCache"]
    (pab,) = motion.enable_cache(PABConfig(spatial_skip=2, spatial_range=(100, 800)))
    assert list(motion.accelerators) == ["pab"]
    assert pab.config.spatial_skip == 2 and pab.config.spatial_range == (100, 800)
    modules = list(pab.modules.values())
    motion.disable_cache()
    assert motion.accelerators == {}
    for module in modules:
        assert HookRegistry.check_if_exists_or_initialize(module).get_hook("vidiff_pab") is None


def test_deep_cache_reuses_inner_unet_blocks(motion):
    """DeepCache: every block but the outermost down/up ones is recomputed every 3rd step; the edges always run."""
    off = motion("a cat", **OPTS).latents
    deep = inner_blocks(motion.denoiser.module)
    unet = motion.denoiser.module
    assert "down_blocks.0" not in deep and f"up_blocks.{len(unet.up_blocks) - 1}" not in deep
    assert "mid_block" in deep and len(deep) == len(unet.down_blocks) + len(unet.up_blocks) - 1
    assert DeepCacheConfig().skip == 3 and motion.spec.fast == ("pab", "deep_cache")
    (pab,) = motion.enable_cache(DeepCacheConfig(skip=3))
    out = motion("a cat", **OPTS)
    on = out.latents
    computed, reused = expected(out.run.timesteps.tolist(), 3, (0, 1000))
    assert (pab.state.computed["deep"], pab.state.reused["deep"]) == (len(deep) * computed, len(deep) * reused)
    motion.disable_cache()
    assert torch.equal(motion("a cat", **OPTS).latents, off)
    assert 0 < (on - off).norm() / off.norm() < 0.5


def test_frame_batches_reuse_their_own_outputs(sd1_folder):
    """Sequential mode in batches of frames with PAB equals all frames at once with PAB."""
    runs = []
    for frame_batch in (None, 1):
        pipe = VideoPipeline.from_pretrained(
            str(sd1_folder), mode="sequential", frame_batch=frame_batch, dtype="float32"
        )
        pipe.enable_cache(PABConfig())
        runs.append(pipe("a cat", **OPTS).latents)
    assert (runs[0] - runs[1]).abs().max() <= 1e-4


def test_sd3_with_temporal_layers(tmp_path):
    from vidiff.errors import InvalidArgument
    from vidiff.motion.sd3_temporal import SD3TemporalLayers

    folder = save_tiny_sd3(tmp_path / "sd3", t5=False)
    seq = VideoPipeline.from_pretrained(str(folder), dtype="float32")
    SD3TemporalLayers.for_transformer(seq.denoiser.image.transformer).save(tmp_path / "t.safetensors")
    pipe = VideoPipeline.from_pretrained(str(folder), motion_module=str(tmp_path / "t.safetensors"), dtype="float32")
    kinds = attention_kinds(SPECS["sd3"].attention_rules, pipe.denoiser.attention_modules())
    assert sorted(n for n, k in kinds.items() if k == "temporal") == ["temporal.layers.0", "temporal.layers.1"]
    assert not inner_blocks(pipe.denoiser.module) and pipe.spec.fast == ("pab",)  # a transformer has no UNet blocks
    with pytest.raises(InvalidArgument, match="--deep-cache: this backbone has no UNet blocks"):
        pipe.enable_cache(DeepCacheConfig())
    (pab,) = pipe.enable_cache()
    pipe("a cat", **{**OPTS, "frames": 3})
    assert pab.state.reused["temporal"] > 0 and pab.state.reused["spatial"] > 0


def test_compile_with_a_named_backend(sd1_folder):
    from vidiff.errors import InvalidArgument

    pipe = VideoPipeline.from_pretrained(str(sd1_folder), mode="sequential", dtype="float32")
    before = pipe("a cat", **{**OPTS, "steps": 2}).latents
    with pytest.raises(InvalidArgument, match="--compile-backend: unknown torch.compile backend 'nope'"):
        pipe.compile("nope")
    pipe.compile("eager")  # dynamo traces, eager runs: the plumbing other backends use
    assert torch.allclose(pipe("a cat", **{**OPTS, "steps": 2}).latents, before, atol=1e-5)
