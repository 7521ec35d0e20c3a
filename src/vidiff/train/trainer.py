"""`vidiff train`: AnimateDiff's two stages, resumable and deterministic, in one small file.

- `vae`: the image autoencoder on single frames (reconstruction + a small KL term); its latent scaling
  factor is measured at the end (1 / std of the latents), as Stable Diffusion's was.
- `image`: the UNet and text encoder on single frames, VAE frozen (diffusion loss, captions dropped 10% of
  the time so classifier-free guidance works).
- `motion`: the motion modules on clips, the image model frozen. `trainable` is AnimateDiff's
  `trainable_modules` rule (a parameter trains when its name contains one of the patterns; default
  `motion_modules.`) over the UNet's names and the text encoder's (`text_encoder.` + its names), so spatial
  layers and the text encoder can train too; `lora_rank` trains a LoRA on the spatial attention instead.
  Motion modules export to the motion adapter, spatial weights and the text encoder into the model folder,
  the LoRA to a file `--lora` loads. Works on any SD 1.x folder, a user's real one included.

SD 3 folders (or `family="sd3"` for a new one) train the same way with a rectified-flow loss: `image` the
MMDiT and both CLIP encoders, `motion` vidiff's temporal layers (named `motion_modules.` for the rule) with
the transformer frozen unless the patterns name its parameters (`transformer.` + its own names).

Every step draws its batch, noise and timesteps from generators seeded by (seed, step), so a run resumed
from a checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..adapters.base import Conditioning
from ..adapters.sd3_temporal import SD3Denoiser
from ..adapters.unet_motion import UNetFramesDenoiser, UNetMotionDenoiser, merge_motion_unet
from ..atomic import atomic_file, atomic_folder
from ..demo import model as demo
from ..demo.data import COLORS
from ..errors import InvalidArgument
from ..layout import MOTION_ADAPTER, write_model_index
from ..loading import DTYPES
from ..lora import add_training_lora, save_training_lora
from ..motion.animatediff_format import load_motion_adapter
from ..motion.groupnorm import CONFIG_KEY as GROUPNORM_KEY
from ..specs import SPECS, detect
from .config import TrainConfig
from .data import open_data

DEFAULT_LR = {"vae": 1e-3, "image": 5e-4, "motion": 5e-4}
KL_WEIGHT = 1e-5
FP32 = torch.float32  # training runs in float32 whatever dtype the weights were exported in
DEMO_TOKENIZER = Path(__file__).resolve().parent.parent / "demo" / "tiny-t2v" / "tokenizer"


@dataclass(frozen=True)
class Levels:
    """Noise levels as fractions of the schedule, drawn uniformly in [low, high] (one level when equal); `pure`
    feeds pure noise as the input while the target stays the clip's (what sampling sees at its first step)."""

    low: float = 0.0
    high: float = 1.0
    pure: bool = False

    def timesteps(self, n: int, train_steps: int, gen: torch.Generator) -> Tensor:
        """Diffusion timesteps (n,) in [low * T, high * T), at least one, at most T - 1."""
        lo = min(round(self.low * train_steps), train_steps - 1)
        hi = max(lo + 1, min(train_steps, round(self.high * train_steps)))
        return torch.randint(lo, hi, (n,), generator=gen)

    def sigmas(self, n: int, gen: torch.Generator) -> Tensor:
        """Flow-matching noise levels (n,) in [low, high)."""
        return self.low + (self.high - self.low) * torch.rand(n, generator=gen)


class Stage:
    """What one stage trains and how: `params`, `loss(rng, gen)`, and `export(dtype)` into the model folder."""

    modules: dict[str, nn.Module]

    def params(self) -> list[nn.Parameter]:
        return [p for m in self.modules.values() for p in m.parameters() if p.requires_grad]

    def param_groups(self, cfg: TrainConfig) -> list[dict]:
        """Optimizer groups with an lr `scale`: text encoders at `cfg.text_lr_scale` (trained from scratch
        at full rate, they learn to blur what single frames cannot show, such as the motion words)."""
        groups: dict[float, list[nn.Parameter]] = {}
        for name, module in self.modules.items():
            scale = cfg.text_lr_scale if name.startswith("text_encoder") else 1.0
            groups.setdefault(scale, []).extend(p for p in module.parameters() if p.requires_grad)
        return [{"params": ps, "scale": scale} for scale, ps in groups.items() if ps]

    def select(self, patterns: tuple[str, ...]) -> None:
        """AnimateDiff's `trainable_modules` rule over `module.parameter` names; LoRA layers always train."""
        for key, module in self.modules.items():
            for name, p in module.named_parameters():
                p.requires_grad_("lora_" in name or any(pat in f"{key}.{name}" for pat in patterns))
        if not self.params():
            raise InvalidArgument("--trainable", f"{' '.join(patterns)} selects no parameter of this model")
        if {"lora", "spatial"} <= set(self.trained_groups()):
            raise InvalidArgument("--lora-rank", "trains the spatial layers as a LoRA: --trainable may then name "
                                  "only motion modules")  # fmt: skip

    def trained_groups(self) -> dict[str, int]:
        """Trained parameter counts: motion modules, the backbone's spatial layers, LoRA, other modules (vae,
        text encoders) by name."""
        groups: dict[str, int] = {}
        for key, module in self.modules.items():
            for name, p in module.named_parameters():
                if p.requires_grad:
                    full = f"{key}.{name}"
                    group = "lora" if "lora_" in name else "motion" if "motion_modules." in full else key
                    group = "spatial" if group in ("unet", "transformer") else group
                    groups[group] = groups.get(group, 0) + p.numel()
        return groups

    def freeze_text(self) -> None:
        """Text encoders frozen, as Stable Diffusion's CLIP is: no gradient, no optimizer state."""
        for name, module in self.modules.items():
            if name.startswith("text_encoder"):
                module.requires_grad_(False)

    @property
    def levels(self) -> Levels:
        return Levels(self.cfg.min_noise, self.cfg.max_noise)

    def loss(self, rng: np.random.Generator, gen: torch.Generator) -> Tensor:
        raise NotImplementedError

    def export(self, dtype: torch.dtype) -> None:
        raise NotImplementedError


SKELETONS = {  # a new demo folder per backbone: (tokenizer folders, scheduler, pipeline class)
    "sd1": (("tokenizer",), demo.demo_scheduler, "StableDiffusionPipeline"),
    "sd3": (("tokenizer", "tokenizer_2"), demo.demo_sd3_scheduler, "StableDiffusion3Pipeline"),
}


ZERO_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}  # Lin et al. 2024


def training_schedule(cfg: TrainConfig) -> dict:
    """The model folder's noise schedule; `cfg.zero_snr` rescales it to zero terminal SNR (and trailing spacing
    for sampling), so the last timestep is pure noise and no signal leaks into what the model learns from."""
    config = dict(DDPMScheduler.load_config(cfg.model / "scheduler"))
    return config | ZERO_SNR if cfg.zero_snr else config


def _save_schedule(cfg: TrainConfig) -> None:
    """With `cfg.zero_snr`, the model folder's scheduler says so: sampling then uses the schedule it trained on."""
    if cfg.zero_snr:
        import diffusers

        config = training_schedule(cfg)
        with atomic_folder(cfg.model / "scheduler") as tmp:
            getattr(diffusers, config["_class_name"]).from_config(config).save_pretrained(tmp)


def warmup_cosine(step: int, steps: int, warmup: int) -> float:
    """The learning-rate factor at `step`: linear warm-up over `warmup` steps, then cosine down to a tenth."""
    warm = min(1.0, (step + 1) / max(warmup, 1))
    return warm * (0.55 + 0.45 * math.cos(math.pi * step / steps))


def _ensure_skeleton(folder: Path, family: str = "sd1") -> None:
    """A new demo folder: tokenizer(s), scheduler and model index, before any weights exist."""
    tokenizers, scheduler, pipeline = SKELETONS[family]
    folder.mkdir(parents=True, exist_ok=True)
    for name in tokenizers:
        if not (folder / name).is_dir():
            shutil.copytree(DEMO_TOKENIZER, folder / name)
    if not (folder / "scheduler").is_dir():
        scheduler().save_pretrained(folder / "scheduler")
    if not (folder / "model_index.json").is_file():
        write_model_index(folder, pipeline)


def _save(module: nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """save_pretrained in `dtype` (atomically, file by file), leaving the training copy in float32."""
    with atomic_folder(folder) as tmp:
        module.to(dtype).save_pretrained(tmp)
    module.to(torch.float32)


def _text_encoder(cfg: TrainConfig) -> CLIPTextModel:
    """The folder's text encoder; random weights in its architecture with `fresh_text_encoder` (or the demo's
    when the folder has none)."""
    folder = cfg.model / "text_encoder"
    if not folder.is_dir():
        return demo.demo_text_encoder()
    if cfg.fresh_text_encoder:
        return CLIPTextModel(CLIPTextConfig.from_pretrained(folder))
    return CLIPTextModel.from_pretrained(folder, dtype=FP32)


class VaeStage(Stage):
    def __init__(self, cfg: TrainConfig, data) -> None:
        _ensure_skeleton(cfg.model, cfg.family)
        vae_dir = cfg.model / "vae"
        self.vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=FP32) if vae_dir.is_dir() else demo.demo_vae()
        self.modules = {"vae": self.vae.train()}
        self.cfg, self.data = cfg, data

    def loss(self, rng, gen):
        pixels, _ = self.data.images(rng, self.cfg.batch_size)  # (B, 3, H, W)
        posterior = self.vae.encode(pixels).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)  # (B, 4, h, w)
        recon = self.vae.decode(z).sample  # (B, 3, H, W)
        return F.mse_loss(recon, pixels) + KL_WEIGHT * posterior.kl().mean()

    @torch.no_grad()
    def export(self, dtype):
        rng = np.random.default_rng(12345)
        pixels, _ = self.data.images(rng, 256)
        std = self.vae.eval().encode(pixels).latent_dist.mean.std().item()
        self.vae.register_to_config(scaling_factor=1.0 / std)
        _save(self.vae, self.cfg.model / "vae", dtype)


class _Diffusion:
    """Shared by the image and motion stages: frozen VAE encoding, captions, noising and the target."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.vae = AutoencoderKL.from_pretrained(cfg.model / "vae", torch_dtype=FP32).eval().requires_grad_(False)
        self.tokenizer = CLIPTokenizer.from_pretrained(cfg.model / "tokenizer")
        self.noise = DDPMScheduler.from_config(training_schedule(cfg))

    def encode(self, pixels: Tensor) -> Tensor:
        """Posterior means, scaled: what the scaling factor was measured on (a tiny VAE's posterior noise is
        mostly in directions its decoder ignores, and would swamp the signal)."""
        with torch.no_grad():
            return self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor  # (N, 4, h, w)

    def drop(self, captions: list[str], rng: np.random.Generator) -> list[str]:
        """Captions emptied at `uncond_prob` (classifier-free guidance's unconditional case)."""
        return ["" if rng.random() < self.cfg.uncond_prob else c for c in captions]

    def tokens(self, captions: list[str]) -> Tensor:
        return self.tokenizer(
            captions, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip

    def noised(self, latents: Tensor, gen: torch.Generator, levels: Levels | float = 0.0) -> tuple[Tensor, ...]:
        """(noisy latents, timesteps, regression target) for clean latents batch-first, at `levels` (a float:
        from that fraction of the schedule up)."""
        levels = levels if isinstance(levels, Levels) else Levels(levels)
        noise = torch.randn(latents.shape, generator=gen)
        t = levels.timesteps(latents.shape[0], self.noise.config.num_train_timesteps, gen)
        noisy = noise if levels.pure else self.noise.add_noise(latents, noise, t)
        if self.noise.config.prediction_type == "v_prediction":
            return noisy, t, self.noise.get_velocity(latents, noise, t)
        return noisy, t, noise


class ImageStage(Stage):
    def __init__(self, cfg: TrainConfig, data) -> None:
        _ensure_skeleton(cfg.model)
        self.diff = _Diffusion(cfg)
        unet_dir = cfg.model / "unet"
        self.unet = (
            UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=FP32) if unet_dir.is_dir() else demo.demo_unet()
        )
        self.text = _text_encoder(cfg)
        self.modules = {"unet": self.unet.train(), "text_encoder": self.text.train()}
        self.denoiser = UNetFramesDenoiser(self.unet)
        self.cfg, self.data = cfg, data

    def loss(self, rng, gen):
        pixels, captions = self.data.images(rng, self.cfg.batch_size, self.cfg.keyframe_share)  # (B, 3, H, W)
        latents = self.diff.encode(pixels)  # (B, 4, h, w)
        embeds = self.text(self.diff.tokens(self.diff.drop(captions, rng)))[0]  # (B, 77, D)
        noisy, t, target = self.diff.noised(latents, gen)
        pred = self.denoiser.predict(noisy[:, :, None], t, Conditioning(embeds))[:, :, 0]  # (B, 4, h, w)
        return F.mse_loss(pred, target)

    def export(self, dtype):
        _save(self.unet, self.cfg.model / "unet", dtype)
        _save(self.text, self.cfg.model / "text_encoder", dtype)
        _save_schedule(self.cfg)


class MotionStage(Stage):
    def __init__(self, cfg: TrainConfig, data) -> None:
        self.diff = _Diffusion(cfg)
        self.out = cfg.out or cfg.model / "motion_adapter"
        unet2d = UNet2DConditionModel.from_pretrained(cfg.model / "unet", torch_dtype=FP32)
        self.text = _text_encoder(cfg)
        if (self.out / "config.json").is_file():
            adapter = load_motion_adapter(self.out, torch.float32)
        else:
            adapter = demo.motion_adapter_for(dict(unet2d.config), max_frames=max(32, cfg.frames))
        self.adapter_keys = list(adapter.state_dict())
        self.adapter_config = dict(adapter.config)
        self.unet2d = unet2d
        self.unet = merge_motion_unet(unet2d, adapter).train()
        if cfg.lora_rank:
            add_training_lora(self.unet, cfg.lora_rank)
        self.modules = {"unet": self.unet, "text_encoder": self.text}
        self.select(cfg.trainable)
        self.text_trains = "text_encoder" in self.trained_groups()
        self.denoiser = UNetMotionDenoiser(self.unet)
        self.cfg, self.data = cfg, data

    def loss(self, rng, gen):
        videos, captions = self.data.clips(rng, self.cfg.batch_size)  # (B, F, 3, H, W)
        return self.clip_loss(videos, captions, gen, self.levels, rng=rng)

    def clip_loss(self, videos: Tensor, captions: list[str], gen: torch.Generator, levels: Levels, rng=None) -> Tensor:
        """The loss on clips (B, F, 3, H, W) at noise `levels`; with `rng`, captions dropped."""
        captions = self.diff.drop(captions, rng) if rng is not None else captions
        b, f = videos.shape[:2]
        latents = self.diff.encode(videos.flatten(0, 1))  # (B*F, 4, h, w)
        latents = latents.unflatten(0, (b, f)).transpose(1, 2)  # (B, 4, F, h, w)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.text_trains):
            embeds = self.text(self.diff.tokens(captions))[0]  # (B, 77, D)
        noisy, t, target = self.diff.noised(latents, gen, levels)
        pred = self.denoiser.predict(noisy, t, Conditioning(embeds))  # (B, 4, F, h, w)
        return F.mse_loss(pred, target)

    def export(self, dtype):
        from diffusers import MotionAdapter

        adapter = MotionAdapter.from_config(self.adapter_config)
        adapter.register_to_config(**{GROUPNORM_KEY: "diffusers"})  # trained through diffusers' UNetMotionModel
        state = self.unet.state_dict()
        adapter.load_state_dict({k: state[k] for k in self.adapter_keys})
        _save(adapter, self.out, dtype)
        if self.out == self.cfg.model / "motion_adapter":
            write_model_index(self.cfg.model, **MOTION_ADAPTER)
        if self.trained_groups().get("spatial"):  # the image UNet's own names are the merged model's others
            self.unet2d.load_state_dict({k: state[k] for k in self.unet2d.state_dict()})
            _save(self.unet2d, self.cfg.model / "unet", dtype)
        if self.text_trains or self.cfg.fresh_text_encoder:
            _save(self.text, self.cfg.model / "text_encoder", dtype)
        if self.cfg.lora_rank:
            save_training_lora(self.unet, "unet", self.cfg.lora_path, dtype)
        _save_schedule(self.cfg)


class _Flow:
    """Shared by the SD 3 stages: frozen VAE encoding (shift and scale), prompts, and the rectified-flow loss."""

    MAX_SEQUENCE_LENGTH = 77  # T5 tokens (zeros without T5): generate with --max-sequence-length 77

    def __init__(self, cfg: TrainConfig, vae: AutoencoderKL, encoder) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.cfg, self.vae, self.encoder = cfg, vae.eval().requires_grad_(False), encoder
        self.timescale = FlowMatchEulerDiscreteScheduler.load_config(cfg.model / "scheduler")["num_train_timesteps"]

    def encode(self, pixels: Tensor) -> Tensor:
        c = self.vae.config
        with torch.no_grad():
            z = self.vae.encode(pixels).latent_dist.mean  # (N, C, h, w)
        return (z - (c.shift_factor or 0.0)) * c.scaling_factor

    def cond(self, captions: list[str], rng: np.random.Generator | None, grad: bool):
        """Prompt embeddings; with `rng`, captions emptied at `uncond_prob` first."""
        if rng is not None:
            captions = ["" if rng.random() < self.cfg.uncond_prob else t for t in captions]
        with torch.set_grad_enabled(grad):
            return self.encoder.encode(captions, max_sequence_length=self.MAX_SEQUENCE_LENGTH)

    def loss(
        self, denoiser: SD3Denoiser, z: Tensor, cond, frames: int, gen: torch.Generator, levels=Levels()
    ) -> Tensor:
        """z (B*F, C, h, w) clean latents, one noise level from `levels` per clip of `frames` frames: the flow's
        velocity."""
        b, c, h, w = z.shape[0] // frames, *z.shape[1:]
        sigma = levels.sigmas(b, gen)  # (B,)
        noise = torch.randn(z.shape, generator=gen).reshape(b, frames, c, h, w).transpose(1, 2)  # (B, C, F, h, w)
        z = z.reshape(b, frames, c, h, w).transpose(1, 2)  # (B, C, F, h, w)
        s = sigma[:, None, None, None, None]
        noisy = (1 - s) * z + s * noise  # (B, C, F, h, w)
        pred = denoiser.predict(noisy, sigma * self.timescale, cond)  # the scheduler's timesteps: sigma * T
        return F.mse_loss(pred, noise - z)


class SD3ImageStage(Stage):
    """SD 3: the MMDiT and both CLIP encoders on single frames, VAE frozen (rectified-flow loss)."""

    def __init__(self, cfg: TrainConfig, data) -> None:
        from diffusers import SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection

        from ..text import SD3PromptEncoder

        _ensure_skeleton(cfg.model, "sd3")
        m = cfg.model
        self.transformer = (
            SD3Transformer2DModel.from_pretrained(m / "transformer", torch_dtype=FP32)
            if (m / "transformer").is_dir()
            else demo.demo_sd3_transformer()
        )
        names = ("text_encoder", "text_encoder_2")
        encoders = [
            CLIPTextModelWithProjection.from_pretrained(m / n, dtype=FP32)
            if (m / n).is_dir()
            else demo.demo_clip_with_projection()
            for n in names
        ]
        tokenizers = [CLIPTokenizer.from_pretrained(m / n) for n in ("tokenizer", "tokenizer_2")]
        encoder = SD3PromptEncoder([*tokenizers, None], [*encoders, None], self.transformer.config.joint_attention_dim)
        vae = AutoencoderKL.from_pretrained(m / "vae", torch_dtype=FP32)
        self.flow = _Flow(cfg, vae, encoder)
        self.denoiser = SD3Denoiser(self.transformer)
        self.modules = {"transformer": self.transformer.train()} | {
            n: e.train() for n, e in zip(names, encoders, strict=True)
        }
        self.cfg, self.data = cfg, data

    def loss(self, rng, gen):
        pixels, captions = self.data.images(rng, self.cfg.batch_size, self.cfg.keyframe_share)  # (B, 3, H, W)
        z = self.flow.encode(pixels)  # (B, C, h, w)
        return self.flow.loss(self.denoiser, z, self.flow.cond(captions, rng, grad=True), 1, gen)

    def export(self, dtype):
        for name, module in self.modules.items():
            _save(module, self.cfg.model / name, dtype)


class SD3MotionStage(Stage):
    """SD 3 / 3.5: train vidiff's temporal layers with the transformer frozen (rectified-flow loss)."""

    def __init__(self, cfg: TrainConfig, data) -> None:
        from ..adapters.base import LoadOptions
        from ..adapters.sd3_temporal import build
        from ..motion.sd3_temporal import SD3TemporalLayers
        from ..settings import LoadSettings

        settings = LoadSettings(str(cfg.model), mode="sequential", dtype="float32")
        parts = build(cfg.model, LoadOptions(settings, torch.float32, torch.device("cpu")))
        self.transformer = parts.denoiser.module
        self.flow = _Flow(cfg, parts.vae, parts.prompt_encoder)
        self.out = cfg.out or cfg.model / "temporal.safetensors"
        if self.out.is_file():
            self.layers = SD3TemporalLayers.load(self.out)
        else:
            self.layers = SD3TemporalLayers.for_transformer(self.transformer, max_frames=max(32, cfg.frames))
        self.denoiser = SD3Denoiser(self.transformer, self.layers)  # attaches the layers
        if cfg.lora_rank:
            add_training_lora(self.transformer, cfg.lora_rank)
        self.modules = {"motion_modules": self.layers.train(), "transformer": self.transformer.train()}
        self.select(cfg.trainable)
        self.cfg, self.data = cfg, data

    def loss(self, rng, gen):
        videos, captions = self.data.clips(rng, self.cfg.batch_size)  # (B, F, 3, H, W)
        return self.clip_loss(videos, captions, gen, self.levels, rng=rng)

    def clip_loss(self, videos: Tensor, captions: list[str], gen: torch.Generator, levels: Levels, rng=None) -> Tensor:
        f = videos.shape[1]
        z = self.flow.encode(videos.flatten(0, 1))  # (B*F, C, h, w)
        return self.flow.loss(self.denoiser, z, self.flow.cond(captions, rng, grad=False), f, gen, levels)

    def export(self, dtype):
        self.layers.to(dtype).save(self.out)
        self.layers.to(torch.float32)
        if self.trained_groups().get("spatial"):
            _save(self.transformer, self.cfg.model / "transformer", dtype)
        if self.cfg.lora_rank:
            save_training_lora(self.transformer, "transformer", self.cfg.lora_path, dtype)


SWAPS = {  # word kind -> each word's replacement in a demo caption
    "direction": {"left": "right", "right": "left", "up": "down", "down": "up"},
    "colour": dict(zip(COLORS, (*list(COLORS)[1:], next(iter(COLORS))), strict=True)),
}
PROBE_LEVELS = {  # where sampling decides the motion, and the middle of the schedule for comparison
    "t=999": Levels(0.999, 0.999),
    "t=950": Levels(0.95, 0.95),
    "t=900": Levels(0.9, 0.9),
    "pure noise": Levels(1.0, 1.0, pure=True),
    "t>=600": Levels(0.6, 1.0),
}


@torch.no_grad()
def probe(stage: Stage, clips: int = 32, seed: int = 0) -> dict[str, dict[str, float]]:
    """Does the model read its caption's words? Per noise level: the loss on `clips` demo clips with the true
    caption, and its relative change when the direction (or colour) word is swapped, on the same clips, noise
    and timesteps. A model that reads a word has a lower loss with the true one (a positive gap)."""
    for module in stage.modules.values():
        module.eval()
    table = {}
    for name, levels in PROBE_LEVELS.items():
        losses = {
            kind: _probe_loss(stage, clips, seed, levels, swap) for kind, swap in [("true", {})] + [*SWAPS.items()]
        }
        true = losses.pop("true")
        table[name] = {"loss": true} | {kind: (loss - true) / true for kind, loss in losses.items()}
    return table


def _probe_loss(stage: Stage, clips: int, seed: int, levels: Levels, swap: dict[str, str]) -> float:
    rng, out = np.random.default_rng([seed, 7]), []
    for i in range(max(clips // 4, 1)):
        videos, captions = stage.data.clips(rng, 4)  # (4, F, 3, H, W)
        captions = [" ".join(swap.get(w, w) for w in c.split()) for c in captions]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out.append(stage.clip_loss(videos, captions, gen, levels).item())
    return float(np.mean(out))


STAGE_CLASSES = {
    "sd1": {"vae": VaeStage, "image": ImageStage, "motion": MotionStage},
    "sd3": {"vae": VaeStage, "image": SD3ImageStage, "motion": SD3MotionStage},
}


RESUMABLE = ("model", "out", "checkpoint_every", "save_dtype", "restart", "lora_out", "probe", "losses")  # may change


def run_config(cfg: TrainConfig) -> dict:
    """What defines a training run (a resume must agree with it), as JSON values; the lr resolved."""
    values = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in RESUMABLE}
    values["lr"] = cfg.lr or DEFAULT_LR[cfg.stage]
    return {k: list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v for k, v in values.items()}


def _resume(cfg: TrainConfig, stage: Stage, opt: torch.optim.Optimizer) -> tuple[int, list[float]]:
    """(step, losses) from the stage's checkpoint, weights and optimizer restored; (0, []) without one. A run
    whose settings contradict the checkpoint's is refused, naming the option."""
    if not cfg.checkpoint.is_file() or cfg.restart:
        return 0, []
    state = torch.load(cfg.checkpoint, weights_only=True)
    for name, value in state.get("config", {}).items():  # older checkpoints recorded none
        now = run_config(cfg).get(name)
        if now != value:
            raise InvalidArgument(f"--{name.replace('_', '-')}", f"{cfg.checkpoint} was trained with {value!r}, "
                                  f"not {now!r}: give the same value, or --restart")  # fmt: skip
    for name, module in stage.modules.items():
        module.load_state_dict(state["modules"][name])
    opt.load_state_dict(state["optimizer"])
    return state["step"], state["losses"]


def _save_checkpoint(
    cfg: TrainConfig, stage: Stage, opt: torch.optim.Optimizer, step: int, losses: list[float]
) -> None:
    path = cfg.checkpoint
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "losses": losses, "optimizer": opt.state_dict(), "config": run_config(cfg)}
    state["modules"] = {name: m.state_dict() for name, m in stage.modules.items()}
    with atomic_file(path) as tmp:  # an interruption leaves the previous checkpoint intact
        torch.save(state, tmp)


def make_stage(cfg: TrainConfig) -> Stage:
    """The stage `cfg` names, on its model folder and data, with its trainable parameters selected."""
    cfg.validate()
    torch.manual_seed(cfg.seed)  # fresh-module initialisation
    new = not (cfg.model / "model_index.json").is_file()
    cfg.family = (cfg.family or "sd1") if new else detect(cfg.model).name
    if cfg.family not in STAGE_CLASSES:
        raise InvalidArgument("--model", f"vidiff train trains {' and '.join(STAGE_CLASSES)} models, not "
                                         f"{cfg.family} ({cfg.model})")  # fmt: skip
    data = open_data(cfg.data, cfg.frames, cfg.size)
    if cfg.stage != "vae" and not (cfg.model / "vae").is_dir():
        raise InvalidArgument("--model", f"{cfg.model} has no vae/: train the vae stage first")
    if cfg.zero_snr and SPECS[cfg.family].flow:
        raise InvalidArgument(
            "--zero-snr", f"{cfg.family}'s flow matching already ends at pure noise (no signal leaks)"
        )
    stage = STAGE_CLASSES[cfg.family][cfg.stage](cfg, data)
    if cfg.text_lr_scale == 0:
        stage.freeze_text()
    return stage


def train(
    cfg: TrainConfig,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    stage: Stage | None = None,
) -> list[float]:
    """Run (or resume) one stage (`stage`, or the one `cfg` names) to `cfg.steps`, then export its weights.
    Returns the loss per step."""
    stage = stage or make_stage(cfg)
    params = stage.params()
    if progress:
        groups = ", ".join(f"{name} {count / 1e6:.2f} M" for name, count in stage.trained_groups().items())
        tqdm.write(f"{cfg.stage}: training {sum(p.numel() for p in params) / 1e6:.2f} M parameters ({groups})")
    lr = cfg.lr or DEFAULT_LR[cfg.stage]
    opt = torch.optim.AdamW(stage.param_groups(cfg), lr=lr, weight_decay=0.0)
    start, losses = _resume(cfg, stage, opt)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=cfg.stage, disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = group["scale"] * lr * warmup_cosine(step, cfg.steps, cfg.warmup)
        rng = np.random.default_rng([cfg.seed, step])
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        loss = stage.loss(rng, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_checkpoint(cfg, stage, opt, step + 1, losses)
        if on_step is not None:
            on_step(step + 1, losses[-1])
    for module in stage.modules.values():
        module.eval()
    stage.export(DTYPES[cfg.save_dtype])
    return losses
