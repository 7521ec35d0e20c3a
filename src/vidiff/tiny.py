"""Tiny randomly initialised SD 1.x + AnimateDiff components, saved in the real folder formats.

Tests build these and load them back through the real loading code; `--model tiny-random` uses them for a
smoke run. The output of a random model is noise by design.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    MotionAdapter,
    SparseControlNetModel,
    UNet2DConditionModel,
)
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .layout import MOTION_ADAPTER, T5, clip_text_config, write_model_index

TEXT_DIM = 32


def byte_level_clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over the 256 byte symbols and no merges (514 tokens), built offline."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def tiny_unet(cross_attention_dim: int = TEXT_DIM) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def tiny_motion_adapter(max_frames: int = 32, mid_block: bool = True) -> MotionAdapter:
    return MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=2,
        motion_num_attention_heads=8,
        motion_norm_num_groups=32,
        motion_max_seq_length=max_frames,
        use_motion_mid_block=mid_block,
    )


def fill_zero_layers(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Give the layers that start at zero (ControlNet's zero convolutions) random values: a test of what they
    add cannot then pass vacuously."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model


def tiny_controlnet(norm_num_groups: int = 8, seed: int = 0) -> ControlNetModel:
    """A ControlNet for `tiny_unet` (same widths and text width), zero convolutions filled."""
    torch.manual_seed(seed)
    model = ControlNetModel(
        block_out_channels=(32, 64), layers_per_block=2, in_channels=4, cross_attention_dim=TEXT_DIM,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=8,
        norm_num_groups=norm_num_groups, conditioning_embedding_out_channels=(8, 8, 16, 16),
    )  # fmt: skip
    return fill_zero_layers(model, seed)


def tiny_sparsectrl(rgb: bool, seed: int = 0) -> SparseControlNetModel:
    """A SparseCtrl model for `tiny_unet`: RGB (VAE latents in, the simplified embedding) or scribble (images
    in); SD 1.x's 32 norm groups and 8 heads, as an original file's shapes are read; zero layers filled."""
    torch.manual_seed(seed)
    model = SparseControlNetModel(
        block_out_channels=(32, 64), layers_per_block=2, in_channels=4, cross_attention_dim=TEXT_DIM,
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"), attention_head_dim=8, norm_num_groups=32,
        conditioning_channels=4 if rgb else 3, use_simplified_condition_embedding=rgb,
        conditioning_embedding_out_channels=(8, 8, 16, 16), motion_max_seq_length=32,
    )  # fmt: skip
    return fill_zero_layers(model, seed)


def tiny_image_encoder(projection_dim: int = 16, seed: int = 0):
    """A CLIP vision encoder with projection, 32-pixel images (what an IP-Adapter embeds its image with)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=projection_dim)  # fmt: skip
    return CLIPVisionModelWithProjection(config)


def tiny_ip_adapter(unet: nn.Module, image_dim: int = 16, tokens: int = 4, seed: int = 0) -> dict:
    """An IP-Adapter (h94's layout: `image_proj` and `ip_adapter` with `{1,3,5,...}.to_k_ip/to_v_ip` in the
    order of the UNet's cross-attention processors) with random weights for `unet`."""
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(shape, generator=generator) * 0.1  # noqa: E731
    cross = unet.config.cross_attention_dim
    image_proj = {"proj.weight": rand(tokens * cross, image_dim), "proj.bias": rand(tokens * cross),
                  "norm.weight": 1 + rand(cross), "norm.bias": rand(cross)}  # fmt: skip
    ip_adapter, key = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor") and "motion_modules" not in name:
            hidden = unet.get_submodule(name.removesuffix(".processor")).to_k.weight.shape[0]
            ip_adapter[f"{key}.to_k_ip.weight"] = rand(hidden, cross)
            ip_adapter[f"{key}.to_v_ip.weight"] = rand(hidden, cross)
            key += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def tiny_vae() -> AutoencoderKL:
    """Four blocks, so pixels -> latents is 8x down, as in Stable Diffusion."""
    return AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def tiny_text_encoder(vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(clip_text_config(vocab_size, TEXT_DIM, layers=2, heads=4, intermediate=37))


def sd1_scheduler() -> DDIMScheduler:
    """The scheduler config Stable Diffusion 1.5 folders ship (as DDIM)."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_random_folder(cache: Path) -> Path:
    """`--model tiny-random`: a tiny SD 1.x folder with a motion adapter, built once into `cache`."""
    folder = cache / "tiny-random"
    if not (folder / "model_index.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tiny-"))
        save_tiny_sd1(tmp, motion_adapter=True)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return folder


def save_tiny_sd1(folder: str | Path, seed: int = 0, motion_adapter: bool = False) -> Path:
    """Write a tiny SD 1.x diffusers folder (model_index.json + components); optionally a motion_adapter/."""
    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = byte_level_clip_tokenizer(folder / "tokenizer")
    tokenizer.save_pretrained(folder / "tokenizer")
    tiny_text_encoder(len(tokenizer)).save_pretrained(folder / "text_encoder")
    tiny_unet().save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    sd1_scheduler().save_pretrained(folder / "scheduler")
    if motion_adapter:
        tiny_motion_adapter().save_pretrained(folder / "motion_adapter")
    write_model_index(folder, **(MOTION_ADAPTER if motion_adapter else {}))
    return folder


def byte_level_t5_tokenizer(folder: Path):
    """A T5 tokenizer (Unigram over single characters, `</s>` appended), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(33, 127)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def save_tiny_sd3(folder: str | Path, seed: int = 0, t5: bool = True) -> Path:
    """Write a tiny SD 3 diffusers folder: MMDiT, CLIP-L/G with projections, optional T5, 16-channel VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    folder = Path(folder)
    torch.manual_seed(seed)
    SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=16,
    ).save_pretrained(folder / "transformer")  # fmt: skip
    for i, name in enumerate(("", "_2")):
        tokenizer = byte_level_clip_tokenizer(folder / f"tokenizer{name}")
        tokenizer.save_pretrained(folder / f"tokenizer{name}")
        vocab = len(tokenizer)
        config = clip_text_config(vocab, 32, layers=2, heads=4, intermediate=37, projection_dim=32, hidden_act="gelu")
        torch.manual_seed(seed + 1 + i)
        CLIPTextModelWithProjection(config).save_pretrained(folder / f"text_encoder{name}")
    if t5:
        tokenizer = byte_level_t5_tokenizer(folder / "tokenizer_3")
        T5EncoderModel(
            T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4)
        ).save_pretrained(folder / "text_encoder_3")
    AutoencoderKL(
        block_out_channels=(16, 16, 32, 32), in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8,
        sample_size=64, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False,
    ).save_pretrained(folder / "vae")  # fmt: skip
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(folder / "scheduler")
    write_model_index(folder, "StableDiffusion3Pipeline", **(T5 if t5 else {}))
    return folder


def save_tiny_latte(folder: str | Path, seed: int = 0, video_length: int = 16) -> Path:
    """Write a tiny Latte diffusers folder: LatteTransformer3DModel, T5, the 4-channel VAE, DDIM."""
    from diffusers import LatteTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    folder = Path(folder)
    torch.manual_seed(seed)
    LatteTransformer3DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, caption_channels=32,
        in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        video_length=video_length,
    ).save_pretrained(folder / "transformer")  # fmt: skip
    tokenizer = byte_level_t5_tokenizer(folder / "tokenizer")
    T5EncoderModel(
        T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4)
    ).save_pretrained(folder / "text_encoder")
    tiny_vae().save_pretrained(folder / "vae")
    sd1_scheduler().save_pretrained(folder / "scheduler")
    write_model_index(folder, "LattePipeline")
    return folder


SDXL_TEXT_WIDTHS = (32, 64)  # CLIP-L and OpenCLIP bigG stand-ins; the UNet attends to both side by side
SDXL_POOLED = 48  # bigG's projection (1280 in SDXL)
SDXL_SCHEDULER = {  # scheduler/scheduler_config.json as SDXL base 1.0 ships it (Euler, with DDIM's keys too)
    "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "clip_sample": False, "interpolation_type": "linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None,
    "use_karras_sigmas": False,
}  # fmt: skip


def tiny_sdxl_unet(sample_size: int = 8) -> UNet2DConditionModel:
    """SDXL's UNet shape at tiny width: three levels (the first without attention), transformer depths that
    differ per level, 64-wide heads, 32 norm groups and SDXL's 256-wide micro-conditioning embeddings, so a
    single file's shapes say all the rest."""
    return UNet2DConditionModel(
        block_out_channels=(32, 64, 128), layers_per_block=2, sample_size=sample_size,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), attention_head_dim=(1, 1, 2), norm_num_groups=32,
        cross_attention_dim=sum(SDXL_TEXT_WIDTHS), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=SDXL_POOLED + 6 * 256,
    )  # fmt: skip


def tiny_sdxl_motion_adapter(max_frames: int = 32) -> MotionAdapter:
    """An AnimateDiff-SDXL-shaped motion module for `tiny_sdxl_unet` (no mid block; Hotshot-XL: 24 frames)."""
    return MotionAdapter(
        block_out_channels=(32, 64, 128), motion_layers_per_block=2, motion_num_attention_heads=8,
        motion_norm_num_groups=32, motion_max_seq_length=max_frames, use_motion_mid_block=False,
    )  # fmt: skip


def save_tiny_sdxl(folder: str | Path, seed: int = 0, motion_adapter: bool = False) -> Path:
    """Write a tiny SDXL diffusers folder (two CLIP encoders on the real CLIP vocabulary, the second with a
    projection and "!" padding; 32-group VAE scaled 0.13025); optionally an SDXL motion_adapter/."""
    from transformers import CLIPTextModelWithProjection

    from .loading import CLIP_TOKENIZER

    folder = Path(folder)
    torch.manual_seed(seed)
    tiny_sdxl_unet().save_pretrained(folder / "unet")
    for name, pad in (("tokenizer", None), ("tokenizer_2", "!")):
        CLIPTokenizer.from_pretrained(CLIP_TOKENIZER, **({"pad_token": pad} if pad else {})).save_pretrained(
            folder / name
        )
    (first, second), vocab = SDXL_TEXT_WIDTHS, 49408
    CLIPTextModel(clip_text_config(vocab, first, 2, 1, 37)).save_pretrained(folder / "text_encoder")
    config = clip_text_config(vocab, second, 2, 1, 128, projection_dim=SDXL_POOLED, hidden_act="gelu")
    CLIPTextModelWithProjection(config).save_pretrained(folder / "text_encoder_2")
    AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32, scaling_factor=0.13025,
        sample_size=64,
    ).save_pretrained(folder / "vae")  # fmt: skip
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SDXL_SCHEDULER))
    if motion_adapter:
        tiny_sdxl_motion_adapter().save_pretrained(folder / "motion_adapter")
    extra = MOTION_ADAPTER if motion_adapter else {}
    write_model_index(folder, "StableDiffusionXLPipeline", force_zeros_for_empty_prompt=True, **extra)
    return folder
