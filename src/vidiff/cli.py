"""Command line: parse arguments into a request, call the library, report timings. Nothing else lives here."""

from __future__ import annotations

import argparse
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from .accel.pab import PABConfig
from .adapters.image_sequential import DEFAULT_FRAME_NOISE
from .errors import InvalidArgument, VidiffError
from .image_seeds import ImageSeed
from .latents_io import LatentsFile, check_latents, is_latents_path, load_latents, save_latents
from .media import fit
from .memory import PeakMemory, weight_bytes
from .pipeline import MODES
from .request import GenerationRequest
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
    p.add_argument("--frame-batch", type=int, help="sequential: frames per UNet call (default: all)")
    p.add_argument("--no-t5", action="store_true", help="SD 3: skip the T5 encoder (zeros in its place)")
    p.add_argument(
        "--dtype",
        default="auto",
        help="auto (bfloat16 on CPUs with native bf16 and on GPUs, else float32), float32, bfloat16, float16 (GPU)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vidiff", description="Turn image diffusion models into video generators.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="text to video")
    gen.add_argument("prompt")
    gen.add_argument("-o", "--output", help="out.gif | out.mp4 | out.webp | folder/ for PNG frames")
    _add_model_args(gen)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--frames", type=int, help="default: 16, or the frames of --image-seeds latents")
    gen.add_argument("--height", type=int, help="pixels, a multiple of 8 (default: the model's)")
    gen.add_argument("--width", type=int, help="pixels, a multiple of 8 (default: the model's)")
    gen.add_argument("--steps", type=int, default=25)
    gen.add_argument("--guidance-scale", type=float, default=7.5)
    gen.add_argument("--seed", type=int, help="default: random, printed at the end")
    gen.add_argument(
        "--scheduler", help="ddim (SD 1.x default), euler, euler-a, dpm++2m, pndm, lms, ddpm; flow-euler (SD 3)"
    )
    gen.add_argument("--prompt-2", help="SD 3: the CLIP-G prompt (default: the prompt)")
    gen.add_argument("--prompt-3", help="SD 3: the T5 prompt (default: the prompt)")
    gen.add_argument("--max-sequence-length", type=int, default=256, help="SD 3: T5 tokens")
    gen.add_argument("--beta-schedule", help="override the model's: linear (AnimateDiff's), scaled_linear, ...")
    gen.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    gen.add_argument("--fps", type=float, default=8.0)
    gen.add_argument("--decode-chunk-size", type=int, default=8, help="frames the VAE decodes at once")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing output")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    gen.add_argument("--compile-backend", default="inductor", help="any registered torch.compile backend")
    gen.add_argument("--pab", action="store_true", help="Pyramid Attention Broadcast (reuse attention between steps)")
    gen.add_argument("--pab-spatial", type=int, default=2, help="recompute spatial attention every N steps")
    gen.add_argument("--pab-temporal", type=int, default=3, help="recompute temporal attention every N steps")
    gen.add_argument("--pab-cross", type=int, default=6, help="recompute cross-attention every N steps")
    gen.add_argument("--pab-range", type=int, nargs=2, default=(100, 800), metavar=("LO", "HI"), help="timesteps")
    gen.add_argument(
        "--pab-deep",
        type=int,
        help="UNets: recompute the inner blocks every N steps, reusing them between (DeepCache; default 3, 1: off)",
    )
    gen.add_argument(
        "--image-seeds", help='"latents: f.pt" | "src" | "src;latents=f.pt" | "src;mask=m.png[;latents=f.pt]"'
    )
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
    tr.add_argument("--family", choices=("sd1", "sd3"), help="architecture of a new demo-sized model (default sd1)")
    tr.add_argument("--keyframe-share", type=float, default=0.0, help="image stage: share of first frames drawn")
    tr.add_argument(
        "--text-lr-scale", type=float, default=1.0, help="image stage: text encoders' lr factor (0 freezes them)"
    )

    ev = sub.add_parser("eval-demo", help="colour / shape / direction accuracy of a model on the demo prompts")
    _add_model_args(ev)
    ev.add_argument("--seeds", type=int, default=3, help="clips per combination")
    ev.add_argument(
        "--modes",
        default="motion,sequential",
        help="comma-separated modes to compare; a '+pab' suffix turns on Pyramid Attention Broadcast (motion+pab)",
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


def _default_output(prompt: str, seed: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "video"
    return f"{slug}-{seed}.gif"


def _request(args: argparse.Namespace, resume: LatentsFile | None) -> GenerationRequest:
    """The request from flags, or the one saved in the checkpoint being resumed."""
    if resume is not None:
        if resume.meta.request is None:
            raise InvalidArgument("--resume", f"{args.resume} is not a vidiff checkpoint (it carries no run)")
        return GenerationRequest(**resume.meta.request)
    given = {
        "frames": args.frames,
        "height": args.height,
        "width": args.width,
        "seed": args.seed,
        "denoising_start": args.denoising_start,
        "denoising_end": args.denoising_end,
        "beta_schedule": args.beta_schedule,
    }
    return GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        prompt_2=args.prompt_2,
        prompt_3=args.prompt_3,
        max_sequence_length=args.max_sequence_length,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        scheduler=args.scheduler,
        eta=args.eta,
        strength=args.image_seed_strength,
        **{k: v for k, v in given.items() if v is not None},
    )


def _source(pipe, seed: ImageSeed | None, resume: LatentsFile | None, request: GenerationRequest, args):
    """Resolve the request against the model and read what --image-seeds / --resume name into a Source."""
    from .codec import decode_frames
    from .image_seeds import ARG
    from .media import read_frames, take_frames
    from .pipeline import Source

    source = Source(latents=resume)
    channels, family = pipe.denoiser.latent_channels, pipe.denoiser.family
    if seed is not None and seed.latents is not None:
        source.latents = load_latents(seed.latents, ARG)
        check_latents(source.latents, seed.latents, channels, family)
        _, _, f, h, w = source.latents.latents.shape
        scale = pipe.vae_scale_factor
        request = replace(
            request,
            frames=args.frames or f,
            height=args.height or h * scale,
            width=args.width or w * scale,
        )
        check_latents(source.latents, seed.latents, channels, family, frames=request.frames)
    request = pipe.resolve(request)
    if seed is not None and seed.image is not None:
        if is_latents_path(str(seed.image)):  # latents in the img2img position: decoded by this VAE first
            item = load_latents(seed.image, ARG)
            check_latents(item, seed.image, channels, family)
            frames = np.concatenate(list(decode_frames(pipe.vae, item.latents[0], args.decode_chunk_size)))
            frames = np.stack([fit(Image.fromarray(f), request.width, request.height) for f in frames])
        else:
            frames = read_frames(seed.image, request.width, request.height, ARG)
        source.frames = take_frames(frames, request.frames, seed.image, ARG)
    if seed is not None and seed.mask is not None:
        mask = read_frames(seed.mask, request.width, request.height, ARG).mean(axis=-1) / 255.0  # (N, H, W)
        source.mask = take_frames(mask, request.frames, seed.mask, ARG)
    return source, request


def generate(args: argparse.Namespace) -> None:
    from .export import FrameWriter, check_output
    from .image_seeds import parse_image_seed
    from .loading import resolve_device, resolve_dtype
    from .pipeline import VideoPipeline

    # 1. Everything that can be checked without the model, before loading it.
    resume = load_latents(args.resume, "--resume") if args.resume else None
    request = _request(args, resume)
    request.validate()
    seed = parse_image_seed(args.image_seeds) if args.image_seeds is not None else None
    if seed is not None and seed.latents is not None and resume is not None:
        raise InvalidArgument("--resume", "continues its own latents; drop latents= from --image-seeds")
    latents_out = args.output is not None and is_latents_path(args.output)
    if args.output is not None:
        check_output(args.output, args.overwrite)
    if request.denoising_end is not None and request.denoising_end < 1 and not latents_out:
        raise InvalidArgument("--output", "partly denoised latents (--denoising-end) go to .pt, .pth or .safetensors")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise InvalidArgument("--checkpoint-every", f"must be >= 1, got {args.checkpoint_every}")
    resolve_dtype(args.dtype, resolve_device(args.device))
    # 2. Load the model, then resolve the request and its sources against it.
    pipe = VideoPipeline.from_pretrained(
        args.model,
        args.motion_module,
        args.dtype,
        args.device,
        args.mode,
        args.frame_noise,
        args.frame_batch,
        use_t5=not args.no_t5,
    )
    print(f"loaded {args.model} in {pipe.timings.load:.1f} s")
    if args.compile:
        pipe.compile(args.compile_backend)
    if args.pab:
        for flag in ("pab_spatial", "pab_temporal", "pab_cross", "pab_deep"):
            if getattr(args, flag) is not None and getattr(args, flag) < 1:
                raise InvalidArgument(f"--{flag.replace('_', '-')}", "must be >= 1 (1: never skip)")
        span = tuple(args.pab_range)
        deep = {} if args.pab_deep is None else {"deep_skip": args.pab_deep}
        config = PABConfig.for_backbone(
            pipe.denoiser,
            spatial_skip=args.pab_spatial,
            temporal_skip=args.pab_temporal,
            cross_skip=args.pab_cross,
            spatial_range=span,
            temporal_range=span,
            cross_range=span,
            **deep,
        )
        pipe.enable_pab(config)
    source, request = _source(pipe, seed, resume, request, args)
    output = args.output or _default_output(request.prompt, request.seed)
    resume_file = Path(f"{output}.resume.safetensors")
    checkpoint = resume_file if args.checkpoint_every else None

    def on_step(step: int, t, latents) -> None:
        if checkpoint is not None and step % args.checkpoint_every == 0:
            save_latents(checkpoint, pipe.snapshot(latents, step), overwrite=True)

    # 3. Denoise (checkpointing); an interruption keeps the last checkpoint and says how to resume.
    with PeakMemory(pipe.device) as memory:
        try:
            latents = pipe.generate_latents(request, progress=not args.quiet, callback=on_step, source=source)
        except KeyboardInterrupt:
            if checkpoint is not None and checkpoint.exists():
                print(f"vidiff: interrupted; resume with: vidiff generate --resume {checkpoint} "
                      f"--model {args.model} -o {output}", file=sys.stderr)  # fmt: skip
            raise
        # 4. Save the latents, or decode them in chunks straight into the writer.
        if is_latents_path(output):
            snapshot = pipe.snapshot(latents)
            save_latents(output, snapshot, args.overwrite)
            print(f"wrote {output} (latents {tuple(latents.shape)}, {snapshot.meta.denoised:.0%} denoised)")
        else:
            with FrameWriter(output, args.fps, args.overwrite) as writer:
                for frames in pipe.decode(latents[0], args.decode_chunk_size):
                    writer.append(frames)
            print(f"wrote {output} ({writer.count} frames, {request.width}x{request.height}, {args.fps:g} fps)")
    if checkpoint is not None or (args.resume and Path(args.resume) == resume_file):
        resume_file.unlink(missing_ok=True)  # the run it was keeping is complete
    weights = weight_bytes(pipe.denoiser.module, pipe.vae, *pipe.prompt_encoder.modules)
    print(f"seed {request.seed} | {pipe.timings.summary()}")
    print(f"peak memory {(weights + memory.peak) / 2**30:.3f} GiB: weights {weights / 2**30:.3f} + working "
          f"{memory.peak / 2**30:.3f}")  # fmt: skip


def decode(args: argparse.Namespace) -> None:
    from .codec import decode_frames
    from .export import FrameWriter, check_output
    from .loading import load_vae, resolve_device, resolve_dtype

    check_output(args.output, args.overwrite)
    device = resolve_device(args.device)
    item = load_latents(args.latents, "latents")
    vae = load_vae(args.model, resolve_dtype(args.dtype, device), device)
    check_latents(item, args.latents, vae.config.latent_channels, None, argument="latents")
    if item.meta.denoised is not None and item.meta.denoised < 1:
        print(f"note: these latents are only {item.meta.denoised:.0%} denoised")
    with FrameWriter(args.output, args.fps, args.overwrite) as writer:
        for frames in decode_frames(vae, item.latents[0], args.decode_chunk_size):
            writer.append(frames)
    print(f"wrote {args.output} ({writer.count} frames)")


def train_stage(args: argparse.Namespace) -> None:
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
        family=args.family,
        keyframe_share=args.keyframe_share,
        text_lr_scale=args.text_lr_scale,
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
    for name in (m.strip() for m in args.modes.split(",")):
        mode, _, extra = name.partition("+")
        if extra not in ("", "pab"):
            raise InvalidArgument("--modes", f"unknown suffix +{extra} in {name!r} (only +pab)")
        pipe = VideoPipeline.from_pretrained(args.model, args.motion_module, args.dtype, args.device, mode)
        if extra == "pab":
            pipe.enable_pab()
        for split, combos in (("seen", SEEN), ("held-out", HELD_OUT)):
            results = evaluate(
                pipe,
                combos[: args.limit],
                range(args.seeds),
                steps=args.steps,
                guidance_scale=args.guidance_scale,
                scheduler=args.scheduler,
                max_sequence_length=args.max_sequence_length,
            )
            rows[f"{name} / {split}"] = summarize(results)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run the way Ctrl-C does: outputs aborted, checkpoints kept


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    _quiet_libraries()
    try:
        if args.command == "generate":
            generate(args)
        elif args.command == "decode":
            decode(args)
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
