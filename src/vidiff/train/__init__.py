"""Training, AnimateDiff's way: an image stage (VAE, then UNet and text encoder) and a motion stage."""

from .trainer import STAGES, TrainConfig, make_stage, train

__all__ = ["STAGES", "TrainConfig", "make_stage", "train"]
