"""SDXL with AnimateDiff-SDXL and Hotshot-XL motion modules: parity with diffusers' AnimateDiffSDXLPipeline,
every checkpoint and motion-module layout users have loading to identical weights, and what SDXL adds.

Tiny SDXL-shaped weights (`vidiff.tiny.save_tiny_sdxl`): three UNet levels, two CLIP encoders on the real
vocabulary, pooled embedding and 256-wide micro-conditioning, as the single-file reader assumes of SDXL.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import AnimateDiffSDXLPipeline, MotionAdapter, UNet2DConditionModel
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
