"""Command line: parse arguments into a request, call the library, report timings. Nothing else lives here."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from .errors import VidiffError
from .request import GenerationRequest
from .schedules import DEFAULT_SCHEDULER

DEFAULT_MODEL = "tiny-random"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"vidiff: error: {message}", file=sys.stderr)
        sys.exit(2)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="diffusers SD 1.x folder or hub id (default: %(default)s)")
    p.add_argument("--motion-module", help="AnimateDiff motion module: MotionAdapter folder or .ckpt/.safetensors")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, or float16 on a GPU (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vidiff", description="Turn image diffusion models into video generators.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="text to video")
    gen.add_argument("prompt")
    gen.add_argument("-o", "--output", help="out.gif | out.mp4 | out.webp | folder/ for PNG frames")
    _add_model_args(gen)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--frames", type=int, default=16)
    gen.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's)")
    gen.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: the model's)")
    gen.add_argument("--steps", type=int, default=25)
    gen.add_argument("--guidance-scale", type=float, default=7.5)
    gen.add_argument("--seed", type=int, help="default: random, printed at the end")
    gen.add_argument("--scheduler", default=DEFAULT_SCHEDULER, help="ddim, euler, euler-a, dpm++2m, pndm, lms, ddpm")
    gen.add_argument("--beta-schedule", help="override the model's: linear (AnimateDiff's), scaled_linear, ...")
    gen.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    gen.add_argument("--fps", type=float, default=8.0)
    gen.add_argument("--decode-chunk-size", type=int, default=8, help="frames the VAE decodes at once")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing output")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

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


def _default_output(prompt: str, seed: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "video"
    return f"{slug}-{seed}.gif"


def generate(args: argparse.Namespace) -> None:
    from .export import FrameWriter, check_output
    from .loading import resolve_device, resolve_dtype
    from .pipeline import VideoPipeline

    # 1. Everything that can be checked without the model, before loading it.
    request = GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        frames=args.frames,
        height=args.height,
        width=args.width,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        scheduler=args.scheduler,
        beta_schedule=args.beta_schedule,
        eta=args.eta,
    )
    request.validate()
    if args.output is not None:
        check_output(args.output, args.overwrite)
    resolve_dtype(args.dtype, resolve_device(args.device))
    # 2. Load, then validate the request against the model.
    if args.model == DEFAULT_MODEL:
        print("note: no --model given: using a tiny randomly initialised model (its videos are noise)")
    pipe = VideoPipeline.from_pretrained(args.model, args.motion_module, args.dtype, args.device)
    request = pipe.resolve(request)
    output = args.output or _default_output(request.prompt, request.seed)
    print(f"loaded {args.model} in {pipe.timings.load:.1f} s")
    # 3. Denoise, then decode in chunks straight into the writer.
    with FrameWriter(output, args.fps, args.overwrite) as writer:
        latents = pipe.generate_latents(request, progress=not args.quiet)
        for frames in pipe.decode(latents[0], args.decode_chunk_size):
            writer.append(frames)
    print(f"wrote {output} ({writer.count} frames, {request.width}x{request.height}, {args.fps:g} fps)")
    print(f"seed {request.seed} | {pipe.timings.summary()}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        if args.command == "generate":
            generate(args)
        elif args.command == "bench":
            from .bench import run

            run(args)
    except VidiffError as e:
        print(f"vidiff: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidiff: interrupted", file=sys.stderr)
        return 130
    return 0
