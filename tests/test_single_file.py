"""Single-file SD 1.x checkpoints (CompVis / A1111 layout) load to the folder's weights and make its video.

The checkpoints are written from a tiny diffusers folder by `to_ldm` below, the inverse of diffusers' own
single-file conversion (checked by converting back).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sf
from helpers import cli
from safetensors.torch import save_file
from transformers import CLIPTextModel

from vidiff import VideoPipeline
from vidiff.layout import clip_text_config, write_model_index
from vidiff.loading import CLIP_TOKENIZER
from vidiff.tiny import sd1_scheduler

SETTINGS = dict(frames=4, height=64, width=64, steps=2, seed=3, progress=False, output_type="latent")


def tiny_sd1_for_single_files(folder, seed: int = 0):
    """A tiny SD 1.x folder within what a single file's shapes cannot say: SD 1.x's 32 norm groups, 8 heads,
    64-wide CLIP heads, the real CLIP vocabulary, VAE scaling 0.18215."""
    torch.manual_seed(seed)
    UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=64, cross_attention_dim=64,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8, norm_num_groups=32,
    ).save_pretrained(folder / "unet")  # fmt: skip
    tiny_vae(seed).save_pretrained(folder / "vae")
    CLIPTextModel(clip_text_config(49408, 64, layers=2, heads=1, intermediate=128)).save_pretrained(
        folder / "text_encoder"
    )
    shutil.copytree(CLIP_TOKENIZER, folder / "tokenizer")
    sd1_scheduler().save_pretrained(folder / "scheduler")
    write_model_index(folder)
    return folder


def tiny_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32, scaling_factor=0.18215,
    )  # fmt: skip


def unet_to_ldm(state: dict, levels: int, layers: int, attends: list[bool]) -> dict:
    names = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip
    for i in range(levels):
        for j in range(layers):
            names[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{(layers + 1) * i + j + 1}.0"
            names[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{(layers + 1) * i + j + 1}.1"
        for j in range(layers + 1):
            names[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{(layers + 1) * i + j}.0"
            names[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{(layers + 1) * i + j}.1"
        if i < levels - 1:
            names[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(layers + 1) * (i + 1)}.0.op"
            up_at = 2 if attends[levels - 1 - i] else 1
            names[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{(layers + 1) * i + layers}.{up_at}"
    names |= {"mid_block.attentions.0": "middle_block.1", "mid_block.resnets.0": "middle_block.0",
              "mid_block.resnets.1": "middle_block.2"}  # fmt: skip
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
              "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}  # fmt: skip
    out = {}
    for key, value in state.items():
        prefix = max((p for p in names if key.startswith(p + ".")), key=len)
        rest = key[len(prefix) + 1 :]
        if ".resnets." in prefix:
            head, _, tail = rest.partition(".")
            rest = f"{resnet[head]}.{tail}"
        out[f"model.diffusion_model.{names[prefix]}.{rest}"] = value
    return out


def vae_to_ldm(state: dict, levels: int) -> dict:
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = new.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        for i in range(levels):
            new = new.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
            new = new.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            new = new.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")
        if "mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for a, b in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                         ("to_out.0.", "proj_out.")):  # fmt: skip
                new = new.replace(a, b)
            value = value[..., None, None] if value.dim() == 2 else value  # linear -> 1x1 conv
        out[f"first_stage_model.{new}"] = value
    return out


def to_ldm(folder) -> dict:
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    attends = [t.startswith("CrossAttn") for t in unet.config.down_block_types]
    state = unet_to_ldm(unet.state_dict(), len(attends), unet.config.layers_per_block, attends)
    state |= vae_to_ldm(AutoencoderKL.from_pretrained(folder / "vae").state_dict(), 4)
    text = CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict()
    text = {k.removeprefix("text_model."): v for k, v in text.items() if not k.endswith("position_ids")}
    state |= {f"cond_stage_model.transformer.text_model.{k}": v for k, v in text.items()}  # as SD 1.x files have it
    return {k: v.contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    folder = tiny_sd1_for_single_files(root / "model")
    state = to_ldm(folder)
    save_file(state, root / "model.safetensors")
    ema = {f"model_ema.{k.removeprefix('model.').replace('.', '')}": torch.zeros_like(v)
           for k, v in state.items() if k.startswith("model.diffusion_model.")}  # fmt: skip
    torch.save({"state_dict": {k: v.half() for k, v in state.items()} | ema}, root / "model_fp16_ema.ckpt")
    return {"folder": folder, "fp32": root / "model.safetensors", "fp16": root / "model_fp16_ema.ckpt", "root": root}


def test_the_inverse_conversion_round_trips(checkpoints):
    unet = UNet2DConditionModel.from_pretrained(checkpoints["folder"] / "unet")
    back = sf.convert_ldm_unet_checkpoint(to_ldm(checkpoints["folder"]), dict(unet.config))
    assert back.keys() == unet.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in unet.state_dict().items())


@pytest.mark.parametrize("kind", ["fp32", "fp16"])
def test_single_file_loads_the_folders_weights_and_video(checkpoints, adapter_folder, kind):
    folder = VideoPipeline.from_pretrained(str(checkpoints["folder"]), str(adapter_folder), dtype="float32")
    single = VideoPipeline.from_pretrained(str(checkpoints[kind]), str(adapter_folder), dtype="float32")
    cast = (lambda t: t.half().float()) if kind == "fp16" else (lambda t: t)
    for a, b in ((folder.denoiser.module, single.denoiser.module), (folder.vae, single.vae),
                 (folder.prompt_encoder.text_encoder, single.prompt_encoder.text_encoder)):  # fmt: skip
        want, got = a.state_dict(), b.state_dict()
        assert want.keys() == got.keys()
        image = [k for k in want if "motion_modules" not in k]  # the motion module is its own fp32 file
        assert all(torch.equal(cast(want[k]), got[k]) for k in image)
    assert single.scheduler_config["beta_schedule"] == folder.scheduler_config["beta_schedule"]
    if kind == "fp32":
        assert torch.equal(folder("a cat", **SETTINGS).latents, single("a cat", **SETTINGS).latents)


def test_shapes_give_the_config_and_vae_replaces(checkpoints, adapter_folder, tmp_path):
    from vidiff.single_file import unet_config

    state = to_ldm(checkpoints["folder"])
    config = unet_config(state)
    assert (config["block_out_channels"], config["layers_per_block"], config["in_channels"]) == ([32, 64], 2, 4)
    inpaint = dict(state)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    inpaint[key] = torch.cat([state[key], torch.zeros(32, 5, 3, 3)], dim=1)  # an inpainting UNet: 9 channels
    assert unet_config(inpaint)["in_channels"] == 9
    other = tiny_vae(seed=9)
    vae_file = tmp_path / "vae-ft-mse.safetensors"  # a VAE-only file: bare encoder.* / decoder.* keys
    bare = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(other.state_dict(), 4).items()}
    save_file(bare, vae_file)
    pipe = VideoPipeline.from_pretrained(str(checkpoints["fp32"]), str(adapter_folder), dtype="float32",
                                         vae=str(vae_file))  # fmt: skip
    assert all(torch.equal(other.state_dict()[k], v) for k, v in pipe.vae.state_dict().items())


def test_other_architectures_and_broken_files_are_one_line(checkpoints, original_files, tmp_path, capsys):
    refiner = {"conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(4),
               "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}  # fmt: skip
    save_file(refiner, tmp_path / "refiner.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(checkpoints["fp32"].read_bytes()[:1000])
    for path, text in [(tmp_path / "refiner.safetensors", "is an SDXL refiner checkpoint"),
                       (tmp_path / "cut.safetensors", "not a readable safetensors file"),
                       (original_files["ckpt"], "not a Stable Diffusion checkpoint")]:  # fmt: skip
        code = cli(
            "generate", "x", "--model", path, "--motion-module", original_files["ckpt"], "-o", tmp_path / "o.gif"
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0 and "--model" in err and text in err, err
    assert not (tmp_path / "o.gif").exists()
