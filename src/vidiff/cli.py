"""Command line: parse arguments into a request, call the library, report timings. Nothing else lives here."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence

from .adapters.image_sequential import DEFAULT_FRAME_NOISE
from .errors import VidiffError
from .pipeline import MODES
from .request import GenerationRequest
from .schedules import DEFAULT_SCHEDULER
from .train.trainer import STAGES

DEFAULT_MODEL = "demo"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"vidiff: error: {message}", file=sys.stderr)
        sys.exit(2)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="diffusers SD 1.x folder, hub id, or 'demo' (default: %(default)s)"
    )
    p.add_argument("--motion-module", help="AnimateDiff motion module: MotionAdapter folder or .ckpt/.safetensors")
    p.add_argument("--mode", default="motion", choices=MODES, help="motion modules, or frame by frame (sequential)")
    p.add_argument("--frame-noise", type=float, default=DEFAULT_FRAME_NOISE, help="sequential: per-frame noise")
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

    tr = sub.add_parser("train", help="train an image model or motion modules (AnimateDiff's two stages)")
    tr.add_argument("stage", choices=STAGES, help="vae, image (UNet + text encoder), or motion")
    tr.add_argument("--model", required=True, help="SD 1.x folder: trained in place (vae, image) or frozen (motion)")
    tr.add_argument("--data", default="demo", help="'demo' (synthetic shapes) or a folder of captioned videos")
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

    ev = sub.add_parser("eval-demo", help="colour / shape / direction accuracy of a model on the demo prompts")
    _add_model_args(ev)
    ev.add_argument("--seeds", type=int, default=3, help="clips per combination")
    ev.add_argument("--modes", default="motion,sequential", help="comma-separated modes to compare")
    ev.add_argument("--steps", type=int, default=25)
    ev.add_argument("--guidance-scale", type=float, default=7.5)
    ev.add_argument("--scheduler", default=DEFAULT_SCHEDULER)
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
    pipe = VideoPipeline.from_pretrained(
        args.model, args.motion_module, args.dtype, args.device, args.mode, args.frame_noise
    )
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


def train_stage(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .train import TrainConfig, train

    cfg = TrainConfig(
        stage=args.stage,
        model=Path(args.model),
        data=args.data,
        out=Path(args.out) if args.out else None,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        frames=args.frames,
        size=args.size,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        save_dtype=args.save_dtype,
        restart=args.restart,
    )
    start = time.perf_counter()
    losses = train(cfg)
    print(
        f"{args.stage}: {len(losses)} steps, final loss {sum(losses[-50:]) / len(losses[-50:]):.4f}, "
        f"{time.perf_counter() - start:.0f} s this run"
    )


def eval_demo(args: argparse.Namespace) -> None:
    import json

    from .demo.data import HELD_OUT, SEEN
    from .demo.evaluate import evaluate, summarize, table
    from .pipeline import VideoPipeline

    rows = {}
    for mode in args.modes.split(","):
        pipe = VideoPipeline.from_pretrained(args.model, args.motion_module, args.dtype, args.device, mode.strip())
        for split, combos in (("seen", SEEN), ("held-out", HELD_OUT)):
            results = evaluate(
                pipe,
                combos[: args.limit],
                range(args.seeds),
                steps=args.steps,
                guidance_scale=args.guidance_scale,
                scheduler=args.scheduler,
            )
            rows[f"{mode.strip()} / {split}"] = summarize(results)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        if args.command == "generate":
            generate(args)
        elif args.command == "eval-demo":
            eval_demo(args)
        elif args.command == "train":
            train_stage(args)
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
