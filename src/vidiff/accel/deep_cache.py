"""DeepCache (Ma et al. 2023): reuse a UNet's inner blocks between steps, recomputing them every N-th step.

Every block but the outermost down and up blocks is recomputed every `skip`-th step only and its last
output reused in between, so those steps run only the full-resolution edges of the UNet. Only UNets have
such blocks (their spec says `deep_cache=True`); the hook is the one PAB uses (`reuse.py`).
"""

from __future__ import annotations

from torch import nn

from ..errors import InvalidArgument
from .configs import DeepCacheConfig
from .reuse import ReuseCache

KIND = "deep"


def inner_blocks(module: nn.Module) -> dict[str, nn.Module]:
    """A UNet's blocks but the outermost down and up blocks; empty for a module without UNet blocks."""
    if not all(hasattr(module, a) for a in ("down_blocks", "mid_block", "up_blocks")):
        return {}
    names = [f"down_blocks.{i}" for i in range(1, len(module.down_blocks))] + ["mid_block"]
    names += [f"up_blocks.{i}" for i in range(len(module.up_blocks) - 1)]
    return {name: module.get_submodule(name) for name in names}


class DeepCache(ReuseCache):
    hook_name = "vidiff_deep_cache"
    kinds = (KIND,)

    def __init__(self, blocks: dict[str, nn.Module], config: DeepCacheConfig) -> None:
        self.config = config
        super().__init__({n: (m, KIND, config.skip, config.timestep_range) for n, m in blocks.items()})


def apply_deep_cache(denoiser, config: DeepCacheConfig | None = None) -> DeepCache:
    """Hook DeepCache into a vidiff denoiser's UNet; a backbone without UNet blocks is refused."""
    blocks = inner_blocks(denoiser.module)
    if not blocks:
        raise InvalidArgument("--deep-cache", "this backbone has no UNet blocks to reuse (DeepCache needs a UNet)")
    return DeepCache(blocks, config or DeepCacheConfig())


def remove_deep_cache(cache: DeepCache) -> None:
    cache.remove()
