"""Pyramid Attention Broadcast: skip attention in the middle of the schedule and reuse its last output.

Attention outputs change little between neighbouring timesteps, cross-attention least, then temporal,
then spatial, so each kind is recomputed every N-th call only (spatial 2, temporal 3, cross 6 by default,
VideoSys's and diffusers' values) while the timestep lies inside its range (100-800). Modules are told
apart per backbone: in the SD 1.x motion UNet the motion modules' attentions are temporal (diffusers'
default name rules would call them spatial), `attn1` of the spatial transformers is spatial self-attention
and `attn2` cross-attention; in SD 3 the joint attention is spatial and vidiff's temporal layers temporal;
in Latte the `temporal_transformer_blocks` are temporal.

UNets get a fourth kind, `deep` (DeepCache, Ma et al. 2023): every block but the outermost down and up
blocks is recomputed every N-th step only, reusing its last output, so the other steps run only the
full-resolution edges of the UNet. The same hook does it, since a block's output is as reusable as an
attention's. It is on by default for UNets (`PABConfig.for_backbone`), over the whole schedule.

Built on diffusers' hook registry (`ModelHook`, `HookRegistry`); the state is reset at every generation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

HOOK = "vidiff_pab"
KINDS = ("spatial", "temporal", "cross", "deep")
UNET_DEEP_SKIP = 3  # DeepCache's usual interval


@dataclass
class PABConfig:
    """How often each attention kind is recomputed (None: always) and over which timesteps it may be skipped."""

    spatial_skip: int | None = 2
    temporal_skip: int | None = 3
    cross_skip: int | None = 6
    spatial_range: tuple[int, int] = (100, 800)
    temporal_range: tuple[int, int] = (100, 800)
    cross_range: tuple[int, int] = (100, 800)
    deep_skip: int | None = None  # UNets only: recompute the inner blocks every N-th step
    deep_range: tuple[int, int] = (0, 1000)

    @classmethod
    def for_backbone(cls, denoiser, **overrides) -> PABConfig:
        """The defaults for a denoiser: the attention values above, plus DeepCache every 3rd step on UNets."""
        deep = UNET_DEEP_SKIP if denoiser.deep_modules() else None
        return cls(**({"deep_skip": deep} | overrides))

    def skip(self, kind: str) -> int | None:
        return getattr(self, f"{kind}_skip")

    def range(self, kind: str) -> tuple[int, int]:
        return getattr(self, f"{kind}_range")


@dataclass
class PABState:
    """The current step (set by the loop) and, per kind, attention calls computed and reused."""

    timestep: float = 0.0
    step: int = -1  # steps started in this generation
    computed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    reused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


class PABHook(ModelHook):
    """Compute in the first step, outside the timestep range, and every `skip`-th step; else reuse.

    A module may run several times in one step (frames in batches): outputs are cached per call position.
    """

    _is_stateful = True

    def __init__(self, kind: str, skip: int, timesteps: tuple[int, int], state: PABState) -> None:
        super().__init__()
        self.kind, self.skip, self.timesteps, self.state = kind, skip, timesteps, state
        self.reset_state(None)

    def new_forward(self, module: nn.Module, *args, **kwargs):
        if self.last_step != self.state.step:  # the first call of a new step
            self.last_step, self.position = self.state.step, 0
            self.steps += 1
        else:
            self.position += 1
        inside = self.timesteps[0] < self.state.timestep < self.timesteps[1]
        cached = self.cache.get(self.position)
        if cached is None or not inside or (self.steps - 1) % self.skip == 0:
            cached = self.cache[self.position] = self.fn_ref.original_forward(*args, **kwargs)
            self.state.computed[self.kind] += 1
        else:
            self.state.reused[self.kind] += 1
        return cached

    def reset_state(self, module: nn.Module | None) -> nn.Module | None:
        self.cache: dict[int, object] = {}
        self.steps, self.last_step, self.position = 0, None, 0
        return module


_RULES: dict[str, tuple[tuple[str, str], ...]] = {  # family -> (regex on the module name, kind), first match wins
    "sd1": (
        (r"motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12]$", "temporal"),
        (r"attentions\.\d+\.transformer_blocks\.\d+\.attn1$", "spatial"),
        (r"attentions\.\d+\.transformer_blocks\.\d+\.attn2$", "cross"),
    ),
    "sd3": (
        (r"^temporal\.layers\.\d+$", "temporal"),
        (r"transformer_blocks\.\d+\.attn2?$", "spatial"),
    ),
    "latte": (
        (r"temporal_transformer_blocks\.\d+\.attn1$", "temporal"),
        (r"transformer_blocks\.\d+\.attn1$", "spatial"),
        (r"transformer_blocks\.\d+\.attn2$", "cross"),
    ),
}


def attention_kinds(family: str, modules: dict[str, nn.Module]) -> dict[str, str]:
    """Module name -> 'spatial' | 'temporal' | 'cross' for a backbone's named attention modules."""
    kinds = {}
    for name in modules:
        kind = next((k for pattern, k in _RULES[family] if re.search(pattern, name)), None)
        if kind is not None:
            kinds[name] = kind
    return kinds


class PAB:
    """Pyramid Attention Broadcast on one denoiser: `apply_pab` makes it; the loop calls `reset` and `step`."""

    def __init__(self, modules: dict[str, nn.Module], kinds: dict[str, str], config: PABConfig) -> None:
        """Hook `modules[name]` for each name in `kinds` (name -> 'spatial' | 'temporal' | 'cross' | 'deep')."""
        self.config, self.state = config, PABState()
        self.modules = {}
        for name, kind in kinds.items():
            skip = config.skip(kind)
            if skip is None or skip < 2:
                continue
            registry = HookRegistry.check_if_exists_or_initialize(modules[name])
            registry.register_hook(PABHook(kind, skip, config.range(kind), self.state), HOOK)
            self.modules[name] = modules[name]

    def reset(self) -> None:
        """Forget every cache and count: called at the start of each generation."""
        self.state.step = -1
        self.state.computed = dict.fromkeys(KINDS, 0)
        self.state.reused = dict.fromkeys(KINDS, 0)
        for module in self.modules.values():
            HookRegistry.check_if_exists_or_initialize(module).get_hook(HOOK).reset_state(module)

    def step(self, timestep: float) -> None:
        self.state.step += 1
        self.state.timestep = float(timestep)

    def remove(self) -> None:
        for module in self.modules.values():
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(HOOK)
        self.modules = {}


def apply_pab(denoiser, config: PABConfig | None = None) -> PAB:
    """Hook Pyramid Attention Broadcast into a vidiff denoiser's attention modules (and, with `deep_skip`, a
    UNet's inner blocks). `config` defaults to `PABConfig.for_backbone(denoiser)`."""
    config = config or PABConfig.for_backbone(denoiser)
    modules = denoiser.attention_modules()
    kinds = attention_kinds(denoiser.pab_family or denoiser.family, modules)
    if config.deep_skip is not None:
        deep = denoiser.deep_modules()
        modules, kinds = modules | deep, kinds | dict.fromkeys(deep, "deep")
    return PAB(modules, kinds, config)


def remove_pab(pab: PAB) -> None:
    pab.remove()
