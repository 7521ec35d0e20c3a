"""Reuse a module's output across denoising steps: the hook shared by Pyramid Attention Broadcast and DeepCache.

A hooked module is recomputed in the first step, outside its timestep range, and every `skip`-th step; in
the other steps it returns its last output. A module may run several times in one step (frames in
batches), so outputs are cached per call position. Built on diffusers' hook registry (`ModelHook`,
`HookRegistry`); the loop calls `reset()` at the start of every generation and `step(t)` before each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffusers.hooks import HookRegistry, ModelHook
from torch import nn


@dataclass
class ReuseState:
    """The current step (set by the loop) and, per kind of module, calls computed and reused."""

    timestep: float = 0.0
    step: int = -1  # steps started in this generation
    computed: dict[str, int] = field(default_factory=dict)
    reused: dict[str, int] = field(default_factory=dict)


class ReuseHook(ModelHook):
    """Compute in the first step, outside the timestep range, and every `skip`-th step; else reuse."""

    _is_stateful = True

    def __init__(self, kind: str, skip: int, timesteps: tuple[int, int], state: ReuseState) -> None:
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


class ReuseCache:
    """Hooks on named modules, each with its kind, skip interval and timestep range; one shared state.

    Subclasses (one per accelerator) decide which modules and with what settings; this does the rest.
    """

    hook_name: str
    kinds: tuple[str, ...]

    def __init__(self, plan: dict[str, tuple[nn.Module, str, int, tuple[int, int]]]) -> None:
        """`plan`: module name -> (module, kind, skip, timestep range); skips below 2 are left unhooked."""
        self.state = ReuseState()
        self.modules: dict[str, nn.Module] = {}
        for name, (module, kind, skip, span) in plan.items():
            if skip is None or skip < 2:
                continue
            registry = HookRegistry.check_if_exists_or_initialize(module)
            registry.register_hook(ReuseHook(kind, skip, span, self.state), self.hook_name)
            self.modules[name] = module
        self.reset()

    def reset(self) -> None:
        """Forget every cache and count: called at the start of each generation."""
        self.state.step = -1
        self.state.computed = dict.fromkeys(self.kinds, 0)
        self.state.reused = dict.fromkeys(self.kinds, 0)
        for module in self.modules.values():
            HookRegistry.check_if_exists_or_initialize(module).get_hook(self.hook_name).reset_state(module)

    def step(self, timestep: float) -> None:
        self.state.step += 1
        self.state.timestep = float(timestep)

    def remove(self) -> None:
        for module in self.modules.values():
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(self.hook_name)
        self.modules = {}
