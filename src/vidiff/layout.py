"""Diffusers folder layouts vidiff writes itself: `model_index.json` per pipeline, and CLIP text configs.

Used by everything that makes a model folder: the demo trainer, the tiny test models, the benchmark's
SD 1.5-sized random weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
from transformers import CLIPTextConfig

from .atomic import atomic_file

PIPELINES: dict[str, dict] = {  # model_index.json entries per pipeline class
    "StableDiffusionPipeline": {
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
    },
    "StableDiffusionXLPipeline": {
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "image_encoder": [None, None],
        "feature_extractor": [None, None],
    },
    "StableDiffusion3Pipeline": {
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": [None, None],
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "LattePipeline": {
        "transformer": ["diffusers", "LatteTransformer3DModel"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    },
}
T5 = {"text_encoder_3": ["transformers", "T5EncoderModel"], "tokenizer_3": ["transformers", "T5TokenizerFast"]}
MOTION_ADAPTER = {"motion_adapter": ["diffusers", "MotionAdapter"]}


def write_model_index(folder: Path, pipeline: str = "StableDiffusionPipeline", **extra) -> None:
    """`model_index.json` for `pipeline`, with `extra` components (e.g. `**MOTION_ADAPTER`, `**T5`)."""
    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__} | PIPELINES[pipeline] | extra
    with atomic_file(Path(folder) / "model_index.json") as tmp:
        tmp.write_text(json.dumps(index, indent=2))


def clip_text_config(vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int, **extra):
    """A CLIP text encoder config whose special tokens are the vocabulary's last two (start, end = pad)."""
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        **extra,
    )
