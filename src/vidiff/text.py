"""Prompt encoders: turn prompts into `Conditioning` the way diffusers' pipelines do."""

from __future__ import annotations

import torch
from transformers import CLIPTextModel, CLIPTokenizer

from .adapters.base import Conditioning


class ClipPromptEncoder:
    """One CLIP text encoder (SD 1.x): last hidden state of the padded 77-token prompt."""

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> Conditioning:
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = self.text_encoder.device
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = tokens.attention_mask.to(device) if use_mask else None
        embeds = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]  # (B, 77, D)
        return Conditioning(embeds=embeds.to(self.text_encoder.dtype))
