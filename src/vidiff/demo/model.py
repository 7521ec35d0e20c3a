"""The demo model's architecture: Stable Diffusion 1.x components at tiny size, in diffusers formats.

64x64 pixels -> 16x16x4 latents (a 3-block VAE, 4x down), a 3-level UNet with cross-attention, a 2-layer
CLIP text encoder over the real CLIP vocabulary, and an AnimateDiff MotionAdapter matching the UNet.

Its SD 3-shaped sibling (`vidiff train ... --family sd3`) shares the VAE and tokenizer: a 4-block MMDiT over
2x2 patches of the same latents, two CLIP encoders with projections (SD 3's CLIP-L and CLIP-G; no T5) and
SD 3's flow-matching Euler scheduler.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ..layout import clip_text_config

TEXT_DIM = 64
VOCAB_SIZE = 49408  # CLIP's


def clip_tokenizer_from_bpe(bpe_gz: str | Path, folder: Path) -> CLIPTokenizer:
    """CLIP's tokenizer files (vocab.json, merges.txt) from its BPE list (`bpe_simple_vocab_16e6.txt.gz`)."""
    merges = gzip.decompress(Path(bpe_gz).read_bytes()).decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(folder)
    (folder / "tokenizer.json").unlink()  # 3.6 MB restating vocab.json + merges.txt, which load on their own
    return tokenizer


def demo_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def demo_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def demo_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(clip_text_config(VOCAB_SIZE, TEXT_DIM, layers=2, heads=4, intermediate=2 * TEXT_DIM))


def motion_adapter_for(unet_config: dict, heads: int = 8, max_frames: int = 32) -> MotionAdapter:
    """A MotionAdapter shaped for a UNet, with every temporal output projection at zero (identity at start)."""
    adapter = MotionAdapter(
        block_out_channels=tuple(unet_config["block_out_channels"]),
        motion_layers_per_block=unet_config["layers_per_block"],
        motion_num_attention_heads=heads,
        motion_norm_num_groups=32,
        motion_max_seq_length=max_frames,
        use_motion_mid_block=True,
    )
    for name, module in adapter.named_modules():
        if name.endswith("proj_out"):
            module.weight.data.zero_()
            module.bias.data.zero_()
    return adapter


def demo_sd3_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=2 * TEXT_DIM,  # CLIP-L and CLIP-G states side by side
        caption_projection_dim=128,
        pooled_projection_dim=2 * TEXT_DIM,  # both projections
        pos_embed_max_size=16,
    )


def demo_clip_with_projection():
    from transformers import CLIPTextModelWithProjection

    config = demo_text_encoder().config
    config.projection_dim = TEXT_DIM
    return CLIPTextModelWithProjection(config)


def demo_sd3_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=1.0)  # 64 tokens: no resolution shift


def demo_scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
