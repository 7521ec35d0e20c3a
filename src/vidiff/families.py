"""Which UNet family (SD 1.x or SDXL) a model and the files given with it are for, from folder configs and
safetensors headers alone (no torch), so a mismatch is refused before any weights load (`--dry-run`).

What cannot be told this way (pickles, shapes no release has) is left to the loaders, which refuse it in the
same words once the weights are read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .control_files import safetensors_shapes
from .errors import InvalidArgument

OPEN_CLIP = "conditioner.embedders.1.model."  # SDXL base's second text encoder (OpenCLIP bigG)
REFINER_CLIP = "conditioner.embedders.0.model."  # the SDXL refiner has only OpenCLIP bigG
RELEASE_WIDTHS = {(320, 640, 1280, 1280): "sd1", (320, 640, 1280): "sdxl"}  # the released UNets' block widths
HOTSHOT_KEY = re.compile(r"(.*)\.temporal_attentions\.(\d+)\.(.*)")  # Hotshot-XL's temporal layers
SDXL_LORA = r"^lora_te2_|^text_encoder_2\.|input_blocks_\d|\.input_blocks\."
SD1_LORA = r"^lora_te_"  # kohya's one text encoder (SDXL's are lora_te1_ / lora_te2_)
NAMES = {"sd1": "Stable Diffusion 1.x", "sdxl": "SDXL"}
EXTRA_PROMPTS = {"sd1": 0, "sdxl": 1}  # text encoders beyond the first (the specs' `extra_prompts`)
PIPELINES = {"StableDiffusionPipeline": "sd1", "AnimateDiffPipeline": "sd1", "StableDiffusionXLPipeline": "sdxl",
             "AnimateDiffSDXLPipeline": "sdxl"}  # fmt: skip
MOTION_NORM = re.compile(
    r"down_blocks\.(\d+)\.(?:motion_modules|temporal_attentions)\.0\.(?:temporal_transformer\.)?norm\.weight"
)


def refiner(name: str) -> InvalidArgument:
    return InvalidArgument("--model", f"{name} is an SDXL refiner checkpoint; vidiff runs SDXL base models (the "
                                      "refiner has no motion modules and no first text encoder)")  # fmt: skip


def model_family(model: str) -> str | None:
    """'sd1' or 'sdxl' for a diffusers folder (its model_index.json) or a safetensors single file (its
    tensor names); None when it cannot be told without torch. The SDXL refiner is refused by name."""
    path = Path(model)
    if path.is_dir():
        try:
            name = json.loads((path / "model_index.json").read_text()).get("_class_name", "")
        except (OSError, ValueError, AttributeError):
            return None
        if name == "StableDiffusionXLImg2ImgPipeline":
            raise refiner(path.name)
        return PIPELINES.get(name)
    shapes = safetensors_shapes(path) if path.suffix == ".safetensors" else None
    return None if shapes is None else family_from_names(shapes, path.name)


def family_from_names(names, file: str) -> str | None:
    """'sdxl' or 'sd1' from a single file's tensor names (None: not a Stable Diffusion checkpoint); the SDXL
    refiner is refused by name."""
    if any(k.startswith(OPEN_CLIP) for k in names):
        return "sdxl"
    if any(k.startswith(REFINER_CLIP) for k in names):
        raise refiner(file)
    return "sd1" if any(k.startswith("model.diffusion_model.") for k in names) else None


def motion_family(path: str) -> str | None:
    """'sd1' or 'sdxl' for a motion module whose layout (Hotshot-XL) or block widths (a released shape) say."""
    p = Path(path)
    if p.is_dir():
        try:
            widths = json.loads((p / "config.json").read_text()).get("block_out_channels")
        except (OSError, ValueError, AttributeError):
            return None
        return RELEASE_WIDTHS.get(tuple(widths or ()))
    shapes = safetensors_shapes(p) if p.suffix == ".safetensors" else None
    if not shapes:
        return None
    if any(HOTSHOT_KEY.fullmatch(k) for k in shapes):
        return "sdxl"
    return RELEASE_WIDTHS.get(motion_widths(shapes))


def motion_widths(shapes) -> tuple[int, ...]:
    """The block widths of a motion module, level by level, from its tensors' names and shapes (name -> shape):
    each level's first motion-module norm (AnimateDiff's or Hotshot-XL's names)."""
    norms = {
        int(m.group(1)): v[0] for k, v in shapes.items() if (m := MOTION_NORM.fullmatch(k.removeprefix("module.")))
    }
    return tuple(norms[i] for i in sorted(norms))


def lora_family(path: str) -> str | None:
    shapes = safetensors_shapes(Path(path)) if path.endswith(".safetensors") else None
    if not shapes:
        return None
    for pattern, family in ((SDXL_LORA, "sdxl"), (SD1_LORA, "sd1")):
        if any(re.search(pattern, k) for k in shapes):
            return family
    return None


def check_families(model: str, motion_module: str | None, loras: list[str]) -> None:
    """Refuse a motion module or LoRA made for the other UNet family than the model's, naming both."""
    family = model_family(model)
    if family is None:
        return
    given = [("--motion-module", motion_module, motion_family)] if motion_module else []
    given += [("--lora", lora, lora_family) for lora in loras]
    for flag, path, read in given:
        other = read(path)
        if other in (None, family):
            continue
        name = Path(path).name
        if flag == "--lora":
            raise InvalidArgument(flag, f"{name} is a LoRA for {NAMES[other]}; this model is {NAMES[family]}")
        article = "an" if other == "sdxl" else "a"
        raise InvalidArgument(flag, f"{name} is {article} {NAMES[other]} motion module; this model is {NAMES[family]}")
