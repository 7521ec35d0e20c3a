"""Command line: parse arguments into a request, call the library, report timings. Nothing else lives here."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence

from .accel.deep_cache import DeepCacheConfig
from .accel.pab import PABConfig
from .adapters.context import FUSES, NOISES, SCHEDULES, SCOPES
from .adapters.image_sequential import DEFAULT_FRAME_NOISE
from .errors import InvalidArgument, RenderInterrupted, VidiffError
from .motion.groupnorm import MODES as GROUPNORM_MODES
from .pipeline import MODES
from .presets import PRESETS
from .request import GenerationRequest
from .travel import parse_travel

DEFAULT_MODEL = "demo"
TRAVEL = ("prompt_travel", "negative_prompt_travel")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"vidiff: error: {message}", file=sys.stderr)
        sys.exit(2)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="folder, single-file checkpoint, hub id, or demo (default)")
    p.add_argument("--motion-module", help="AnimateDiff motion module: MotionAdapter folder or .ckpt/.safetensors")
    p.add_argument("--mode", default="motion", choices=MODES, help="motion modules, or frame by frame (sequential)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vidiff", description="Turn image diffusion models into video generators.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="text to video")
    gen.add_argument("prompt", nargs="?", help="what to make (not needed with --resume)")
    gen.add_argument("-o", "--output", help="out.gif | out.mp4 | out.webp | folder/ for PNG frames")
    _add_model_args(gen)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--prompt-travel", help='"0: a cat sitting | 32: a cat running" or a JSON file {frame: prompt}')
    gen.add_argument("--negative-prompt-travel", help="the same for the negative prompt")
    gen.add_argument("--travel-interpolation", default="linear", help="between keyframes: linear or slerp")
    gen.add_argument("--frames", type=int, help="default: 16, or the frames of --image-seeds latents")
    gen.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's)")
    gen.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: the model's)")
    gen.add_argument("--steps", type=int, help="default: 25, or the preset's")
    gen.add_argument("--guidance-scale", type=float, help="default: 7.5, or the preset's")
    gen.add_argument(
        "--preset", choices=PRESETS, help="few-step modules: lightning (AnimateDiff-Lightning), animatelcm"
    )
    gen.add_argument("--timestep-spacing", help="override the scheduler's: leading, trailing, linspace")
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
    gen.add_argument("--context-overlap", type=int, default=4, help="frames neighbouring windows share")
    gen.add_argument("--context-stride", type=int, help="frames between window starts (instead of the overlap)")
    gen.add_argument("--context-schedule", default="uniform", choices=SCHEDULES, help="window placement")
    gen.add_argument("--loop", action="store_const", const="looped", dest="context_schedule", help="seamless loop")
    gen.add_argument("--context-fuse", default="pyramid", choices=FUSES, help="weights of overlapping frames")
    gen.add_argument("--context-scope", default="backbone", choices=SCOPES, help="window the backbone, or motion only")
    gen.add_argument("--noise-type", default="random", choices=NOISES, help="FreeNoise: shuffle, repeat, random")
    gen.add_argument("--free-init", type=int, default=1, metavar="N", help="FreeInit passes (1: off)")
    gen.add_argument("--free-init-method", default="butterworth", help="butterworth, gaussian, ideal or box")
    gen.add_argument("--motion-scale", type=float, default=1.0, help="temporal layers' effect: 0 image only, 1 full")
    gen.add_argument("--fps", type=float, default=8.0)
    gen.add_argument("--decode-chunk-size", type=int, default=8, help="frames the VAE decodes at once")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing output")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    gen.add_argument("--compile-backend", default="inductor", help="any registered torch.compile backend")
    gen.add_argument("--fast", action="store_true", help="the backbone's best accelerators (UNets: PAB + DeepCache)")
    gen.add_argument("--pab", action="store_true", help="Pyramid Attention Broadcast (reuse attention between steps)")
    gen.add_argument("--pab-spatial", type=int, default=2, help="recompute spatial attention every N steps")
    gen.add_argument("--pab-temporal", type=int, default=3, help="recompute temporal attention every N steps")
    gen.add_argument("--pab-cross", type=int, default=6, help="recompute cross-attention every N steps")
    gen.add_argument("--pab-range", type=int, nargs=2, default=(100, 800), metavar=("LO", "HI"), help="timesteps")
    gen.add_argument("--deep-cache", type=int, nargs="?", const=DeepCacheConfig.skip, metavar="N",
                     help="UNets: recompute inner blocks every N steps, reuse them between (DeepCache)")  # fmt: skip
    gen.add_argument("--image-seeds", help='"latents: f.pt" | "src" | "src;latents=f.pt" | "src;mask=m.png"')
    gen.add_argument("--image-seed-strength", type=float, default=0.8, help="img2img: share of the schedule re-run")
    gen.add_argument("--denoising-start", type=float, help="fraction of the schedule the input latents have done")
    gen.add_argument("--denoising-end", type=float, help="stop at this fraction and save the noisy latents")
    gen.add_argument("--checkpoint-every", type=int, help="save resumable latents every N steps beside the output")
    gen.add_argument("--resume", help="continue an interrupted run from its .resume.safetensors checkpoint")

    dec = sub.add_parser("decode", help="decode saved latents into a video with a model's VAE")
    dec.add_argument("latents", help=".pt, .pth or .safetensors latents")
    dec.add_argument("-o", "--output", required=True, help="out.gif | out.mp4 | out.webp | folder/")
    dec.add_argument("--model", default=DEFAULT_MODEL, help="whose VAE decodes (default: %(default)s)")
    dec.add_argument("--dtype", default="auto")
    dec.add_argument("--device", default="cpu")
    dec.add_argument("--fps", type=float, default=8.0)
    dec.add_argument("--decode-chunk-size", type=int, default=8)
    dec.add_argument("--overwrite", action="store_true")

    tr = sub.add_parser("train", help="train an image model or motion modules (AnimateDiff's two stages)")
    from .train.trainer import add_arguments as train_arguments

    train_arguments(tr)

    ev = sub.add_parser("eval-demo", help="colour / shape / direction accuracy of a model on the demo prompts")
    _add_model_args(ev)
    ev.add_argument("--seeds", type=int, default=3, help="clips per combination")
    ev.add_argument(
        "--modes",
        default="motion,sequential",
        help="comma-separated modes to compare; '+pab' adds Pyramid Attention Broadcast, '+fast' the --fast preset",
    )
    ev.add_argument("--steps", type=int, default=25)
    ev.add_argument("--guidance-scale", type=float, default=7.5)
    ev.add_argument("--scheduler")
    ev.add_argument("--max-sequence-length", type=int, default=256, help="SD 3: T5 tokens (77 for vidiff's SD 3 demo)")
    ev.add_argument("--limit", type=int, help="only the first N combinations of each split")
    ev.add_argument("--json", help="also write the summaries here")

    bench = sub.add_parser("bench", help="seconds per step and peak memory, vidiff and diffusers side by side")
    from .bench import add_arguments

    add_arguments(bench)
    return parser


def _quiet_libraries() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


def job_from_args(args: argparse.Namespace):
    """The render job `vidiff generate` describes (with --resume: the checkpoint's job, to this output)."""
    from .job import RenderJob

    travel = {k: parse_travel(getattr(args, k), f"--{k.replace('_', '-')}") for k in TRAVEL if getattr(args, k)}
    if args.resume is None and args.prompt is None and not travel:
        raise InvalidArgument("prompt", "required (or --prompt-travel, or --resume a checkpoint)")
    first = travel["prompt_travel"][min(travel["prompt_travel"])] if "prompt_travel" in travel else ""
    given = _fields(args, GenerationRequest, prompt=args.prompt or first, strength=args.image_seed_strength, **travel)
    span = tuple(args.pab_range)
    return RenderJob(
        **_fields(args, RenderJob, request=GenerationRequest(**given), use_t5=not args.no_t5),
        pab=PABConfig(args.pab_spatial, args.pab_temporal, args.pab_cross, span, span, span) if args.pab else None,
        deep_cache=DeepCacheConfig(args.deep_cache) if args.deep_cache is not None else None,
        compile_backend=args.compile_backend if args.compile else None,
    )


def _fields(args: argparse.Namespace, cls, **values) -> dict:
    """`cls`'s dataclass fields taken from same-named flags that were given, then `values`."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)} - {"pab", "deep_cache", "compile_backend"}
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None} | values


def generate(args: argparse.Namespace) -> None:
    from .job import render

    job = job_from_args(args)
    try:
        result = render(job, progress=not args.quiet)
    except RenderInterrupted as e:
        if e.checkpoint is not None:
            print(f"vidiff: interrupted; resume with: vidiff generate --resume {e.checkpoint} "
                  f"--model {e.job.model} -o {e.job.output}", file=sys.stderr)  # fmt: skip
        raise
    run = result.job
    print(f"loaded {run.model} in {result.timings.load:.1f} s")
    for note in result.notes:
        print(note)
    if result.is_latents:
        denoised = run.request.denoising_end or 1.0
        print(f"wrote {result.output} (latents {tuple(result.latents.shape)}, {denoised:.0%} denoised)")
    else:
        r = run.request
        print(f"wrote {result.output} ({result.frames_written} frames, {r.width}x{r.height}, {run.fps:g} fps)")
    gib = 2**30
    print(f"seed {run.request.seed} | {result.timings.summary()}")
    print(f"peak memory {(result.weights_bytes + result.peak_bytes) / gib:.3f} GiB: weights "
          f"{result.weights_bytes / gib:.3f} + working {result.peak_bytes / gib:.3f}")  # fmt: skip


def decode(args: argparse.Namespace) -> None:
    from .job import decode_file

    count, denoised = decode_file(
        args.latents, args.model, args.output, args.fps, args.decode_chunk_size, args.dtype, args.device,
        args.overwrite,
    )  # fmt: skip
    if denoised is not None and denoised < 1:
        print(f"note: these latents are only {denoised:.0%} denoised")
    print(f"wrote {args.output} ({count} frames)")


def train_stage(args: argparse.Namespace) -> None:
    from .train import TrainConfig, make_stage, train
    from .train.trainer import direction_probe

    cfg = TrainConfig(**_fields(args, TrainConfig))
    start = time.perf_counter()
    stage = make_stage(cfg)
    losses = train(cfg, stage=stage)
    print(
        f"{args.stage}: {len(losses)} steps, final loss {sum(losses[-50:]) / len(losses[-50:]):.4f}, "
        f"{time.perf_counter() - start:.0f} s this run"
    )
    if args.probe:
        true, swapped = direction_probe(stage, args.probe)
        print(f"direction probe ({args.probe} clips, t >= 600): loss {true:.4f} true word, {swapped:.4f} swapped, "
              f"gap {(swapped - true) / true:+.1%}")  # fmt: skip


def eval_demo(args: argparse.Namespace) -> None:
    import json

    from .demo.data import HELD_OUT, SEEN
    from .demo.evaluate import evaluate, summarize, table
    from .pipeline import VideoPipeline

    rows = {}
    for name in (m.strip() for m in args.modes.split(",")):
        mode, _, extra = name.partition("+")
        if extra not in ("", "pab", "fast"):
            raise InvalidArgument("--modes", f"unknown suffix +{extra} in {name!r} (+pab or +fast)")
        pipe = VideoPipeline.from_pretrained(
            args.model, args.motion_module, args.dtype, args.device, mode, groupnorm=args.groupnorm,
            loras=args.loras, motion_loras=args.motion_loras, vae=args.vae,
        )  # fmt: skip
        if extra == "pab":
            pipe.enable_pab()
        elif extra == "fast":
            pipe.enable_fast()
        for split, combos in (("seen", SEEN), ("held-out", HELD_OUT)):
            options = {k: getattr(args, k) for k in ("steps", "guidance_scale", "scheduler", "max_sequence_length")}
            rows[f"{name} / {split}"] = summarize(evaluate(pipe, combos[: args.limit], range(args.seeds), **options))
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def bench(args: argparse.Namespace) -> None:
    from .bench import run

    run(args)


COMMANDS = {"generate": generate, "decode": decode, "eval-demo": eval_demo, "train": train_stage, "bench": bench}


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run the way Ctrl-C does: outputs aborted, checkpoints kept


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    _quiet_libraries()
    try:
        COMMANDS[args.command](args)
    except VidiffError as e:
        print(f"vidiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidiff: interrupted", file=sys.stderr)
        return 130
    return 0
