"""SDXL with AnimateDiff-SDXL and Hotshot-XL motion modules: parity with diffusers' AnimateDiffSDXLPipeline,
every checkpoint and motion-module layout users have loading to identical weights, and what SDXL adds.

Tiny SDXL-shaped weights (`vidiff.tiny.save_tiny_sdxl`): three UNet levels, two CLIP encoders on the real
vocabulary, pooled embedding and 256-wide micro-conditioning, as the single-file reader assumes of SDXL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AnimateDiffSDXLPipeline, MotionAdapter, UNet2DConditionModel
from helpers import cli
from safetensors.torch import save_file
from test_single_file import unet_to_ldm, vae_to_ldm
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from vidiff import VideoPipeline
from vidiff.adapters.unet_sdxl import frame_embeddings
from vidiff.errors import LoadError
from vidiff.motion import load_motion_module, to_original_keys
from vidiff.schedules import make_scheduler
from vidiff.tiny import save_tiny_sdxl, tiny_sdxl_motion_adapter

ATOL = 1e-4  # max abs latent difference allowed in float32
SETTINGS = dict(frames=4, height=64, width=64, steps=3)
PROMPT = "a red circle moving right"


def to_hotshot(adapter: MotionAdapter) -> dict[str, torch.Tensor]:
    """A MotionAdapter in Hotshot-XL's released layout (`hsxl_temporal_layers.safetensors`)."""
    out = {}
    for key, value in to_original_keys(adapter.state_dict()).items():
        key = key.replace(".temporal_transformer.", ".").replace("pos_encoder.pe", "pos_encoder.positional_encoding")
        out[key.replace(".motion_modules.", ".temporal_attentions.")] = value.clone().contiguous()
    return out


def open_clip_to_ldm(state: dict) -> dict:
    """A diffusers CLIPTextModelWithProjection state in OpenCLIP's layout, as SDXL files hold bigG."""
    out, prefix = {}, "conditioner.embedders.1.model."
    layers = {}
    for key, value in state.items():
        key = key.removeprefix("text_model.")
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key.startswith("embeddings.token_embedding"):
            out[prefix + "token_embedding.weight"] = value
        elif key.startswith("embeddings.position_embedding"):
            out[prefix + "positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out[prefix + key.replace("final_layer_norm.", "ln_final.")] = value
        elif key.startswith("encoder.layers."):
            new = key.replace("encoder.layers.", "transformer.resblocks.").replace("layer_norm1", "ln_1")
            new = new.replace("layer_norm2", "ln_2").replace(".mlp.fc1.", ".mlp.c_fc.")
            new = new.replace(".mlp.fc2.", ".mlp.c_proj.")
            new = new.replace(".self_attn.out_proj.", ".attn.out_proj.")
            if ".self_attn." in new:  # q, k, v -> one in_proj
                head, _, proj = new.rpartition(".self_attn.")
                layers.setdefault(head, {})[proj] = value
                continue
            out[prefix + new] = value
    for head, parts in layers.items():
        for kind in ("weight", "bias"):
            qkv = [parts[f"{p}_proj.{kind}"] for p in ("q", "k", "v")]
            out[f"{prefix}{head}.attn.in_proj_{kind}"] = torch.cat(qkv)
    return out


def sdxl_to_ldm(folder) -> dict:
    """A tiny SDXL folder as one A1111/Civitai-layout file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    attends = [t.startswith("CrossAttn") for t in unet.config.down_block_types]
    unet_state = dict(unet.state_dict())
    for i in (1, 2):  # SDXL's added (pooled + time ids) embedding
        for kind in ("weight", "bias"):
            unet_state[f"label_emb.0.{2 * (i - 1)}.{kind}"] = unet_state.pop(f"add_embedding.linear_{i}.{kind}")
    state = unet_to_ldm({k: v for k, v in unet_state.items() if not k.startswith("label_emb")}, 3, 2, attends)
    state |= {f"model.diffusion_model.{k}": v for k, v in unet_state.items() if k.startswith("label_emb")}
    state |= vae_to_ldm(AutoencoderKL.from_pretrained(folder / "vae").state_dict(), 4)
    first = CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict()
    first = {k.removeprefix("text_model."): v for k, v in first.items() if not k.endswith("position_ids")}
    state |= {f"conditioner.embedders.0.transformer.text_model.{k}": v for k, v in first.items()}
    state |= open_clip_to_ldm(CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2").state_dict())
    return {k: v.contiguous() for k, v in state.items()}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """A tiny SDXL folder, an AnimateDiff-SDXL module in its layouts, a Hotshot-XL file, single files."""
    root = tmp_path_factory.mktemp("sdxl")
    folder = save_tiny_sdxl(root / "model")
    torch.manual_seed(11)
    adapter = tiny_sdxl_motion_adapter()
    adapter.save_pretrained(root / "mm_folder")
    save_file({k: v.clone().contiguous() for k, v in to_original_keys(adapter.state_dict()).items()},
              root / "mm_sdxl.safetensors")  # fmt: skip
    torch.save(to_original_keys(adapter.state_dict()), root / "mm_sdxl.ckpt")
    torch.manual_seed(12)
    hotshot = tiny_sdxl_motion_adapter(max_frames=24)
    hotshot.save_pretrained(root / "hotshot_folder")
    save_file(to_hotshot(hotshot), root / "hsxl_temporal_layers.safetensors")
    state = sdxl_to_ldm(folder)
    save_file(state, root / "sdxl.safetensors")
    torch.save({"state_dict": {k: v.half() for k, v in state.items()}}, root / "sdxl_fp16.ckpt")
    return root


@pytest.fixture(scope="module")
def ours(sdxl) -> VideoPipeline:
    return VideoPipeline.from_pretrained(str(sdxl / "model"), str(sdxl / "mm_folder"), dtype="float32")


def reference(sdxl, scheduler: str, guidance: float, seed: int, **kwargs):
    """diffusers' AnimateDiffSDXLPipeline with SDXL's added-conditioning embedding restored: its
    `UNetMotionModel.from_unet2d` does not copy `add_embedding` (raised in the review of diffusers' PR #6721
    and left for later), so as shipped it runs the pooled text and time ids through fresh random weights."""
    pipe = AnimateDiffSDXLPipeline.from_pretrained(
        sdxl / "model", motion_adapter=MotionAdapter.from_pretrained(sdxl / "mm_folder")
    )
    image_unet = UNet2DConditionModel.from_pretrained(sdxl / "model" / "unet")
    assert not torch.equal(pipe.unet.add_embedding.linear_1.weight, image_unet.add_embedding.linear_1.weight)
    pipe.unet.add_embedding.load_state_dict(image_unet.add_embedding.state_dict())
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(scheduler, dict(pipe.scheduler.config))
    return pipe(
        PROMPT, num_frames=SETTINGS["frames"], height=SETTINGS["height"], width=SETTINGS["width"],
        num_inference_steps=SETTINGS["steps"], guidance_scale=guidance, output_type="latent",
        generator=torch.Generator("cpu").manual_seed(seed), **kwargs,
    ).frames  # fmt: skip


@pytest.mark.parametrize(("scheduler", "guidance"), [("ddim", 7.5), ("euler", 1.0), ("dpm++2m", 5.0)])
def test_latents_match_diffusers_animatediff_sdxl(sdxl, ours, scheduler, guidance):
    got = ours(PROMPT, scheduler=scheduler, guidance_scale=guidance, seed=3, progress=False, output_type="latent",
               **SETTINGS).latents  # fmt: skip
    want = reference(sdxl, scheduler, guidance, seed=3)
    assert got.shape == want.shape == (1, 4, 4, 8, 8)
    assert (got - want).abs().max().item() <= ATOL


def test_prompt_2_and_negative_prompt_match_diffusers(sdxl, ours):
    got = ours(PROMPT, prompt_2="a blue square", negative_prompt="blurry", seed=4, progress=False,
               output_type="latent", **SETTINGS).latents  # fmt: skip
    want = reference(sdxl, "ddim", 7.5, seed=4, prompt_2="a blue square", negative_prompt="blurry")
    plain = ours(PROMPT, seed=4, progress=False, output_type="latent", **SETTINGS).latents
    assert (got - want).abs().max().item() <= ATOL
    assert (got - plain).abs().max().item() > 100 * ATOL  # the second prompt and the negative act


@pytest.mark.parametrize("kind", ["sdxl.safetensors", "sdxl_fp16.ckpt"])
def test_single_file_loads_the_folders_weights_and_video(sdxl, ours, kind):
    single = VideoPipeline.from_pretrained(str(sdxl / kind), str(sdxl / "mm_folder"), dtype="float32")
    cast = (lambda t: t.half().float()) if "fp16" in kind else (lambda t: t)
    pairs = [(ours.denoiser.module, single.denoiser.module), (ours.vae, single.vae)]
    pairs += list(zip(ours.prompt_encoder.encoders, single.prompt_encoder.encoders, strict=True))
    for a, b in pairs:
        want, got = a.state_dict(), b.state_dict()
        assert want.keys() == got.keys()
        for key in want:  # the motion module comes from the same float32 folder
            assert torch.equal(want[key] if "motion_modules" in key else cast(want[key]), got[key]), key
    assert single.vae.config.scaling_factor == 0.13025 and single.default_size == 1024
    if "fp16" in kind:
        return
    a = ours(PROMPT, seed=2, progress=False, output_type="latent", **SETTINGS).latents
    b = single(PROMPT, seed=2, progress=False, output_type="latent", **SETTINGS).latents
    assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["mm_sdxl.safetensors", "mm_sdxl.ckpt"])
def test_animatediff_sdxl_original_files_load_to_the_folders_weights(sdxl, name):
    module = load_motion_module(sdxl / name, torch.float32)
    folder = load_motion_module(sdxl / "mm_folder", torch.float32)
    assert module.version == folder.version == "v3"  # AnimateDiff-SDXL has v3's keys; the SDXL UNet says which
    want, got = folder.adapter.state_dict(), module.adapter.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    pipe = VideoPipeline.from_pretrained(str(sdxl / "model"), str(sdxl / name), dtype="float32")
    assert pipe.notes[0] == "motion module: AnimateDiff-SDXL, original layout; GroupNorm as in original"
    assert pipe.default_size == 64 and pipe.default_frames == 16  # the tiny UNet's size; 16 frames as trained


@pytest.mark.parametrize(
    ("widths", "family"), [((320, 640, 1280), "sdxl"), ((320, 640, 1280, 1280), "sd1"), ((32, 64, 128), None)]
)
def test_the_family_of_a_released_module_is_read_off_its_widths(widths, family):
    from accelerate import init_empty_weights

    from vidiff.motion import MotionModule

    with init_empty_weights():
        adapter = MotionAdapter(block_out_channels=widths, use_motion_mid_block=False)
    assert MotionModule(adapter, "v3", "original layout").family == family


def test_hotshot_file_loads_to_its_weights_with_its_defaults(sdxl):
    module = load_motion_module(sdxl / "hsxl_temporal_layers.safetensors", torch.float32)
    assert module.version == "hotshot" and module.describe() == "Hotshot-XL, Hotshot-XL layout"
    want = MotionAdapter.from_pretrained(sdxl / "hotshot_folder").state_dict()
    got = module.adapter.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert module.adapter.config.motion_max_seq_length == 24
    pipe = VideoPipeline.from_pretrained(str(sdxl / "model"), str(sdxl / "hsxl_temporal_layers.safetensors"),
                                         dtype="float32")  # fmt: skip
    assert pipe.default_size == 512 and pipe.default_frames == 8  # Hotshot-XL: 8 frames at 512 pixels
    assert "Hotshot-XL" in pipe.notes[0]


def test_per_frame_pooled_embedding_equals_the_per_video_path(ours):
    """Prompt travel hands each frame its own pooled embedding through the blocks' time embedding; with the
    same prompt everywhere it must equal the per-video path UNetMotionModel takes."""
    travelled = ours(PROMPT, prompt_travel={0: PROMPT, 3: PROMPT}, seed=6, progress=False, output_type="latent",
                     **SETTINGS).latents  # fmt: skip
    plain = ours(PROMPT, seed=6, progress=False, output_type="latent", **SETTINGS).latents
    assert (travelled - plain).abs().max().item() <= ATOL  # measured 2.3e-5: the embedding batched per frame
    moved = ours(PROMPT, prompt_travel={0: PROMPT, 3: "a blue square"}, seed=6, progress=False,
                 output_type="latent", **SETTINGS).latents  # fmt: skip
    assert (moved - plain)[:, :, 0].abs().max() < (moved - plain)[:, :, 3].abs().max()


def test_frame_embeddings_reach_every_block(ours):
    unet = ours.denoiser.module
    seen = []
    marker = torch.full((4, unet.time_embedding.linear_2.out_features), 0.5)
    cond = ours.prompt_encoder([PROMPT])
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    with frame_embeddings(unet, marker):  # observers registered after the swap see what the block gets
        hooks = [b.register_forward_pre_hook(lambda m, a, k: seen.append(k.get("temb", a[1] if len(a) > 1 else None)),
                                             with_kwargs=True) for b in blocks]  # fmt: skip
        ours.denoiser.predict(torch.randn(1, 4, 4, 8, 8), torch.tensor(500), cond)
    for h in hooks:
        h.remove()
    assert len(seen) == len(blocks) and all(s is marker for s in seen)


@pytest.mark.parametrize(
    ("model", "module", "message"),
    [
        ("model", "sd1_mm", r"was made for a UNet with block widths \(32, 64\).*has \(32, 64, 128\)"),
        ("sd1", "mm_sdxl.safetensors", r"was made for a UNet with block widths \(32, 64, 128\)"),
        ("sd1", "hsxl_temporal_layers.safetensors", "is an SDXL motion module .*this model is Stable Diffusion 1.x"),
        ("model", "hotshot_broken.safetensors", "Hotshot-XL file with missing layers"),
    ],
)
def test_motion_modules_for_the_other_family_are_refused(sdxl, sd1_folder, adapter_folder, model, module, message):
    broken = to_hotshot(MotionAdapter.from_pretrained(sdxl / "hotshot_folder"))
    save_file({k: v for k, v in broken.items() if ".up_blocks.1.temporal_attentions.2." not in f".{k}"},
              sdxl / "hotshot_broken.safetensors")  # fmt: skip
    paths = {"model": sdxl / "model", "sd1": sd1_folder, "sd1_mm": adapter_folder}
    with pytest.raises(LoadError, match=message) as err:
        VideoPipeline.from_pretrained(str(paths.get(model)), str(paths.get(module, sdxl / module)), dtype="float32")
    assert err.value.argument == "--motion-module"


def kohya_sdxl_lora(path, seed: int = 0) -> None:
    """A kohya / A1111 SDXL LoRA: SGM block names for the UNet, `lora_te1_` / `lora_te2_` for the encoders."""
    torch.manual_seed(seed)
    layers = {  # name -> (in, out) (tiny SDXL: down_blocks.1 is input_blocks.4, 64 wide; text 32 + 64 wide)
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (64, 64),
        "lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_v": (96, 128),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (32, 32),
        "lora_te1_text_model_encoder_layers_0_self_attn_out_proj": (32, 32),  # kohya trains q, k, v and out
        "lora_te2_text_model_encoder_layers_1_mlp_fc1": (64, 128),
    }
    state = {}
    for name, (width, out) in layers.items():
        state[f"{name}.lora_down.weight"] = 0.1 * torch.randn(4, width)
        state[f"{name}.lora_up.weight"] = 0.1 * torch.randn(out, 4)
        state[f"{name}.alpha"] = torch.tensor(2.0)
    save_file(state, path)


def test_kohya_sdxl_lora_matches_diffusers(sdxl):
    from diffusers import StableDiffusionXLPipeline

    kohya_sdxl_lora(sdxl / "sdxl_lora.safetensors")
    ours = VideoPipeline.from_pretrained(str(sdxl / "model"), str(sdxl / "mm_folder"), dtype="float32",
                                         loras=(f"{sdxl / 'sdxl_lora.safetensors'}:0.7",))  # fmt: skip
    ref = StableDiffusionXLPipeline.from_pretrained(sdxl / "model")
    ref.load_lora_weights(str(sdxl / "sdxl_lora.safetensors"))
    ref.fuse_lora(lora_scale=0.7)
    ref.unload_lora_weights()  # the fused weights stay
    plain = UNet2DConditionModel.from_pretrained(sdxl / "model" / "unet").state_dict()
    got, want = ours.denoiser.module.state_dict(), ref.unet.state_dict()
    changed = [k for k in plain if not k.endswith("lora_A.weight") and not torch.equal(plain[k], want[k])]
    assert len(changed) == 2  # both UNet layers moved
    for key in plain:
        assert torch.allclose(got[key], want[key], atol=1e-6), key
    for mine, theirs in zip(ours.prompt_encoder.encoders, (ref.text_encoder, ref.text_encoder_2), strict=True):
        want = {k: v for k, v in theirs.state_dict().items() if "lora" not in k}
        for key, value in mine.state_dict().items():
            assert torch.allclose(value, want[key], atol=1e-6), key


def test_a_diffusers_layout_sdxl_lora_adds_scale_times_b_a(tmp_path, sdxl, ours):
    """A LoRA in diffusers' / peft's layout (`unet.*`, `text_encoder_2.*`, lora_A/lora_B, no alphas) lands in the
    UNet and the second text encoder as W + scale * B @ A. (diffusers infers a text encoder's LoRA layout from
    its attention layers, so a text-encoder LoRA on the MLP alone does not load there either.)"""
    torch.manual_seed(3)
    layers = {"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": (64, 64),
              "text_encoder_2.text_model.encoder.layers.1.self_attn.q_proj": (64, 64),
              "text_encoder_2.text_model.encoder.layers.1.mlp.fc1": (64, 128)}  # fmt: skip
    state = {}
    for name, (width, out) in layers.items():
        state[f"{name}.lora_A.weight"] = 0.1 * torch.randn(4, width)
        state[f"{name}.lora_B.weight"] = 0.1 * torch.randn(out, 4)
    save_file(state, tmp_path / "diffusers_lora.safetensors")
    pipe = VideoPipeline.from_pretrained(str(sdxl / "model"), str(sdxl / "mm_folder"), dtype="float32",
                                         loras=(f"{tmp_path / 'diffusers_lora.safetensors'}:0.7",))  # fmt: skip
    text = (ours.prompt_encoder.encoders[1], pipe.prompt_encoder.encoders[1])
    targets = [
        (ours.denoiser.module, pipe.denoiser.module, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
        (*text, "text_model.encoder.layers.1.self_attn.q_proj"),
        (*text, "text_model.encoder.layers.1.mlp.fc1"),
    ]
    for (plain, loaded, layer), name in zip(targets, layers, strict=True):
        delta = 0.7 * state[f"{name}.lora_B.weight"] @ state[f"{name}.lora_A.weight"]
        want = plain.get_submodule(layer).weight + delta
        assert torch.allclose(loaded.get_submodule(layer).weight, want, atol=1e-6), layer


def test_loras_for_the_other_family_are_refused(sdxl, sd1_folder, adapter_folder):
    kohya_sdxl_lora(sdxl / "sdxl_lora.safetensors")
    sd1_lora = sdxl / "sd1_lora.safetensors"
    save_file({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 32)}, sd1_lora)
    cases = [(sd1_folder, adapter_folder, sdxl / "sdxl_lora.safetensors", "for SDXL"),
             (sdxl / "model", sdxl / "mm_folder", sd1_lora, "for Stable Diffusion 1.x")]  # fmt: skip
    for model, module, lora, what in cases:
        with pytest.raises(LoadError, match=f"is a LoRA {what}; this model is") as err:
            VideoPipeline.from_pretrained(str(model), str(module), dtype="float32", loras=(str(lora),))
        assert err.value.argument == "--lora"


FAST = ["--frames", "8", "--steps", "4", "--height", "64", "--width", "64", "--seed", "2", "--quiet",
        "--dtype", "float32"]  # fmt: skip


@pytest.fixture(scope="module")
def xl(sdxl) -> list[str]:
    return ["--model", str(sdxl / "model"), "--motion-module", str(sdxl / "mm_sdxl.safetensors")]


def _latents(path) -> torch.Tensor:
    from vidiff.latents_io import load_latents

    return load_latents(path).latents


def test_split_across_the_cli_equals_one_run_and_sd1_latents_are_refused(tmp_path, xl, sd1_folder, capsys):
    dpm = ["--scheduler", "dpm++2m"]
    assert cli("generate", "a cat", *xl, *FAST, *dpm, "-o", tmp_path / "whole.safetensors") == 0
    assert (
        cli("generate", "a cat", *xl, *FAST, *dpm, "--denoising-end", "0.5", "-o", tmp_path / "half.safetensors") == 0
    )
    seeds = f"latents: {tmp_path / 'half.safetensors'}"
    assert cli("generate", "a cat", *xl, *FAST, *dpm, "--denoising-start", "0.5", "--image-seeds", seeds,
               "-o", tmp_path / "rest.safetensors") == 0  # fmt: skip
    assert (_latents(tmp_path / "whole.safetensors") - _latents(tmp_path / "rest.safetensors")).abs().max() <= 1e-5
    sd1 = ["--model", str(sd1_folder), "--mode", "sequential"]
    assert cli("generate", "a cat", *sd1, *FAST, "--denoising-end", "0.5", "-o", tmp_path / "sd1.safetensors") == 0
    seeds = f"latents: {tmp_path / 'sd1.safetensors'}"
    assert cli("generate", "a cat", *xl, *FAST, "--denoising-start", "0.5", "--image-seeds", seeds,
               "-o", tmp_path / "o.gif") == 2  # fmt: skip
    assert "sd1.safetensors holds sd1 latents; this model is sdxl" in capsys.readouterr().err
    assert not (tmp_path / "o.gif").exists()


@pytest.mark.parametrize(
    "extra",
    [
        ["--prompt-2", "a blue square", "--negative-prompt", "blurry"],
        ["--context-length", "4", "--context-overlap", "2"],  # context windows over the UNet
        ["--context-length", "4", "--context-overlap", "2", "--context-scope", "motion"],  # FreeNoise
        ["--prompt-travel", "0: a cat | 7: a dog", "--context-length", "4", "--context-overlap", "2"],
        ["--free-init", "2"],
        ["--motion-scale", "1.3"],
        ["--fast"],
        ["--pab", "--deep-cache"],
        ["--lora", "LORA:0.8"],
        ["--vae", "VAE"],
    ],
)
def test_every_option_runs_on_sdxl(tmp_path, sdxl, xl, extra):
    """Each option on the SDXL backbone makes a video that differs from the plain run (or, for --vae, equals it:
    the same VAE from a single file)."""
    kohya_sdxl_lora(sdxl / "sdxl_lora.safetensors")
    from diffusers import AutoencoderKL
    from test_single_file import vae_to_ldm

    vae = AutoencoderKL.from_pretrained(sdxl / "model" / "vae").state_dict()
    save_file({k: v.contiguous() for k, v in vae_to_ldm(vae, 4).items()}, tmp_path / "sdxl_vae.safetensors")
    names = {"LORA:0.8": f"{sdxl / 'sdxl_lora.safetensors'}:0.8", "VAE": str(tmp_path / "sdxl_vae.safetensors")}
    extra = [names.get(e, e) for e in extra]
    assert cli("generate", "a cat", *xl, *FAST, "-o", tmp_path / "plain.pt") == 0
    assert cli("generate", "a cat", *xl, *FAST, *extra, "-o", tmp_path / "out.pt") == 0
    plain, out = _latents(tmp_path / "plain.pt"), _latents(tmp_path / "out.pt")
    assert out.shape == plain.shape == (1, 4, 8, 8, 8) and torch.isfinite(out).all()
    if "--vae" in extra:
        assert torch.equal(out, plain)
    else:
        assert (out - plain).abs().max() > 1e-3, extra


def test_video_to_video_inpainting_and_sequential_mode(tmp_path, sdxl, xl):
    from helpers import source_and_mask

    seeds = source_and_mask(tmp_path)
    assert cli("generate", "a cat", *xl, *FAST, "--image-seeds", tmp_path / "src.gif", "--image-seed-strength",
               "0.5", "-o", tmp_path / "v2v.mp4") == 0  # fmt: skip
    assert cli("generate", "a cat", *xl, *FAST, "--image-seeds", seeds, "-o", tmp_path / "inpaint.gif") == 0
    single = ["--model", str(sdxl / "sdxl.safetensors"), "--mode", "sequential"]
    assert cli("generate", "a cat", *single, *FAST, "-o", tmp_path / "frames.gif") == 0
    assert all((tmp_path / n).stat().st_size > 0 for n in ("v2v.mp4", "inpaint.gif", "frames.gif"))


def test_sequential_mode_equals_diffusers_sdxl_per_frame(sdxl):
    from diffusers import StableDiffusionXLPipeline

    seq = VideoPipeline.from_pretrained(str(sdxl / "model"), mode="sequential", dtype="float32")
    ours = seq(PROMPT, seed=9, progress=False, output_type="latent", **SETTINGS).latents  # (1, 4, F, 8, 8)
    ref = StableDiffusionXLPipeline.from_pretrained(sdxl / "model")
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = make_scheduler("ddim", dict(ref.scheduler.config))
    start = seq.denoiser.initial_noise((1, 4, 4, 8, 8), torch.Generator("cpu").manual_seed(9), "cpu", torch.float32)
    for f in range(4):
        want = ref(PROMPT, num_inference_steps=3, latents=start[:, :, f].clone(), output_type="latent", height=64,
                   width=64, guidance_scale=7.5).images  # fmt: skip
        assert (ours[:, :, f] - want).abs().max().item() <= ATOL


def _release_width_module(path) -> None:
    """The motion-module norms of AnimateDiff-SDXL's released shape (widths 320/640/1280), nothing else."""
    save_file({f"down_blocks.{i}.motion_modules.0.temporal_transformer.norm.weight": torch.ones(w)
               for i, w in enumerate((320, 640, 1280))}, path)  # fmt: skip


@pytest.mark.parametrize(
    ("case", "flag", "message"),
    [
        (
            "sdxl module on sd1",
            "--motion-module",
            "mm_sdxl_v10_beta.safetensors is an SDXL motion module; this model is Stable Diffusion 1.x",
        ),
        ("hotshot on sd1", "--motion-module", "is an SDXL motion module; this model is Stable Diffusion 1.x"),
        ("sd1 module on sdxl", "--motion-module", "is a Stable Diffusion 1.x motion module; this model is SDXL"),
        ("sdxl lora on sd1", "--lora", "sdxl_lora.safetensors is a LoRA for SDXL; this model is Stable Diffusion 1.x"),
        ("sd1 lora on sdxl", "--lora", "is a LoRA for Stable Diffusion 1.x; this model is SDXL"),
        ("refiner file", "--model", "refiner.safetensors is an SDXL refiner checkpoint"),
        ("refiner folder", "--model", "is an SDXL refiner checkpoint"),
        ("prompt-3 on sdxl", "--prompt-3", "this sdxl model has no text encoder for it"),
    ],
)
def test_bad_input_is_refused_before_loading(tmp_path, sdxl, sd1_folder, adapter_folder, capsys, case, flag, message):
    """One line, exit 2, and (--dry-run proves it) before any weights load."""
    _release_width_module(tmp_path / "mm_sdxl_v10_beta.safetensors")
    sd1_release = tmp_path / "mm_sd_v15_v2.safetensors"
    save_file({f"down_blocks.{i}.motion_modules.0.temporal_transformer.norm.weight": torch.ones(w)
               for i, w in enumerate((320, 640, 1280, 1280))}, sd1_release)  # fmt: skip
    kohya_sdxl_lora(tmp_path / "sdxl_lora.safetensors")
    save_file({"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 32)},
              tmp_path / "sd1_lora.safetensors")  # fmt: skip
    save_file({"conditioner.embedders.0.model.transformer.resblocks.0.ln_1.weight": torch.ones(4)},
              tmp_path / "refiner.safetensors")  # fmt: skip
    (tmp_path / "refiner").mkdir()
    (tmp_path / "refiner" / "model_index.json").write_text('{"_class_name": "StableDiffusionXLImg2ImgPipeline"}')
    sd1, xl_model = ["--model", str(sd1_folder)], ["--model", str(sdxl / "model")]
    args = {
        "sdxl module on sd1": [*sd1, "--motion-module", tmp_path / "mm_sdxl_v10_beta.safetensors"],
        "hotshot on sd1": [*sd1, "--motion-module", sdxl / "hsxl_temporal_layers.safetensors"],
        "sd1 module on sdxl": [*xl_model, "--motion-module", sd1_release],
        "sdxl lora on sd1": [*sd1, "--motion-module", adapter_folder, "--lora", tmp_path / "sdxl_lora.safetensors"],
        "sd1 lora on sdxl": [*xl_model, "--lora", tmp_path / "sd1_lora.safetensors"],
        "refiner file": ["--model", tmp_path / "refiner.safetensors"],
        "refiner folder": ["--model", tmp_path / "refiner"],
        "prompt-3 on sdxl": [*xl_model, "--prompt-3", "x"],
    }[case]
    for dry in (["--dry-run"], []):
        assert cli("generate", "a cat", *args, *FAST, *dry, "-o", tmp_path / "o.gif") == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{flag}:" in err and message in err, err
    assert not (tmp_path / "o.gif").exists()


def test_training_an_sdxl_folder_is_refused_in_one_line(tmp_path, sdxl, capsys):
    (tmp_path / "clips").mkdir()
    code = cli("train", "motion", "--model", sdxl / "model", "--data", tmp_path / "clips", "--steps", "1")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "vidiff train trains sd1 and sd3 models, not sdxl" in err


def test_interrupted_run_resumes_to_the_same_video(tmp_path, sdxl):
    from vidiff import GenerationRequest, LoadSettings, RenderJob, render
    from vidiff.latents_io import load_latents
    from vidiff.renderer import Renderer

    load = LoadSettings(str(sdxl / "model"), str(sdxl / "mm_sdxl.safetensors"), dtype="float32")
    request = GenerationRequest("a cat", frames=4, steps=6, height=64, width=64, seed=5, scheduler="dpm++2m")
    whole = render(RenderJob(request, output=str(tmp_path / "whole.pt"), load=load))
    job = RenderJob(request, output=str(tmp_path / "run.safetensors"), checkpoint_every=2, load=load)
    renderer = Renderer()
    pipe, _ = renderer.pipeline(job)
    original, calls = pipe.denoiser.predict, []

    def stop_after_four(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(*args)

    pipe.denoiser.predict = stop_after_four
    with pytest.raises(KeyboardInterrupt):
        renderer.render(job)
    del pipe.denoiser.predict
    checkpoint = tmp_path / "run.safetensors.resume.safetensors"
    assert load_latents(checkpoint).meta.step == 2 and load_latents(checkpoint).meta.family == "sdxl"
    result = renderer.render(RenderJob(GenerationRequest(""), resume=str(checkpoint)))
    assert (result.latents - whole.latents).abs().max() <= 1e-5


def test_batch_renders_sdxl_jobs_as_generate_does(tmp_path, sdxl, xl):
    import json

    from vidiff.batch import Manifest, defaults_from, plan, read_jobs, run_local
    from vidiff.cli import build_parser

    model = {"model": str(sdxl / "model"), "motion_module": str(sdxl / "mm_sdxl.safetensors")}
    lines = [
        {"prompt": "a cat", "seed": 1, **model},
        {"prompt": "a dog", "prompt_2": "watercolour", "seed": 2, **model},
    ]
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(j) for j in lines) + "\n")
    flags = ["--frames", "4", "--steps", "2", "--height", "64", "--width", "64", "--dtype", "float32", "--quiet"]
    args = build_parser().parse_args(["batch", str(tmp_path / "jobs.jsonl"), "-o", str(tmp_path / "out"), *flags])
    items = plan(read_jobs(str(tmp_path / "jobs.jsonl")), defaults_from(args), str(tmp_path / "out"),
                 args.name_template, [])  # fmt: skip
    report = run_local(items, Manifest(str(tmp_path / "out")), progress=False)
    assert report.loads == 1 and not report.failed and len(report.records) == 2
    for item, line in zip(items, lines, strict=True):
        alone = tmp_path / f"alone-{line['seed']}{Path(item.job.output).suffix}"
        extra = ["--prompt-2", line["prompt_2"]] if "prompt_2" in line else []
        assert cli("generate", line["prompt"], *xl, *flags, *extra, "--seed", str(line["seed"]), "-o", alone) == 0
        assert alone.read_bytes() == Path(item.job.output).read_bytes()


def test_a_saved_animatediff_sdxl_pipeline_loads_without_a_motion_module(tmp_path, sdxl, ours):
    """AnimateDiffSDXLPipeline.save_pretrained writes its UNetMotionModel (motion modules inside)."""
    pipe = AnimateDiffSDXLPipeline.from_pretrained(sdxl / "model", motion_adapter=MotionAdapter.from_pretrained(
        sdxl / "mm_folder"))  # fmt: skip
    pipe.unet.add_embedding.load_state_dict(ours.denoiser.module.add_embedding.state_dict())
    pipe.save_pretrained(tmp_path / "saved")
    saved = VideoPipeline.from_pretrained(str(tmp_path / "saved"), dtype="float32")
    assert saved.spec.name == "sdxl" and "AnimateDiff-SDXL" in saved.notes[0]
    a = saved(PROMPT, seed=8, progress=False, output_type="latent", **SETTINGS).latents
    b = ours(PROMPT, seed=8, progress=False, output_type="latent", **SETTINGS).latents
    assert (a - b).abs().max().item() <= 1e-5


def test_a_float16_run_keeps_a_vae_that_would_overflow_in_float32():
    """SDXL's stock VAE overflows in float16 (`force_upcast` in its config); diffusers' pipelines decode it in
    float32, and so does vidiff. Float16 needs a GPU, so the rule is checked on its own."""
    from diffusers import AutoencoderKL

    from vidiff.adapters.unet_motion import vae_dtype

    stock, fixed = AutoencoderKL(force_upcast=True), AutoencoderKL(force_upcast=False)
    assert vae_dtype(stock, torch.float16) == torch.float32 and vae_dtype(fixed, torch.float16) == torch.float16
    assert vae_dtype(stock, torch.bfloat16) == torch.bfloat16


def test_a_refiner_is_told_by_its_five_time_ids_too(tmp_path):
    """A folder that does not call itself a refiner is still one when its added embedding takes five time ids
    (original size, crop, aesthetic score) instead of six."""
    from vidiff.adapters.unet_sdxl import _refuse_refiner

    base = {"addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 1280 + 6 * 256}
    _refuse_refiner(base, 1280, tmp_path)
    with pytest.raises(LoadError, match="is an SDXL refiner"):
        _refuse_refiner(base | {"projection_class_embeddings_input_dim": 1280 + 5 * 256}, 1280, tmp_path)
