"""LoadSettings: which weights a pipeline loads and how they run. A job holds one, `VideoPipeline.from_pretrained`
takes one, and jobs with equal settings share a warm pipeline. Nothing here imports torch."""

from __future__ import annotations

from dataclasses import dataclass, fields

from . import checks
from .errors import InvalidArgument
from .families import check_families
from .names import DEFAULT_FRAME_NOISE, DEVICE_KINDS, DTYPE_NAMES, GROUPNORM_MODES, MODES

FLAGS = {"loras": "--lora", "motion_loras": "--motion-lora", "use_t5": "--no-t5", "compile_backend": "--compile"}


@dataclass(frozen=True)
class LoadSettings:
    """The model and how it loads. Hashable: the warm-pipeline key."""

    model: str = "demo"  # folder, single file, hub id, `demo` or `tiny-random`
    motion_module: str | None = None  # AnimateDiff module (folder or file); vidiff SD 3 temporal layers
    mode: str = "motion"  # or "sequential": frame by frame with the image backbone alone
    frame_noise: float = DEFAULT_FRAME_NOISE  # sequential: per-frame perturbation of the shared noise
    frame_batch: int | None = None  # sequential: frames per backbone call (None: all)
    use_t5: bool = True  # SD 3: load T5 when the folder has it
    groupnorm: str = "auto"  # AnimateDiff GroupNorm: as trained by the original code, or as diffusers runs it
    loras: tuple[str, ...] = ()  # "FILE" or "FILE:SCALE" on the image model, fused at load
    motion_loras: tuple[str, ...] = ()  # the same, on the motion modules
    vae: str | None = None  # replace the model's VAE (a diffusers folder or an original-layout file)
    dtype: str = "auto"  # bfloat16 where native, else float32 (CPU) or float16
    device: str = "cpu"
    compile_backend: str | None = None  # torch.compile the backbone with this backend
    fuse_loras: bool = True  # False keeps live peft layers (the benchmark's unfused row)

    def __post_init__(self) -> None:
        for name in ("loras", "motion_loras"):  # lists from JSON or callers; tuples keep the settings hashable
            value = getattr(self, name)
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, tuple(value))

    def validate(self) -> None:
        """Every check that needs no weights: the values, then the files they name."""
        self.check_values()
        for flag, path in (("--motion-module", self.motion_module), ("--vae", self.vae)):
            if path is not None:
                checks.existing(flag, path)
        for flag, specs in (("--lora", self.loras), ("--motion-lora", self.motion_loras)):
            for spec in specs:
                checks.existing(flag, checks.weighted_file(flag, spec)[0])
        loras = [checks.weighted_file("--lora", spec)[0] for spec in self.loras]
        check_families(self.model, self.motion_module, loras)  # from configs and headers, torch-free

    def check_values(self) -> None:
        """Names, ranges and combinations, without touching the file system (`from_pretrained` runs these; the
        loaders say what is wrong with a file)."""
        c = checks
        c.text("--model", self.model, empty=False)
        c.choice("--mode", self.mode, MODES)
        if self.frame_by_frame and (self.motion_module or self.motion_loras):
            flag = "--motion-module" if self.motion_module else "--motion-lora"
            raise InvalidArgument(flag, "has no use in --mode sequential (each frame is denoised by the image model "
                                  "alone); drop it, or use --mode motion")  # fmt: skip
        c.number("--frame-noise", self.frame_noise, 0)
        if self.frame_batch is not None:
            c.integer("--frame-batch", self.frame_batch, 1)
        c.choice("--groupnorm", self.groupnorm, GROUPNORM_MODES)
        for flag, specs in (("--lora", self.loras), ("--motion-lora", self.motion_loras)):
            if not isinstance(specs, tuple):
                raise InvalidArgument(flag, f"must be a list of FILE[:SCALE], got {specs!r}")
        c.choice("--dtype", self.dtype, DTYPE_NAMES, "dtype")
        c.choice("--device", c.text("--device", self.device).split(":")[0], DEVICE_KINDS, "device")
        for flag, value in (("--no-t5", self.use_t5), ("--fuse-loras", self.fuse_loras)):
            if not isinstance(value, bool):
                raise InvalidArgument(flag, f"must be true or false, got {value!r}")
        if self.compile_backend is not None:
            c.text("--compile-backend", self.compile_backend, empty=False)

    @property
    def frame_by_frame(self) -> bool:
        """The image backbone alone, one frame at a time (`--mode sequential`); else its temporal layers run."""
        return self.mode == "sequential"

    @classmethod
    def from_dict(cls, data: dict) -> LoadSettings:
        unknown = sorted(set(data) - set(NAMES))
        if unknown:
            raise InvalidArgument("job", f"load: unknown keys {', '.join(unknown)}")
        return cls(**data)


NAMES = tuple(f.name for f in fields(LoadSettings))
