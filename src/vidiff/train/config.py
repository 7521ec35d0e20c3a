"""`vidiff train`'s settings: one dataclass, checked before any model loads (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import checks
from ..errors import InvalidArgument
from ..names import DTYPE_NAMES
from ..names import TRAIN_STAGES as STAGES
from ..outputs import writable_folder

FAMILIES = ("sd1", "sd3")


@dataclass
class TrainConfig:
    stage: str
    model: Path  # the SD 1.x folder: trained in place (vae, image) or frozen (motion)
    data: str = "demo"  # "demo" or a folder of captioned videos
    out: Path | None = None  # motion stage: MotionAdapter folder (SD 1.x) or temporal .safetensors (SD 3)
    steps: int = 1000
    batch_size: int = 16
    lr: float | None = None  # default per stage
    frames: int = 16
    size: int = 64
    seed: int = 0
    checkpoint_every: int = 200
    warmup: int = 100
    uncond_prob: float = 0.1
    save_dtype: str = "float32"
    restart: bool = False  # ignore an existing checkpoint
    keyframe_share: float = 0.0  # image stages: how often a clip's first frame is drawn (else any frame)
    text_lr_scale: float = 1.0  # image stages: the text encoders learn this much slower (0: frozen)
    family: str | None = None  # a new folder's architecture: "sd1" (default) or "sd3"; else the folder's own
    trainable: tuple[str, ...] = ("motion_modules.",)  # motion stage: names containing one of these train
    lora_rank: int = 0  # motion stage: > 0 adds a LoRA of this rank on the spatial attention
    lora_out: Path | None = None  # where that LoRA goes (default MODEL/spatial_lora.safetensors)
    min_noise: float = 0.0  # noise levels drawn from this fraction of the schedule ...
    max_noise: float = 1.0  # ... up to this one
    zero_snr: bool = False  # train on (and write) the folder's schedule rescaled to zero terminal SNR
    fresh_text_encoder: bool = False  # image and motion stages: the text encoder restarts from random weights
    probe: int = 0  # then measure on this many demo clips whether the model reads its words (0: no probe)
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model, self.out, self.lora_out = (Path(p) if isinstance(p, str | Path) and str(p) else p
                                               for p in (self.model, self.out, self.lora_out))  # fmt: skip
        if isinstance(self.trainable, list | tuple):
            self.trainable = tuple(self.trainable)

    def validate(self) -> None:
        """Every check that needs no model: names, ranges, finiteness, where the weights go."""
        c = checks
        c.choice("stage", self.stage, STAGES)
        if not isinstance(self.model, Path):
            raise InvalidArgument("--model", f"must be a folder, got {self.model!r}")
        writable_folder("--model", self.model if self.model.exists() else self.model.parent)
        if self.out is not None:
            if not isinstance(self.out, Path):
                raise InvalidArgument("--out", f"must be a path, got {self.out!r}")
            writable_folder("--out", self.out if self.out.is_dir() else self.out.parent)
        c.text("--data", self.data, empty=False)
        c.integer("--steps", self.steps, 0 if self.probe else 1)  # 0 steps: only the probe
        if c.integer("--probe", self.probe, 0) and self.stage != "motion":
            raise InvalidArgument("--probe", "measures the motion stage (clips), not the " + self.stage + " stage")
        for flag, value in (("--batch-size", self.batch_size), ("--frames", self.frames),
                            ("--checkpoint-every", self.checkpoint_every)):  # fmt: skip
            c.integer(flag, value, 1)
        if c.integer("--size", self.size, 8) % 8:
            raise InvalidArgument("--size", f"must be a multiple of 8, got {self.size}")
        c.integer("--seed", self.seed, 0, 2**63 - 1)
        c.integer("--warmup", self.warmup, 0)
        if self.lr is not None:
            c.number("--lr", self.lr, 0, 1, above=True)
        c.number("--uncond-prob", self.uncond_prob, 0, 1)
        c.choice("--save-dtype", self.save_dtype, [d for d in DTYPE_NAMES if d != "auto"])
        c.number("--keyframe-share", self.keyframe_share, 0, 1)
        c.number("--text-lr-scale", self.text_lr_scale, 0)
        if not isinstance(self.trainable, tuple) or not self.trainable:
            raise InvalidArgument("--trainable", "needs at least one non-empty pattern")
        for pattern in self.trainable:
            c.text("--trainable", pattern, empty=False)
        c.number("--min-noise", self.min_noise, 0, 1)
        if self.min_noise == 1:
            raise InvalidArgument("--min-noise", "must be in [0, 1), got 1.0 (no noise level is left above it)")
        if c.number("--max-noise", self.max_noise, 0, 1, above=True) <= self.min_noise:
            raise InvalidArgument("--max-noise", f"must be above --min-noise ({self.min_noise}), got {self.max_noise}")
        for flag, value in (("--zero-snr", self.zero_snr), ("--fresh-text-encoder", self.fresh_text_encoder)):
            if not isinstance(value, bool):
                raise InvalidArgument(flag, f"must be true or false, got {value!r}")
        c.integer("--lora-rank", self.lora_rank, 0)
        if self.lora_out is not None:
            writable_folder("--lora-out", Path(self.lora_out).parent)
        if self.family is not None:
            c.choice("--family", self.family, FAMILIES)

    @property
    def lora_path(self) -> Path:
        return self.lora_out or self.model / "spatial_lora.safetensors"

    @property
    def checkpoint(self) -> Path:
        if self.stage == "motion" and self.out:
            folder = self.out.parent if self.out.suffix == ".safetensors" else self.out
            return folder / f".train-{self.stage}-{self.out.stem}.pt"
        return self.model / f".train-{self.stage}.pt"
