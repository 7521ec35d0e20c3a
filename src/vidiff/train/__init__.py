"""Training, AnimateDiff's way: an image stage (VAE, then UNet and text encoder) and a motion stage.

`TrainConfig` imports without torch; the trainer loads on first use of `make_stage` or `train`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..names import TRAIN_STAGES as STAGES
from .config import TrainConfig

if TYPE_CHECKING:
    from .trainer import make_stage, train

__all__ = ["STAGES", "TrainConfig", "make_stage", "train"]


def __getattr__(name: str):
    if name in ("make_stage", "train"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'vidiff.train' has no attribute {name!r}")
