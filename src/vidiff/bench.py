"""Benchmark: vidiff vs diffusers' AnimateDiffPipeline on the same weights, side by side in one run.

Each contender runs in a fresh subprocess (so its peak RSS is its own) on the same model folder, seed and
settings; per-step times come from step callbacks, and the first step is reported apart as warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CONTENDERS = ("vidiff", "diffusers")
PROMPT = "a red circle moving right"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--size",
        choices=("sd15", "tiny", "demo"),
        default="sd15",
        help="random SD 1.5-sized or tiny weights, or the demo",
    )
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--decode-chunk-size", type=int, default=8)
    p.add_argument("--only", choices=CONTENDERS, action="append", help="run just this contender (repeatable)")
    p.add_argument("--cache", help="where the random weights are kept (default: ~/.cache/vidiff/bench-SIZE)")
    p.add_argument("--json", help="also write the results here")


def sd15_folder(folder: Path) -> Path:
    """SD 1.5-shaped components with random weights (UNet 320/640/1280/1280, v1-5-2 motion adapter)."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tiny import byte_level_clip_tokenizer, save_tiny_sd1

    if (folder / "model_index.json").is_file():
        return folder
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".bench-"))
    save_tiny_sd1(tmp)  # tokenizer, scheduler and model_index; the models are replaced below
    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=64, cross_attention_dim=768).save_pretrained(tmp / "unet")
    MotionAdapter().save_pretrained(tmp / "motion_adapter")  # the defaults are the v1-5-2 config
    AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=512,
    ).save_pretrained(tmp / "vae")
    vocab = len(byte_level_clip_tokenizer(tmp / "tokenizer"))
    text = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
    )
    CLIPTextModel(text).save_pretrained(tmp / "text_encoder")
    index = json.loads((tmp / "model_index.json").read_text())
    index["motion_adapter"] = ["diffusers", "MotionAdapter"]
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    tmp.rename(folder)
    return folder


def model_folder(size: str, cache: str | None) -> Path:
    from .loading import DEMO_FOLDER, _cache_dir
    from .tiny import save_tiny_sd1

    if size == "demo":
        return DEMO_FOLDER
    folder = Path(cache) if cache else _cache_dir() / f"bench-{size}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    if size == "sd15":
        return sd15_folder(folder)
    if not (folder / "model_index.json").is_file():
        save_tiny_sd1(folder, motion_adapter=True)
    return folder


def _run_vidiff(folder: Path, a: argparse.Namespace, stamps: list[float]) -> float:
    from .pipeline import VideoPipeline
    from .request import GenerationRequest

    start = time.perf_counter()
    pipe = VideoPipeline.from_pretrained(str(folder), dtype=a.dtype)
    load = time.perf_counter() - start
    request = pipe.resolve(
        GenerationRequest(
            PROMPT,
            frames=a.frames,
            height=a.height,
            width=a.width,
            steps=a.steps,
            guidance_scale=a.guidance_scale,
            seed=0,
        )
    )
    stamps.append(time.perf_counter())
    latents = pipe.generate_latents(request, progress=False, callback=lambda *_: stamps.append(time.perf_counter()))
    for _ in pipe.decode(latents[0], a.decode_chunk_size):
        pass
    return load


def _run_diffusers(folder: Path, a: argparse.Namespace, stamps: list[float]) -> float:
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    from .loading import DTYPES

    dtype = DTYPES[a.dtype]
    start = time.perf_counter()
    adapter = MotionAdapter.from_pretrained(folder / "motion_adapter", torch_dtype=dtype)
    pipe = AnimateDiffPipeline.from_pretrained(folder, motion_adapter=adapter, torch_dtype=dtype)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - start

    def on_step(_pipe, _i, _t, kwargs):
        stamps.append(time.perf_counter())
        return kwargs

    stamps.append(time.perf_counter())
    pipe(
        PROMPT,
        num_frames=a.frames,
        height=a.height,
        width=a.width,
        num_inference_steps=a.steps,
        guidance_scale=a.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(0),
        decode_chunk_size=a.decode_chunk_size,
        output_type="np",
        callback_on_step_end=on_step,
    )
    return load


def worker(contender: str, folder: Path, a: argparse.Namespace) -> dict:
    """Run one contender in this process and measure it."""
    stamps: list[float] = []
    load = (_run_vidiff if contender == "vidiff" else _run_diffusers)(folder, a, stamps)
    end = time.perf_counter()
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {
        "contender": contender,
        "load_s": load,
        "first_step_s": steps[0],
        "step_s": statistics.median(steps[1:] or steps),
        "decode_s": end - stamps[-1],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def run(a: argparse.Namespace) -> list[dict]:
    """Build (once) the weights, then run each contender in its own subprocess and print a table."""
    folder = model_folder(a.size, a.cache)
    results = []
    for contender in a.only or CONTENDERS:
        cmd = [
            sys.executable,
            "-m",
            "vidiff.bench",
            contender,
            str(folder),
            json.dumps(vars(a) | {"func": None}),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"{contender} worker failed:\n{proc.stderr[-4000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(
        f"{a.size} weights, {a.frames} frames {a.width}x{a.height}, {a.steps} steps, CFG {a.guidance_scale}, "
        f"{a.dtype}, {torch.get_num_threads()} threads; s/clip = load excluded"
    )
    print(f"{'':10} {'load s':>8} {'1st step s':>11} {'s/step':>8} {'decode s':>9} {'peak RSS GiB':>13}")
    for r in results:
        print(
            f"{r['contender']:10} {r['load_s']:8.2f} {r['first_step_s']:11.2f} {r['step_s']:8.2f} "
            f"{r['decode_s']:9.2f} {r['peak_rss_gib']:13.2f}"
        )
    if len(results) == 2:
        v, d = results
        print(
            f"diffusers/vidiff: s/step {d['step_s'] / v['step_s']:.2f}x, load {d['load_s'] / v['load_s']:.2f}x, "
            f"peak RSS {d['peak_rss_gib'] / v['peak_rss_gib']:.2f}x"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":  # worker entry: python -m vidiff.bench CONTENDER FOLDER ARGS_JSON
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()
    contender, folder, options = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    print(json.dumps(worker(contender, folder, argparse.Namespace(**options))))
