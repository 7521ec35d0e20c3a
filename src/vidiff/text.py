"""Prompt encoders: turn prompts into `Conditioning` the way diffusers' pipelines do."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import CLIPTextModel, CLIPTokenizer

from .conditioning import Conditioning


class PromptEncoder:
    """Prompts -> Conditioning; `encode_pair` gives (cond, uncond or None) for classifier-free guidance."""

    def __call__(self, prompts: list[str], **options) -> Conditioning:
        raise NotImplementedError

    def encode_pair(self, prompts: list[str], negatives: list[str] | None, prompts_2=None, prompts_3=None, **options):
        """The negative prompt goes to every encoder (diffusers' default for negative_prompt_2 and _3)."""
        cond = self(prompts, prompts_2=prompts_2, prompts_3=prompts_3, **options)
        return cond, self.negative(negatives, **options) if negatives is not None else None

    def negative(self, prompts: list[str], **options) -> Conditioning:
        """The negative side of guidance (encoded as any prompt unless a model says otherwise)."""
        return self(prompts, **options)

    @property
    def modules(self) -> list[torch.nn.Module]:
        """The text encoders (for memory figures)."""
        return [self.text_encoder]


def penultimate_and_pooled(tokenizer, encoder, prompts: list[str]) -> tuple[Tensor, Tensor]:
    """A CLIP encoder's penultimate hidden states (B, 77, D) and its first output (B, P): the projected pooled
    embedding of an encoder with a projection (the last hidden state of one without), in its dtype."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    out = encoder(ids.to(encoder.device), output_hidden_states=True)
    return out.hidden_states[-2].to(encoder.dtype), out[0].to(encoder.dtype)  # (B, 77, D), (B, P)


class ClipPromptEncoder(PromptEncoder):
    """One CLIP text encoder (SD 1.x): last hidden state of the padded 77-token prompt."""

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @torch.no_grad()
    def __call__(self, prompts: list[str], **_unused) -> Conditioning:
        """`prompts` through the one CLIP; SD 3's extra prompts do not apply (the request rejects them)."""
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


class SD3PromptEncoder(PromptEncoder):
    """SD 3's three encoders, as diffusers' StableDiffusion3Pipeline.encode_prompt: CLIP-L and CLIP-G
    penultimate states side by side, padded to T5's width and followed by T5's tokens (zeros without T5);
    pooled = both CLIP projections."""

    def __init__(self, tokenizers: list, encoders: list, joint_attention_dim: int) -> None:
        self.tokenizers = tokenizers  # [clip-l, clip-g, t5 or None]
        self.encoders = encoders
        self.joint_attention_dim = joint_attention_dim

    def _clip(self, i: int, prompts: list[str]) -> tuple[Tensor, Tensor]:
        return penultimate_and_pooled(self.tokenizers[i], self.encoders[i], prompts)

    def _t5(self, prompts: list[str], max_sequence_length: int) -> Tensor:
        tokenizer, encoder = self.tokenizers[2], self.encoders[2]
        if encoder is None:
            dtype, device = self.encoders[0].dtype, self.encoders[0].device
            return torch.zeros(len(prompts), max_sequence_length, self.joint_attention_dim, dtype=dtype, device=device)
        ids = tokenizer(
            prompts, padding="max_length", max_length=max_sequence_length, truncation=True, add_special_tokens=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
        return encoder(ids.to(encoder.device))[0].to(encoder.dtype)  # (B, L, D_t5)

    def encode(
        self,
        prompts: list[str],
        prompts_2: list[str] | None = None,
        prompts_3: list[str] | None = None,
        max_sequence_length: int = 256,
    ) -> Conditioning:
        """`__call__` with gradients (the image stage trains the CLIP encoders through it)."""
        l_states, l_pooled = self._clip(0, prompts)
        g_states, g_pooled = self._clip(1, prompts_2 or prompts)
        t5 = self._t5(prompts_3 or prompts, max_sequence_length)  # (B, L, D_t5)
        clip = torch.cat([l_states, g_states], dim=-1)  # (B, 77, D_l + D_g)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # (B, 77, D_t5)
        return Conditioning(embeds=torch.cat([clip, t5], dim=-2), pooled=torch.cat([l_pooled, g_pooled], dim=-1))

    __call__ = torch.no_grad()(encode)

    @property
    def modules(self) -> list[torch.nn.Module]:
        return [e for e in self.encoders if e is not None]


class SDXLPromptEncoder(PromptEncoder):
    """SDXL's two CLIP encoders, as diffusers' StableDiffusionXLPipeline.encode_prompt: both penultimate hidden
    states side by side, pooled = the second's projection; an empty negative prompt is zeros on both
    (`force_zeros_for_empty_prompt`, which SDXL base sets)."""

    def __init__(self, tokenizers: list, encoders: list, zeros_for_empty: bool = True) -> None:
        self.tokenizers = tokenizers  # [clip-l, openclip-bigG (pads with "!")]
        self.encoders = encoders
        self.zeros_for_empty = zeros_for_empty

    @torch.no_grad()
    def __call__(self, prompts: list[str], prompts_2: list[str] | None = None, **_unused) -> Conditioning:
        first, _ = penultimate_and_pooled(self.tokenizers[0], self.encoders[0], prompts)  # (B, 77, D_l)
        second, pooled = penultimate_and_pooled(self.tokenizers[1], self.encoders[1], prompts_2 or prompts)
        dtype = self.encoders[1].dtype
        return Conditioning(embeds=torch.cat([first, second], dim=-1).to(dtype), pooled=pooled.to(dtype))

    def negative(self, prompts: list[str], **options) -> Conditioning:
        if not (self.zeros_for_empty and all(p == "" for p in prompts)):
            return self(prompts, **options)
        widths = sum(e.config.hidden_size for e in self.encoders)
        e = self.encoders[1]
        embeds = torch.zeros(len(prompts), self.tokenizers[0].model_max_length, widths, dtype=e.dtype, device=e.device)
        pooled = torch.zeros(len(prompts), e.config.projection_dim, dtype=e.dtype, device=e.device)
        return Conditioning(embeds=embeds, pooled=pooled)  # (B, 77, D_l + D_g), (B, P)

    @property
    def modules(self) -> list[torch.nn.Module]:
        return list(self.encoders)


class T5PromptEncoder(PromptEncoder):
    """Latte's T5, as diffusers' LattePipeline.encode_prompt: 120 tokens with their attention mask, then both
    sides cut to the longest prompt's unmasked length ("mask_feature")."""

    MAX_LENGTH = 120

    def __init__(self, tokenizer, text_encoder) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.MAX_LENGTH, truncation=True, return_attention_mask=True,
            add_special_tokens=True, return_tensors="pt",
        )  # fmt: skip
        device = self.text_encoder.device
        mask = tokens.attention_mask.to(device)
        embeds = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]  # (B, 120, D)
        return embeds.to(self.text_encoder.dtype), mask

    def __call__(self, prompts: list[str], **_unused) -> Conditioning:
        return self.encode_pair(prompts, None)[0]

    def encode_pair(self, prompts: list[str], negatives: list[str] | None, **_unused):
        embeds, mask = self._encode(prompts)
        keep = int(mask.sum(dim=-1).max())
        uncond = Conditioning(self._encode(negatives)[0][:, :keep]) if negatives is not None else None
        return Conditioning(embeds[:, :keep]), uncond
