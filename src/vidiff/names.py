"""The names and defaults that options accept, importable without torch.

The CLI parses and checks every option with these before any heavy library loads; the modules that
implement each name take it from here, so a name is spelled once.
"""

from __future__ import annotations

from pathlib import Path

MODES = ("motion", "sequential")  # all frames through motion modules together | frame by frame
GROUPNORM_MODES = ("auto", "original", "diffusers")  # AnimateDiff GroupNorm: as trained, per frame, over frames
DEFAULT_FRAME_NOISE = 0.05  # sequential mode: per-frame noise mixed into the shared base noise
DEFAULT_DEEP_CACHE_SKIP = 3  # DeepCache's usual interval

CONTEXT_SCHEDULES = ("uniform", "looped", "static")
CONTEXT_FUSES = ("flat", "pyramid", "gauss", "delayed_reverse_sawtooth")
CONTEXT_SCOPES = ("backbone", "motion")
NOISE_TYPES = {"random": "random", "shuffle": "shuffle", "shuffle_context": "shuffle", "repeat": "repeat",
               "repeat_context": "repeat"}  # fmt: skip  # diffusers' names too
TRAVEL_INTERPOLATIONS = ("linear", "slerp")
FREE_INIT_METHODS = ("butterworth", "gaussian", "ideal", "box")
PRESET_NAMES = ("lightning", "animatelcm")

SCHEDULER_CLASSES = {  # short name -> diffusers class name
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "ddpm": "DDPMScheduler",
    "lcm": "LCMScheduler",  # latent consistency: AnimateLCM's
    "flow-euler": "FlowMatchEulerDiscreteScheduler",  # flow matching: SD 3's
}
FLOW_SCHEDULERS = ("flow-euler",)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
DTYPE_NAMES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "half")
DEVICE_KINDS = ("cpu", "cuda", "mps")
TRAIN_STAGES = ("vae", "image", "motion")
LATENT_SUFFIXES = (".pt", ".pth", ".safetensors")
BENCH_ROWS = ("diffusers", "same-dtype", "default", "fast")  # vidiff bench's table, by default
BENCH_OPTIONAL_ROWS = ("lightning", "lora", "lora-unfused", "diffusers-controlnet", "controlnet", "controlnet-2",
                       "ip-adapter")  # fmt: skip


def scheduler_key(name: str) -> str | None:
    """The short name of a scheduler given by short name (`euler-a`) or diffusers class name; None if unknown."""
    key = name.strip().lower()
    if key in SCHEDULER_CLASSES:
        return key
    return next((short for short, cls in SCHEDULER_CLASSES.items() if cls.lower() == key), None)


def is_latents_path(path: str) -> bool:
    return Path(path).suffix.lower() in LATENT_SUFFIXES
