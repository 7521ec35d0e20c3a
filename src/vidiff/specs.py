"""The backbone registry: each backbone declares what it is, in one table (flux's `configs` idea).

Everything that differs between backbones is read from its `BackboneSpec`: how a folder is recognised and
loaded, its latent space, diffusion or flow matching and the default scheduler, which extra prompts it
takes, which attention is which kind for caches, whether DeepCache applies, and its `--fast` preset. The
frame limit comes from the loaded weights (the adapter's `check_frames`). Nothing outside this file
compares backbone names.

A new backbone is one adapter file (a `VideoDenoiser` and a `build(folder, LoadOptions) -> Loaded`) plus
one entry here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .accel.pab import AttentionRules
from .adapters import latte, sd3_temporal, unet_motion, unet_sdxl
from .adapters.base import Loaded, LoadOptions
from .errors import LoadError


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    pipelines: tuple[str, ...]  # diffusers pipeline classes (model_index.json `_class_name`) that are this
    marker: str  # the sub-folder that tells this backbone apart when model_index.json does not say
    build: Callable[[Path, LoadOptions], Loaded]
    latent_space: str  # models of one latent space can hand each other latents
    flow: bool  # flow matching (velocity, sigmas) rather than diffusion (noise, betas)
    default_scheduler: str
    attention_rules: AttentionRules  # (regex on the attention module's name, 'spatial' | 'temporal' | 'cross')
    extra_prompts: int = 0  # text encoders beyond the first: `prompt_2` (SDXL: 1), `prompt_3` too (SD 3: 2)
    deep_cache: bool = False  # a UNet: DeepCache can reuse its inner blocks
    fast: tuple[str, ...] = ("pab",)  # the accelerators `--fast` turns on, best measured combination first
    frames_per_latent: int = 1  # pixel frames per latent frame (a video VAE that compresses time: 4)
    context_windows: bool = True  # long videos as overlapping windows (needs a frame count the model can vary)
    steering: bool = False  # SD 1.x ControlNets, SparseCtrl and IP-Adapters steer it


UNET_ATTENTION: AttentionRules = (  # a UNet with AnimateDiff motion modules (diffusers' UNetMotionModel)
    (r"motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12]$", "temporal"),
    (r"attentions\.\d+\.transformer_blocks\.\d+\.attn1$", "spatial"),
    (r"attentions\.\d+\.transformer_blocks\.\d+\.attn2$", "cross"),
)
SPECS: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="sd1",
            pipelines=("StableDiffusionPipeline", "AnimateDiffPipeline"),
            marker="unet",
            build=unet_motion.build,
            latent_space="sd1",
            flow=False,
            default_scheduler="ddim",
            attention_rules=UNET_ATTENTION,
            deep_cache=True,
            fast=("pab", "deep_cache"),
            steering=True,
        ),
        BackboneSpec(
            name="sdxl",
            pipelines=("StableDiffusionXLPipeline", "AnimateDiffSDXLPipeline"),
            marker="text_encoder_2",  # after sd3 (which has one too) and before sd1 (whose marker SDXL has)
            build=unet_sdxl.build,
            latent_space="sdxl",
            flow=False,
            default_scheduler="ddim",
            attention_rules=UNET_ATTENTION,
            extra_prompts=1,
            deep_cache=True,
            fast=("pab", "deep_cache"),
        ),
        BackboneSpec(
            name="sd3",
            pipelines=("StableDiffusion3Pipeline",),
            marker="transformer",
            build=sd3_temporal.build,
            latent_space="sd3",
            flow=True,
            default_scheduler="flow-euler",
            attention_rules=(
                (r"^temporal\.layers\.\d+$", "temporal"),
                (r"transformer_blocks\.\d+\.attn2?$", "spatial"),
            ),
            extra_prompts=2,
        ),
        BackboneSpec(
            name="latte",
            pipelines=("LattePipeline",),
            marker="",  # told apart by its model_index.json only
            build=latte.build,
            latent_space="sd1",  # Latte works in the SD VAE's 4-channel latent space
            flow=False,
            default_scheduler="ddim",
            attention_rules=(
                (r"temporal_transformer_blocks\.\d+\.attn1$", "temporal"),
                (r"transformer_blocks\.\d+\.attn1$", "spatial"),
                (r"transformer_blocks\.\d+\.attn2$", "cross"),
            ),
            context_windows=False,  # its temporal position table is added whole: exactly video_length frames
        ),
    )
}
MARKER_ORDER = [SPECS[n] for n in ("sd3", "sdxl", "sd1")]  # the most specific sub-folder first
UNSUPPORTED = {"StableDiffusionXLImg2ImgPipeline": "SDXL refiner", "FluxPipeline": "Flux"}


def detect(folder: Path) -> BackboneSpec:
    """The spec of a model folder: by its model_index.json's pipeline class, else by its marker sub-folder,
    else Stable Diffusion 1.x (whose build says what is missing)."""
    if folder.is_file():  # a single-file checkpoint: SD 1.x or SDXL by its tensor names (its reader names others)
        from .single_file import checkpoint_family

        return SPECS[checkpoint_family(folder)]
    index = folder / "model_index.json"
    name = json.loads(index.read_text()).get("_class_name", "") if index.is_file() else ""
    if name in UNSUPPORTED:
        raise LoadError("--model", f"{folder} is a {UNSUPPORTED[name]} model, which vidiff does not support yet")
    by_class = [s for s in SPECS.values() if name in s.pipelines]
    by_marker = [s for s in MARKER_ORDER if (folder / s.marker).is_dir()]
    return (by_class or by_marker or [SPECS["sd1"]])[0]
