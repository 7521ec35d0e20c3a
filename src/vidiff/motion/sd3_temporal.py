"""AnimateDiff-style temporal attention for the SD 3 / 3.5 MMDiT, inserted without editing diffusers.

In each chosen `JointTransformerBlock` the image-token stream after the spatial attention residual, h1,
becomes h1 + T(h1) before the feed-forward: a forward pre-hook on the block's parameter-free `norm2` feeds
the feed-forward h1 + T(h1), and a forward hook on the block adds the same T(h1) to its output stream, so
the block returns h1 + T(h1) + FF(norm2(h1 + T(h1))), exactly as if the line were written into its forward.

T reshapes tokens `(b f) n c -> (b n) f c`, adds sinusoidal frame positions, attends across frames with
`scaled_dot_product_attention`, and projects out through a zero-initialised linear layer, so untrained
layers are exactly the identity.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..atomic import atomic_file
from ..errors import LoadError

ARG = "--motion-module"
FORMAT = "vidiff.sd3-temporal/1"


def sinusoid(length: int, dim: int) -> Tensor:
    """Transformer sine/cosine positions (length, dim), as AnimateDiff's PositionalEncoding."""
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (L, 1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (dim/2,)
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe  # (L, dim)


class TemporalAttention(nn.Module):
    """Multi-head self-attention across the frames of each token position."""

    def __init__(self, dim: int, heads: int, max_frames: int = 32) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.to_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.to_out.weight)  # a new layer is the identity: AnimateDiff's zero-initialised output
        nn.init.zeros_(self.to_out.bias)
        self.register_buffer("pe", sinusoid(max_frames, dim), persistent=False)  # (max_frames, dim)
        self.fuse = None  # set while context windows (scope `motion`) split the frames: see adapters.context

    @property
    def max_frames(self) -> int:
        return self.pe.shape[0]

    def forward(self, x: Tensor, frames: int) -> Tensor:
        """x (B*F, N, C) image tokens -> the temporal update (B*F, N, C)."""
        bf, n, c = x.shape
        b = bf // frames
        h = x.reshape(b, frames, n, c).transpose(1, 2).reshape(b * n, frames, c)  # (B*N, F, C)
        h = self.fuse(h, self.attend) if self.fuse is not None else self.attend(h)  # (B*N, F, C)
        return h.reshape(b, n, frames, c).transpose(1, 2).reshape(bf, n, c)  # (B*F, N, C)

    def attend(self, h: Tensor) -> Tensor:
        """(B*N, F, C) frames of each token -> their update (B*N, F, C)."""
        bn, frames, c = h.shape
        h = self.norm(h) + self.pe[:frames].to(h.dtype)  # (B*N, F, C)
        q, k, v = self.to_qkv(h).reshape(bn, frames, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v)  # (B*N, heads, F, C/heads)
        return self.to_out(h.transpose(1, 2).reshape(bn, frames, c))  # (B*N, F, C)


class SD3TemporalLayers(nn.Module):
    """One TemporalAttention per chosen transformer block, and the hooks that run them."""

    def __init__(self, dim: int, heads: int, blocks: list[int], max_frames: int = 32) -> None:
        super().__init__()
        self.config = {"dim": dim, "heads": heads, "blocks": sorted(blocks), "max_frames": max_frames}
        self.layers = nn.ModuleDict({str(i): TemporalAttention(dim, heads, max_frames) for i in sorted(blocks)})
        self.frames = 1  # set by the adapter before each transformer call
        self._handles: list = []

    @classmethod
    def for_transformer(cls, transformer, blocks: list[int] | None = None, heads: int | None = None, max_frames=32):
        cfg = transformer.config
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        return cls(dim, heads or cfg.num_attention_heads, blocks or list(range(cfg.num_layers)), max_frames)

    def attach(self, transformer) -> None:
        """Hook every chosen block (see the module docstring); `detach()` removes the hooks."""
        self.detach()
        dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        if dim != self.config["dim"]:
            raise LoadError(ARG, f"temporal layers of width {self.config['dim']}; this transformer is {dim} wide")
        if max(self.config["blocks"]) >= len(transformer.transformer_blocks):
            raise LoadError(ARG, f"temporal layers for block {max(self.config['blocks'])}; the model has fewer")
        for i, layer in self.layers.items():
            block = transformer.transformer_blocks[int(i)]
            update: dict[str, Tensor] = {}

            def before_ff(_norm, args, layer=layer, update=update):
                (h1,) = args  # (B*F, N, C): the stream after the spatial attention residual
                update["t"] = layer(h1, self.frames) if self.frames > 1 else torch.zeros_like(h1)
                return (h1 + update["t"],)

            def after_block(_block, _args, output, update=update):
                context, hidden = output
                return context, hidden + update.pop("t")

            self._handles += [
                block.norm2.register_forward_pre_hook(before_ff),
                block.register_forward_hook(after_block),
            ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def save(self, path: str | Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_file(path, argument="--out") as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT, "config": json.dumps(self.config)})

    @classmethod
    def load(cls, path: str | Path) -> SD3TemporalLayers:
        path = Path(path)
        if not path.is_file():
            raise LoadError(ARG, f"no such file: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as e:
            raise LoadError(ARG, f"{path} is not a readable safetensors file ({e})") from e
        if meta.get("format") != FORMAT:
            raise LoadError(ARG, f"{path} holds no vidiff SD 3 temporal layers")
        layers = cls(**json.loads(meta["config"]))
        layers.load_state_dict(state)
        return layers
