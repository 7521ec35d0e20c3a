"""The options of one render (`vidiff generate`'s flags, the keys of a `vidiff batch` job) and the RenderJob
they describe."""

from __future__ import annotations

import argparse
import functools

from . import checks
from .accel.configs import DeepCacheConfig, PABConfig
from .errors import InvalidArgument
from .names import (
    BENCH_OPTIONAL_ROWS,
    BENCH_ROWS,
    CONTEXT_FUSES,
    CONTEXT_SCHEDULES,
    CONTEXT_SCOPES,
    DEFAULT_DEEP_CACHE_SKIP,
    DEFAULT_FRAME_NOISE,
    GROUPNORM_MODES,
    MODES,
    NOISE_TYPES,
    PRESET_NAMES,
    TRAIN_STAGES,
)
from .request import GROUPS, GenerationRequest, groups_from
from .settings import LoadSettings
from .travel import parse_travel

DEFAULT_MODEL = "demo"
TRAVEL = ("prompt_travel", "negative_prompt_travel")


def add_model_arguments(p: argparse.ArgumentParser, mode: bool = True) -> None:
    """The model and how it loads: shared by generate, batch and eval-demo (which takes --modes instead)."""
    p.add_argument("--model", default=DEFAULT_MODEL, help="folder, single-file checkpoint, hub id, or demo (default)")
    p.add_argument("--motion-module", help="AnimateDiff motion module: MotionAdapter folder or .ckpt/.safetensors")
    if mode:
        p.add_argument("--mode", default="motion", choices=MODES, help="motion modules, or frame by frame")
    p.add_argument("--frame-noise", type=float, default=DEFAULT_FRAME_NOISE, help="sequential: per-frame noise")
    p.add_argument("--frame-batch", type=int, help="sequential: frames per UNet call (default: all)")
    p.add_argument("--no-t5", action="store_true", help="SD 3: skip the T5 encoder (zeros in its place)")
    p.add_argument("--groupnorm", default="auto", choices=GROUPNORM_MODES,
                   help="AnimateDiff GroupNorm: as the module was trained (auto), original, diffusers")  # fmt: skip
    p.add_argument("--lora", action="append", default=[], dest="loras", metavar="FILE[:SCALE]",
                   help="LoRA on the image model (kohya/A1111, diffusers, peft), repeatable")  # fmt: skip
    p.add_argument("--motion-lora", action="append", default=[], dest="motion_loras", metavar="FILE[:SCALE]",
                   help="LoRA on the motion modules (AnimateDiff v2 motion LoRAs, diffusers), repeatable")  # fmt: skip
    p.add_argument("--vae", help="replace the model's VAE: a diffusers folder or an original .safetensors/.ckpt")
    p.add_argument("--dtype", default="auto", help="auto (bf16 where native, else float32), float32, bfloat16, float16")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: %(default)s)")


def add_dry_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="check the arguments and say what would run; load nothing")


def add_generate_arguments(gen: argparse.ArgumentParser) -> None:
    """What one render takes, besides the prompt and the output."""
    add_model_arguments(gen)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--prompt-travel", help='"0: a cat sitting | 32: a cat running" or a JSON file {frame: prompt}')
    gen.add_argument("--negative-prompt-travel", help="the same for the negative prompt")
    gen.add_argument("--travel-interpolation", default="linear", help="between keyframes: linear or slerp")
    gen.add_argument("--frames", type=int, help="default: 16, or the frames of --image-seeds latents")
    gen.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's)")
    gen.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: the model's)")
    gen.add_argument("--steps", type=int, help="default: 25, or the preset's")
    gen.add_argument("--guidance-scale", type=float, help="default: 7.5, or the preset's")
    gen.add_argument("--guidance-rescale", type=float, help="rescale CFG toward the conditional prediction's std (0-1)")
    gen.add_argument(
        "--preset", choices=PRESET_NAMES, help="few-step modules: lightning (AnimateDiff-Lightning), animatelcm"
    )
    gen.add_argument(
        "--timestep-spacing", help="leading, trailing, linspace (default: the model's; zero-SNR: trailing)"
    )
    gen.add_argument("--seed", type=int, help="default: random, printed at the end")
    gen.add_argument(
        "--scheduler", help="ddim (SD 1.x), euler, euler-a, dpm++2m, pndm, lms, ddpm, lcm; flow-euler (SD 3)"
    )
    gen.add_argument("--prompt-2", help="SD 3: the CLIP-G prompt (default: the prompt)")
    gen.add_argument("--prompt-3", help="SD 3: the T5 prompt (default: the prompt)")
    gen.add_argument("--max-sequence-length", type=int, default=256, help="SD 3: T5 tokens")
    gen.add_argument("--beta-schedule", help="override the model's: linear (AnimateDiff's), scaled_linear, ...")
    gen.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    gen.add_argument("--context-length", type=int, help="frames per context window (default 16 past the table)")
    gen.add_argument("--context-overlap", type=int, help="frames neighbouring windows share (default 4)")
    gen.add_argument("--context-stride", type=int, help="frames between window starts (instead of the overlap)")
    gen.add_argument("--context-schedule", choices=CONTEXT_SCHEDULES, help="window placement (default uniform)")
    gen.add_argument("--loop", action="store_true", help="seamless loop: --context-schedule looped")
    gen.add_argument("--context-fuse", default="pyramid", choices=CONTEXT_FUSES, help="weights of overlapping frames")
    gen.add_argument(
        "--context-scope", default="backbone", choices=CONTEXT_SCOPES, help="window the backbone, or motion only"
    )
    gen.add_argument("--noise-type", default="random", choices=NOISE_TYPES, help="FreeNoise: shuffle, repeat, random")
    gen.add_argument("--free-init", type=int, default=1, metavar="N", help="FreeInit passes (1: off)")
    gen.add_argument("--free-init-method", default="butterworth", help="butterworth, gaussian, ideal or box")
    gen.add_argument("--motion-scale", type=float, default=1.0, help="temporal layers' effect: 0 image only, 1 full")
    gen.add_argument("--fps", type=float, default=8.0)
    gen.add_argument("--decode-chunk-size", type=int, default=8, help="frames the VAE decodes at once")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing output")
    gen.add_argument("--force", action="store_true", help="run even when the memory preflight says it will not fit")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    gen.add_argument("--compile-backend", default="inductor", help="any registered torch.compile backend")
    gen.add_argument("--fast", action="store_true", help="the backbone's best accelerators (UNets: PAB + DeepCache)")
    gen.add_argument("--pab", action="store_true", help="Pyramid Attention Broadcast (reuse attention between steps)")
    gen.add_argument("--pab-spatial", type=int, default=2, help="recompute spatial attention every N steps")
    gen.add_argument("--pab-temporal", type=int, default=3, help="recompute temporal attention every N steps")
    gen.add_argument("--pab-cross", type=int, default=6, help="recompute cross-attention every N steps")
    gen.add_argument("--pab-range", type=int, nargs=2, default=(100, 800), metavar=("LO", "HI"), help="timesteps")
    gen.add_argument("--deep-cache", type=int, nargs="?", const=DEFAULT_DEEP_CACHE_SKIP, metavar="N",
                     help="UNets: recompute inner blocks every N steps, reuse them between (DeepCache)")  # fmt: skip
    gen.add_argument("--image-seeds", help='"latents: f.pt" | "src" | "src;latents=f.pt" | "src;mask=m.png" | '
                     '"src;control=ctrl" (with --control-nets a bare "ctrl" steers)')  # fmt: skip
    gen.add_argument("--control-nets", action="append", metavar="URI",
                     help='"PATH;scale=1.0;start=0.0;end=1.0" ControlNet (folder or A1111 file); SparseCtrl: '
                     '"PATH;frames=0,8,15"; repeatable or comma-separated')  # fmt: skip
    gen.add_argument("--ip-adapters", metavar="URI", help='"ip-adapter_sd15.safetensors;scale=0.6" (scale keyframes: '
                     '"scale=0:0.2,15:0.8"); its image by --image-seeds "adapter: ref.png"')  # fmt: skip
    gen.add_argument("--image-encoder", help="the IP-Adapter's CLIP vision folder (default: image_encoder/ beside it)")
    gen.add_argument("--control-image-processors", nargs="+", metavar="PROCESSOR",
                     help='one per ControlNet, in order: "canny;lower=100;upper=200", invert, none')  # fmt: skip
    gen.add_argument("--image-seed-strength", type=float, default=0.8, help="img2img: share of the schedule re-run")
    gen.add_argument("--denoising-start", type=float, help="fraction of the schedule the input latents have done")
    gen.add_argument("--denoising-end", type=float, help="stop at this fraction and save the noisy latents")
    gen.add_argument("--checkpoint-every", type=int, help="save resumable latents every N steps beside the output")
    gen.add_argument("--resume", help="continue an interrupted run from its .resume.safetensors checkpoint")


def add_train_arguments(tr: argparse.ArgumentParser) -> None:
    """`vidiff train`'s flags: TrainConfig's fields."""
    tr.add_argument("stage", choices=TRAIN_STAGES, help="vae, image (UNet + text encoder), or motion")
    tr.add_argument("--model", required=True, help="SD 1.x folder: trained in place (vae, image) or frozen (motion)")
    tr.add_argument(
        "--data",
        default="demo",
        help="'demo' (synthetic shapes), 'demo-crossing' (each crossing the frame), or a folder of captioned videos",
    )
    tr.add_argument("--out", help="motion stage: MotionAdapter folder to write (default: MODEL/motion_adapter)")
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--lr", type=float, help="default: 1e-3 for vae, 5e-4 otherwise")
    tr.add_argument("--frames", type=int, default=16)
    tr.add_argument("--size", type=int, default=64, help="training resolution in pixels")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--checkpoint-every", type=int, default=200)
    tr.add_argument("--save-dtype", default="float32", help="dtype of the exported weights")
    tr.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    tr.add_argument("--family", choices=("sd1", "sd3"), help="architecture of a new demo-sized model (default sd1)")
    tr.add_argument("--keyframe-share", type=float, default=0.0, help="image stage: share of first frames drawn")
    tr.add_argument("--text-lr-scale", type=float, default=1.0, help="image stage: text lr factor (0: frozen)")
    tr.add_argument("--trainable", nargs="+", default=["motion_modules."], metavar="PATTERN",
                    help="motion stage: parameters whose names contain one of these train ('.' = all)")  # fmt: skip
    tr.add_argument("--lora-rank", type=int, default=0, help="motion stage: a LoRA of this rank on spatial attention")
    tr.add_argument("--lora-out", help="where that LoRA is written (default MODEL/spatial_lora.safetensors)")
    tr.add_argument("--warmup", type=int, default=100, help="steps of linear lr warm-up (then cosine to a tenth)")
    tr.add_argument("--min-noise", type=float, default=0.0, help="train on noise levels from this schedule fraction")
    tr.add_argument("--max-noise", type=float, default=1.0, help="... up to this one")
    tr.add_argument("--zero-snr", action="store_true", help="rescale the folder's schedule to zero terminal SNR "
                    "(trailing spacing), train on it and write it to the folder")  # fmt: skip
    tr.add_argument("--fresh-text-encoder", action="store_true",
                    help="restart the text encoder from random weights (the motion stage freezes it unless "
                    "--trainable names it; --text-lr-scale 0 freezes it in the image stage)")  # fmt: skip
    tr.add_argument("--probe", type=int, default=0, metavar="CLIPS",
                    help="motion stage: then the word probe on this many demo clips (--steps 0: only it)")  # fmt: skip


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """`vidiff bench`'s flags."""
    p.add_argument(
        "--size",
        choices=("sd15", "sdxl", "tiny", "demo"),
        default="sd15",
        help="random SD 1.5-sized, SDXL-sized (with AnimateDiff-SDXL) or tiny weights, or the demo",
    )
    p.add_argument("--model", help="an SD 1.x or SDXL folder instead of --size (with --motion-module)")
    p.add_argument("--motion-module", help="with --model: AnimateDiff motion module (folder or single file)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--baseline-dtype", default="float32", help="diffusers' dtype, and vidiff's in the same-dtype row")
    p.add_argument("--rounds", type=int, default=2, help="measured rounds after the warm-up")
    p.add_argument(
        "--rows",
        default=",".join(BENCH_ROWS),
        help=f"comma-separated, of {', '.join(BENCH_ROWS + BENCH_OPTIONAL_ROWS)}",
    )
    p.add_argument("--lightning-steps", type=int, default=4, help="steps of the lightning row")
    p.add_argument("--decode-chunk-size", type=int, default=8)
    p.add_argument("--cache", help="where the random weights are kept (default: ~/.cache/vidiff/bench-SIZE)")
    p.add_argument("--json", help="also write the results here")


def job_from_args(args: argparse.Namespace):
    """The render job `vidiff generate` describes (with --resume: the checkpoint's job, to this output)."""
    from .job import RenderJob

    travel = {k: parse_travel(getattr(args, k), f"--{k.replace('_', '-')}") for k in TRAVEL if getattr(args, k)}
    if args.resume is None and args.prompt is None and not travel:
        raise InvalidArgument("prompt", "required (or --prompt-travel, or --resume a checkpoint)")
    first = travel["prompt_travel"][min(travel["prompt_travel"])] if "prompt_travel" in travel else ""
    if args.loop:
        if args.context_schedule not in (None, "looped"):
            raise InvalidArgument(
                "--loop", f"contradicts --context-schedule {args.context_schedule} (--loop is looped)"
            )
        args.context_schedule = "looped"
    given = fields_from(args, GenerationRequest, prompt=args.prompt or first, strength=args.image_seed_strength)
    given |= groups_from(vars(args) | travel)
    span = tuple(args.pab_range)
    pab = PABConfig(args.pab_spatial, args.pab_temporal, args.pab_cross, span, span, span)
    pab.validate()  # given without --pab, the --pab-* flags are still checked
    return RenderJob(
        **fields_from(args, RenderJob, request=GenerationRequest(**given)),
        load=load_from_args(args, compile_backend=args.compile_backend if args.compile else None),
        pab=pab if args.pab else None,
        deep_cache=DeepCacheConfig(args.deep_cache) if args.deep_cache is not None else None,
    )


def load_from_args(args: argparse.Namespace, **values) -> LoadSettings:
    """The LoadSettings of `add_model_arguments`' flags, then `values`."""
    return LoadSettings(**fields_from(args, LoadSettings, use_t5=not args.no_t5) | values)


class _OptionParser(argparse.ArgumentParser):
    """An argument parser whose errors raise InvalidArgument (a job's options are not a command line)."""

    def error(self, message: str):  # type: ignore[override]
        raise InvalidArgument("option", message)


@functools.cache
def option_parser() -> argparse.ArgumentParser:
    """`vidiff generate`'s options, without the prompt and the output: what a flat job's keys may name. Built
    once (a batch converts every line with it); parsing into a given namespace leaves it unchanged."""
    parser = _OptionParser(add_help=False, exit_on_error=False)
    add_generate_arguments(parser)
    return parser


ALIASES = {"lora": "loras", "motion_lora": "motion_loras"}  # a flag whose value is kept under another name
APPENDED = ("loras", "motion_loras", "control_nets")  # repeatable flags: a list is one flag per item
LIST_FLAGS = (*APPENDED, "pab_range", "control_image_processors")  # options whose value is itself a list


def job_from_options(options: dict, defaults: argparse.Namespace | None = None):
    """The RenderJob of a flat job: `vidiff generate`'s flags as keys without the dashes ({"prompt": ...,
    "frames": 16, "lora": ["a.safetensors:0.8"], "pab": true, "context-length": 12}), read by the generate
    parser's own types and choices over `defaults` (a Namespace of the same options, e.g. `vidiff batch`'s)."""
    parser = option_parser()
    known = option_defaults()
    args = argparse.Namespace(**(known | {"prompt": None} | vars(defaults or argparse.Namespace())))
    for key, value in options.items():
        name = key.replace("-", "_")
        dest = ALIASES.get(name, name)
        if dest == "prompt":
            args.prompt = checks.text("prompt", value)
            continue
        if dest not in known:
            raise InvalidArgument("job", f"unknown option {key!r}")
        if dest in APPENDED:
            setattr(args, dest, [])  # the job's list replaces the defaults'
        try:
            parser.parse_args(_argv("--" + name.replace("_", "-"), dest, value), namespace=args)
        except (argparse.ArgumentError, InvalidArgument) as e:
            raise InvalidArgument("job", f"{key}: {value!r} is not a valid value ({e.message})") from None
        if value is False:  # an off switch: the flag's own default, whatever `defaults` said
            setattr(args, dest, parser.get_default(dest))
    return job_from_args(args)


@functools.cache
def option_defaults() -> dict:
    """Every generate option's default, by its dest (shared: read it, copy it to change it)."""
    return vars(option_parser().parse_args([]))


def _argv(flag: str, dest: str, value) -> list[str]:
    """The command-line words of one option's value (a list: one flag per item for repeatable flags)."""
    if isinstance(value, bool):
        return [flag]  # false: checked as a switch, then reset by the caller
    if value is None or isinstance(value, dict) or (isinstance(value, list) and dest not in LIST_FLAGS):
        raise InvalidArgument("option", "expected a single value")
    if isinstance(value, list):
        return [f"{flag}={v}" for v in value] if dest in APPENDED else [flag, *map(str, value)]
    return [f"{flag}={value}"]


def fields_from(args: argparse.Namespace, cls, **values) -> dict:
    """`cls`'s dataclass fields taken from same-named flags that were given, then `values`."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)} - {"pab", "deep_cache", "compile_backend", *GROUPS}
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None} | values
