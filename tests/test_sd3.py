"""SD 3: frame-by-frame parity with diffusers' StableDiffusion3Pipeline; temporal layers' contract."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from helpers import LATENT
from safetensors.torch import save_file

from vidiff import VideoPipeline
from vidiff.adapters.base import Conditioning
from vidiff.adapters.sd3_temporal import SD3Denoiser
from vidiff.errors import InvalidArgument, LoadError
from vidiff.motion.sd3_temporal import SD3TemporalLayers

ATOL = 1e-4  # max abs latent difference vs diffusers, float32
OPTS = LATENT | dict(frames=3, steps=4, seed=6)


@pytest.fixture(scope="module")
def seq(sd3_folder) -> VideoPipeline:
    return VideoPipeline.from_pretrained(str(sd3_folder), dtype="float32")


@pytest.mark.parametrize("use_t5", [True, False])
@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_each_frame_equals_diffusers(sd3_folder, use_t5, guidance):
    ours = VideoPipeline.from_pretrained(str(sd3_folder), use_t5=use_t5, dtype="float32")
    got = ours("a cat", guidance_scale=guidance, max_sequence_length=16, **OPTS).latents  # (1, 16, F, 8, 8)
    extra = {} if use_t5 else {"text_encoder_3": None, "tokenizer_3": None}
    ref = StableDiffusion3Pipeline.from_pretrained(sd3_folder, **extra)
    ref.set_progress_bar_config(disable=True)
    start = ours.denoiser.initial_noise((1, 16, 3, 8, 8), torch.Generator("cpu").manual_seed(6), "cpu", torch.float32)
    for f in range(3):
        want = ref("a cat", num_inference_steps=4, guidance_scale=guidance, latents=start[:, :, f], height=64,
                   width=64, output_type="latent", max_sequence_length=16).images  # fmt: skip
        assert (got[:, :, f] - want).abs().max().item() <= ATOL


def _inputs(seq: VideoPipeline, frames: int):
    torch.manual_seed(0)
    latents = torch.randn(1, 16, frames, 8, 8)  # (B, C, F, h, w)
    cond = seq.prompt_encoder(["a cat"], max_sequence_length=16)
    return latents, torch.tensor(500.0), cond


def test_zero_initialised_temporal_layers_change_nothing(seq):
    transformer = seq.denoiser.image.transformer
    latents, t, cond = _inputs(seq, 4)
    with torch.no_grad():
        plain = SD3Denoiser(transformer).predict(latents, t, cond)
        layers = SD3TemporalLayers.for_transformer(transformer)
        with_layers = SD3Denoiser(transformer, layers)
        assert torch.equal(with_layers.predict(latents, t, cond), plain)  # exact, float32
        layers.detach()


def test_trained_layers_mix_frames_and_one_frame_is_the_image_model(seq):
    transformer = seq.denoiser.image.transformer
    layers = SD3TemporalLayers.for_transformer(transformer)
    for layer in layers.layers.values():
        torch.nn.init.normal_(layer.to_out.weight, std=0.2)
    denoiser = SD3Denoiser(transformer, layers)
    latents, t, cond = _inputs(seq, 4)
    with torch.no_grad():
        base = denoiser.predict(latents, t, cond)
        moved = latents.clone()
        moved[:, :, 0] += 1.0
        other = denoiser.predict(moved, t, cond)
        assert (other[:, :, 1:] - base[:, :, 1:]).abs().amax() > 1e-4  # frames interact
        one = denoiser.predict(latents[:, :, :1], t, cond)
        layers.detach()
        assert torch.equal(one, SD3Denoiser(transformer).predict(latents[:, :, :1], t, cond))


def test_gradient_reaches_only_the_temporal_layers(seq):
    transformer = seq.denoiser.image.transformer
    layers = SD3TemporalLayers.for_transformer(transformer)
    denoiser = SD3Denoiser(transformer, layers)
    latents, t, cond = _inputs(seq, 4)
    cond = Conditioning(cond.embeds.detach(), cond.pooled.detach())
    with torch.enable_grad():
        layers.requires_grad_(True)
        denoiser.predict(latents, t, cond).square().mean().backward()
    layers.detach()
    assert all(p.grad is None for p in transformer.parameters())
    assert all(layer.to_out.weight.grad.abs().sum() > 0 for layer in layers.layers.values())


def test_save_load_round_trip_and_bad_inputs(seq, tmp_path, sd3_folder):
    transformer = seq.denoiser.image.transformer
    layers = SD3TemporalLayers.for_transformer(transformer, blocks=[1], max_frames=8)
    torch.nn.init.normal_(layers.layers["1"].to_out.weight)
    layers.save(tmp_path / "t.safetensors")
    back = SD3TemporalLayers.load(tmp_path / "t.safetensors")
    assert back.config == layers.config
    assert all(torch.equal(a, b) for a, b in zip(layers.state_dict().values(), back.state_dict().values(), strict=True))
    pipe = VideoPipeline.from_pretrained(
        str(sd3_folder), motion_module=str(tmp_path / "t.safetensors"), dtype="float32"
    )
    assert pipe("a cat", **OPTS).latents.shape == (1, 16, 3, 8, 8)
    with pytest.raises(InvalidArgument, match="9 frames exceed the motion module's positional table of 8"):
        pipe("a cat", **{**OPTS, "frames": 9, "context_length": 9})  # a window longer than the table
    assert pipe("a cat", **{**OPTS, "frames": 9}).latents.shape == (1, 16, 9, 8, 8)  # windows of 8 past the table
    pipe.denoiser.temporal.detach()
    SD3TemporalLayers(64, 4, [0]).save(tmp_path / "wide.safetensors")
    with pytest.raises(LoadError, match="temporal layers of width 64; this transformer is 32 wide"):
        VideoPipeline.from_pretrained(
            str(sd3_folder), motion_module=str(tmp_path / "wide.safetensors"), dtype="float32"
        )


def test_sd3_refuses_diffusion_schedulers_and_sd1_refuses_prompt_2(seq, sd1_folder, sd3_folder, tmp_path):
    with pytest.raises(InvalidArgument, match="needs a flow-matching"):
        seq("a cat", scheduler="ddim", **OPTS)
    sd1 = VideoPipeline.from_pretrained(str(sd1_folder), mode="sequential", dtype="float32")
    with pytest.raises(InvalidArgument, match="--prompt-2"):
        sd1("a cat", prompt_2="x", **OPTS)
    with pytest.raises(InvalidArgument, match="--vae: applies to Stable Diffusion 1.x models only"):
        VideoPipeline.from_pretrained(str(sd3_folder), vae="vae.safetensors", dtype="float32")
    sd1_lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(1, 1)}, sd1_lora)
    with pytest.raises(LoadError, match="--lora: style.safetensors is a LoRA for Stable Diffusion 1.x"):
        VideoPipeline.from_pretrained(str(sd3_folder), loras=[str(sd1_lora)], dtype="float32")


def test_motion_stage_trains_only_temporal_layers(sd3_folder, tmp_path):
    from safetensors.torch import load_file

    from vidiff.train import TrainConfig, train

    before = load_file(sd3_folder / "transformer" / "diffusion_pytorch_model.safetensors")
    out = tmp_path / "temporal.safetensors"
    cfg = TrainConfig(stage="motion", model=sd3_folder, out=out, steps=4, batch_size=1, frames=4, warmup=1, lr=1e-3)
    losses = train(cfg, progress=False)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    after = load_file(sd3_folder / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    layers = SD3TemporalLayers.load(out)
    assert any(layer.to_out.weight.abs().max() > 0 for layer in layers.layers.values())  # moved off zero
    pipe = VideoPipeline.from_pretrained(str(sd3_folder), motion_module=str(out), dtype="float32")
    assert pipe("a red circle moving right", **OPTS).latents.shape == (1, 16, 3, 8, 8)


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_flow_matching_split_equals_unsplit(seq, tmp_path, fraction):
    from vidiff.latents_io import load_latents, save_latents
    from vidiff.pipeline import Source

    whole = seq("a cat", **OPTS).latents
    half = seq("a cat", denoising_end=fraction, **OPTS)
    save_latents(tmp_path / "half.safetensors", seq.snapshot(half.run))
    item = load_latents(tmp_path / "half.safetensors")
    assert item.meta.family == "sd3" and item.meta.latent_channels == 16 and item.meta.scheduler == "flow-euler"
    rest = seq("a cat", denoising_start=fraction, source=Source(latents=item), **OPTS).latents
    assert (rest - whole).abs().max().item() <= 1e-5
