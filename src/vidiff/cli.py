"""Command line: parse arguments into a request, call the library, report timings. Nothing else lives here."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from collections.abc import Sequence

from .errors import InvalidArgument, RenderInterrupted, VidiffError
from .options import (
    DEFAULT_MODEL,
    add_bench_arguments,
    add_dry_run,
    add_generate_arguments,
    add_model_arguments,
    add_train_arguments,
    fields_from,
    job_from_args,
    load_from_args,
)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"vidiff: error: {one_line(message)}", file=sys.stderr)
        sys.exit(2)


def one_line(message: str) -> str:
    """Control characters (line breaks a user typed into a value) escaped, so an error stays one line."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vidiff", description="Turn image diffusion models into video generators.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="text to video")
    gen.add_argument("prompt", nargs="?", help="what to make (not needed with --resume)")
    gen.add_argument("-o", "--output", help="out.gif | out.mp4 | out.webp | folder/ for PNG frames")
    add_generate_arguments(gen)
    add_dry_run(gen)

    dec = sub.add_parser("decode", help="decode saved latents into a video with a model's VAE")
    dec.add_argument("latents", help=".pt, .pth or .safetensors latents")
    dec.add_argument("-o", "--output", required=True, help="out.gif | out.mp4 | out.webp | folder/")
    dec.add_argument("--model", default=DEFAULT_MODEL, help="whose VAE decodes (default: %(default)s)")
    dec.add_argument("--dtype", default="auto")
    dec.add_argument("--device", default="cpu")
    dec.add_argument("--fps", type=float, default=8.0)
    dec.add_argument("--decode-chunk-size", type=int, default=8)
    dec.add_argument("--overwrite", action="store_true")
    add_dry_run(dec)

    tr = sub.add_parser("train", help="train an image model or motion modules (AnimateDiff's two stages)")
    add_train_arguments(tr)
    add_dry_run(tr)

    ev = sub.add_parser("eval-demo", help="colour / shape / direction accuracy of a model on the demo prompts")
    add_model_arguments(ev, mode=False)
    ev.add_argument("--seeds", type=int, default=3, help="clips per combination")
    ev.add_argument(
        "--modes",
        default="motion,sequential",
        help="comma-separated modes to compare; '+pab' adds Pyramid Attention Broadcast, '+fast' the --fast preset",
    )
    ev.add_argument("--steps", type=int, default=25)
    ev.add_argument("--guidance-scale", type=float, default=7.5)
    ev.add_argument("--guidance-rescale", type=float, default=0.0)
    ev.add_argument("--scheduler")
    ev.add_argument("--max-sequence-length", type=int, default=256, help="SD 3: T5 tokens (77 for vidiff's SD 3 demo)")
    ev.add_argument("--limit", type=int, help="only the first N combinations of each split")
    ev.add_argument("--json", help="also write the summaries here")

    b = sub.add_parser("batch", help="many videos: a JSONL of jobs or a CSV of prompts, here or on a Ray cluster")
    b.add_argument("jobs", help="JSONL (one job of generate options a line) or CSV (prompts)")
    b.add_argument("-o", "--output", required=True, help="the folder for the videos and manifest.jsonl")
    b.add_argument("--sweep", action="append", default=[], metavar="KEY=VALUES", help="seed=1..8 or key=a,b,c")
    b.add_argument("--name-template", default="{index}-{prompt_slug}-{seed}.mp4", help="output names")
    b.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help="on a Ray cluster (none: a local one)")
    b.add_argument("--worker-cpus", type=int, default=1, help="Ray: CPU cores per worker (one warm pipeline each)")
    b.add_argument("--worker-gpus", type=float, default=0, help="Ray: GPUs per worker")
    b.add_argument("--threads", type=int, help="torch threads of a local batch (default: torch's)")
    add_generate_arguments(b)
    add_dry_run(b)

    bench = sub.add_parser("bench", help="seconds per step and peak memory, vidiff and diffusers side by side")
    add_bench_arguments(bench)
    return parser


def _quiet_libraries() -> None:
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


def generate(args: argparse.Namespace) -> None:
    job = job_from_args(args)
    job.validate()  # before torch loads: argument errors come back at once
    if args.dry_run:
        print(job.to_json())
        return
    _quiet_libraries()
    from .renderer import render

    try:
        result = render(job, progress=not args.quiet)
    except RenderInterrupted as e:
        if e.checkpoint is not None:
            command = shlex.join(["vidiff", "generate", "--resume", str(e.checkpoint), "-o", str(e.job.output)])
            print(f"vidiff: interrupted; resume with: {command}", file=sys.stderr)
        raise
    run = result.job
    print(f"loaded {run.load.model} in {result.timings.load:.1f} s")
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
    expected = f", {result.estimate_bytes / gib:.3f} estimated" if result.estimate_bytes else ""
    print(f"memory: process peak {result.process_bytes / gib:.3f} GiB (all counted{expected}) | model weights "
          f"{result.weights_bytes / gib:.3f} GiB | denoise and decode {result.peak_bytes / gib:.3f} GiB above the "
          "loaded model")  # fmt: skip


def decode(args: argparse.Namespace) -> None:
    from .job import validate_decode

    validate_decode(args.latents, args.output, args.fps, args.decode_chunk_size, args.overwrite)
    if args.dry_run:
        print(f"would decode {args.latents} into {args.output}")
        return
    _quiet_libraries()
    from .renderer import decode_file

    count, denoised = decode_file(
        args.latents, args.model, args.output, args.fps, args.decode_chunk_size, args.dtype, args.device,
        args.overwrite,
    )  # fmt: skip
    if denoised is not None and denoised < 1:
        print(f"note: these latents are only {denoised:.0%} denoised")
    print(f"wrote {args.output} ({count} frames)")


def train_stage(args: argparse.Namespace) -> None:
    from .train import TrainConfig

    cfg = TrainConfig(**fields_from(args, TrainConfig))
    cfg.validate()
    if args.dry_run:
        print(cfg)
        return
    _quiet_libraries()
    from .train.trainer import make_stage, probe, train

    start = time.perf_counter()
    stage = make_stage(cfg)
    if cfg.steps:
        losses = train(cfg, stage=stage)
        print(f"{args.stage}: {len(losses)} steps, final loss {sum(losses[-50:]) / len(losses[-50:]):.4f}, "
              f"{time.perf_counter() - start:.0f} s this run")  # fmt: skip
    if cfg.probe:
        print(f"word probe ({cfg.probe} clips): loss with the true caption, and its change with a word swapped")
        print(f"{'noise level':<12} {'loss':>7} {'direction':>10} {'colour':>8}")
        for level, row in probe(stage, cfg.probe).items():
            print(f"{level:<12} {row['loss']:7.4f} {row['direction']:+10.2%} {row['colour']:+8.2%}")


def eval_demo(args: argparse.Namespace) -> None:
    import json

    from . import checks

    for flag, value in (("--seeds", args.seeds), ("--steps", args.steps), ("--limit", args.limit or 1),
                        ("--max-sequence-length", args.max_sequence_length)):  # fmt: skip
        checks.integer(flag, value, 1)
    checks.number("--guidance-scale", args.guidance_scale, 0)
    checks.number("--guidance-rescale", args.guidance_rescale, 0, 1)
    checks.number("--frame-noise", args.frame_noise, 0)
    _quiet_libraries()
    from .accel.configs import PABConfig
    from .demo.data import HELD_OUT, SEEN
    from .demo.evaluate import evaluate, noise_independence, summarize, table
    from .pipeline import VideoPipeline

    rows, independence, modes = {}, {}, {}
    for name in (m.strip() for m in args.modes.split(",")):  # every mode checked before the first loads
        mode, _, extra = name.partition("+")
        if extra not in ("", "pab", "fast"):
            raise InvalidArgument("--modes", f"unknown suffix +{extra} in {name!r} (+pab or +fast)")
        modes[name] = (load_from_args(args, mode=mode), extra)
        modes[name][0].validate()
    for name, (settings, extra) in modes.items():
        pipe = VideoPipeline.from_pretrained(settings)
        if extra:
            pipe.enable_cache(*([PABConfig()] if extra == "pab" else []))
        results = []
        for split, combos in (("seen", SEEN), ("held-out", HELD_OUT)):
            keys = ("steps", "guidance_scale", "guidance_rescale", "scheduler", "max_sequence_length")
            options = {k: getattr(args, k) for k in keys}
            results.append(evaluate(pipe, combos[: args.limit], range(args.seeds), **options))
            rows[f"{name} / {split}"] = summarize(results[-1])
        independence[name] = noise_independence(results[0] + results[1])
    print(table(rows))
    for name, (share, noises) in independence.items():
        print(f"{name}: noise independence {share:.1%} (of {noises} noises, the four direction prompts move four ways)")
    rows |= {f"{name} / noise independence": {"share": v[0], "noises": v[1]} for name, v in independence.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def batch(args: argparse.Namespace) -> int:
    from .batch import Manifest, check_threads, defaults_from, parse_sweep, plan, read_jobs, run_local
    from .cluster import RayOptions

    check_threads(args.threads)
    ray = RayOptions(args.ray, args.worker_cpus, args.worker_gpus) if args.ray else None
    if ray is not None:
        ray.validate()
    sweeps = [parse_sweep(s) for s in args.sweep]
    items = plan(read_jobs(args.jobs), defaults_from(args), args.output, args.name_template, sweeps)
    if args.dry_run:
        print(f"{len(items)} jobs planned into {args.output}")
        return 0
    manifest = Manifest(args.output)
    if ray is not None:
        from .cluster import run_ray

        report = run_ray(items, manifest, ray, not args.quiet)
    else:
        report = run_local(items, manifest, progress=not args.quiet, threads=args.threads)
    done = len(report.records) - len(report.failed)
    rate = f", {done / report.seconds * 3600:.0f} videos/hour" if done and report.seconds else ""
    print(f"{len(items)} jobs: {done} done, {len(report.failed)} failed, {report.skipped} done before; "
          f"{report.loads} model loads; {report.seconds:.0f} s{rate}; manifest {manifest.path}")  # fmt: skip
    for r in report.failed:
        print(f"job {r['index']} failed: {r['error']}")
    return 1 if report.failed else 0


def bench(args: argparse.Namespace) -> None:
    _quiet_libraries()
    from .bench import run

    run(args)


COMMANDS = {"generate": generate, "decode": decode, "eval-demo": eval_demo, "train": train_stage, "bench": bench,
            "batch": batch}  # fmt: skip


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run the way Ctrl-C does: outputs aborted, checkpoints kept


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return COMMANDS[args.command](args) or 0
    except VidiffError as e:
        print(f"vidiff: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vidiff: interrupted", file=sys.stderr)
        return 130
