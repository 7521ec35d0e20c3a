"""Few-step presets: the settings each few-step motion module's model card prescribes, as one flag.

A preset fills only what the job leaves open (None in the request; LoRAs given without a scale), so any
explicit option wins, and says what it set.

- `lightning` (ByteDance's AnimateDiff-Lightning): Euler, trailing timestep spacing, linear betas, no
  classifier-free guidance (1.0), the module's own step count (1, 2, 4 or 8, read from its file name,
  e.g. `animatediff_lightning_4step_diffusers.safetensors`; 4 when the name does not say).
- `animatelcm` (AnimateLCM): the LCM scheduler with linear betas, guidance 1.5, 6 steps, and its LoRA
  (`--lora AnimateLCM_sd15_t2v_lora.safetensors`) at 0.8.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import InvalidArgument
from .lora import Lora
from .request import GenerationRequest

LIGHTNING_STEPS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Preset:
    scheduler: str
    timestep_spacing: str | None
    beta_schedule: str
    guidance_scale: float
    steps: int | None  # None: the module's own
    lora_scale: float | None = None  # the scale of LoRAs given without one


PRESETS = {
    "lightning": Preset("euler", "trailing", "linear", 1.0, None),
    "animatelcm": Preset("lcm", None, "linear", 1.5, 6, lora_scale=0.8),
}


def module_steps(motion_module: str | None) -> int | None:
    """The step count a few-step module's file name states (`..._4step_...`), if any."""
    match = re.search(r"(\d+)[-_]?steps?", Path(motion_module or "").name.lower())
    return int(match.group(1)) if match and int(match.group(1)) in LIGHTNING_STEPS else None


def apply_preset(
    name: str | None, request: GenerationRequest, loras: tuple[str, ...], motion_module: str | None
) -> tuple[GenerationRequest, tuple[str, ...], list[str]]:
    """The request and LoRA specs with preset `name`'s settings where they were left open, and a note."""
    if name is None:
        return request, loras, []
    if name not in PRESETS:
        raise InvalidArgument("--preset", f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    preset, given = PRESETS[name], loras
    steps, source = preset.steps, "preset"
    if steps is None:
        named = module_steps(motion_module)
        steps, source = (named, "module name") if named else (4, "default")
    wanted = {
        "scheduler": preset.scheduler,
        "timestep_spacing": preset.timestep_spacing,
        "beta_schedule": preset.beta_schedule,
        "guidance_scale": preset.guidance_scale,
        "steps": steps,
    }
    filled = {k: v for k, v in wanted.items() if v is not None and getattr(request, k) is None}
    if preset.lora_scale is not None:
        loras = tuple(s if Lora.parse(s).path != s else f"{s}:{preset.lora_scale:g}" for s in loras)
    said = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in filled.items())
    if "steps" in filled:
        said += f" (from the {source})"
    if loras != given:
        said += f", LoRA scale {preset.lora_scale:g}"
    note = f"preset {name}: " + (said or "nothing left to set (every option was given)")
    return replace(request, **filled), loras, [note]
