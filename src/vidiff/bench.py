"""Benchmark: vidiff vs diffusers' AnimateDiffPipeline (AnimateDiffSDXLPipeline for SDXL) on the same weights,
alternating in one process.

Rows: diffusers in its default dtype (float32), vidiff in that same dtype, vidiff's default dtype (`auto`:
bfloat16 on CPUs with native bf16), and that with `--fast` (PAB + DeepCache on UNets). Optional rows:
`lightning` (the `--preset lightning` settings at `--lightning-steps`, whatever `--steps` says), and
`lora` / `lora-unfused` (a random rank-16 LoRA on every spatial attention projection, fused into the
weights as vidiff loads it, or left as live peft layers); `diffusers-controlnet`, `controlnet`, `controlnet-2`
(diffusers' AnimateDiffControlNetPipeline and vidiff with one or two random ControlNets shaped as the UNet,
zero convolutions filled, on random control frames, in the baseline dtype); `ip-adapter` (vidiff with a random
IP-Adapter shaped as ip-adapter_sd15, in the baseline dtype).
Every row runs once as a warm-up (one step), then the rows take turns for `--rounds` rounds, and each
figure is the median over rounds. Per-step seconds are the denoising time over the steps (PAB makes steps
unequal), VAE seconds the decode, total the whole call (prompt encoding to uint8 frames, loading apart).
Peak memory is the weights plus the highest working memory above the resting level during the call
(resident memory sampled every 2 ms on CPU, the allocator's peak on CUDA), so rows sharing a process are
still measured apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .memory import PeakMemory, clock, weight_bytes
from .names import BENCH_OPTIONAL_ROWS as OPTIONAL_ROWS
from .names import BENCH_ROWS as ROWS

PROMPT = "a red circle moving right"
LORA_RANK = 16


def sd15_folder(folder: Path) -> Path:
    """SD 1.5-shaped components with random weights (UNet 320/640/1280/1280, v1-5-2 motion adapter)."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel

    from .layout import MOTION_ADAPTER, clip_text_config, write_model_index
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
    CLIPTextModel(clip_text_config(vocab, 768, layers=12, heads=12, intermediate=3072)).save_pretrained(
        tmp / "text_encoder"
    )
    write_model_index(tmp, **MOTION_ADAPTER)
    tmp.rename(folder)
    return folder


def sdxl_folder(folder: Path) -> Path:
    """SDXL-shaped components with random weights (SDXL base 1.0's UNet, CLIP-L and OpenCLIP bigG encoders and
    VAE configs; the AnimateDiff-SDXL beta motion adapter), saved in bfloat16 (half the disk; loading in float32
    upcasts exactly)."""
    import json

    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from .layout import MOTION_ADAPTER, clip_text_config, write_model_index
    from .tiny import SDXL_SCHEDULER, byte_level_clip_tokenizer

    if (folder / "model_index.json").is_file():
        return folder
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".bench-"))
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=128, cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10),
        block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ).to(torch.bfloat16).save_pretrained(tmp / "unet")  # fmt: skip
    MotionAdapter(
        block_out_channels=(320, 640, 1280), motion_layers_per_block=2, motion_max_seq_length=32,
        use_motion_mid_block=False,
    ).to(torch.bfloat16).save_pretrained(tmp / "motion_adapter")  # fmt: skip
    AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=1024, scaling_factor=0.13025,
    ).to(torch.bfloat16).save_pretrained(tmp / "vae")  # fmt: skip
    for name, pad in (("tokenizer", None), ("tokenizer_2", "!")):  # SDXL's second pads with "!"
        tokenizer = byte_level_clip_tokenizer(tmp / name)
        tokenizer.pad_token = pad or tokenizer.pad_token
        tokenizer.save_pretrained(tmp / name)
    vocab = len(tokenizer)
    CLIPTextModel(clip_text_config(vocab, 768, 12, 12, 3072)).to(torch.bfloat16).save_pretrained(tmp / "text_encoder")
    big_g = clip_text_config(vocab, 1280, 32, 20, 5120, projection_dim=1280, hidden_act="gelu")
    CLIPTextModelWithProjection(big_g).to(torch.bfloat16).save_pretrained(tmp / "text_encoder_2")
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SDXL_SCHEDULER))
    write_model_index(tmp, "StableDiffusionXLPipeline", force_zeros_for_empty_prompt=True, **MOTION_ADAPTER)
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
    if size == "sdxl":
        return sdxl_folder(folder)
    if not (folder / "model_index.json").is_file():
        save_tiny_sd1(folder, motion_adapter=True)
    return folder


@dataclass
class Measure:
    """One call: denoising seconds per step, VAE decode seconds, the whole call, peak GiB; final latents."""

    step_s: float
    vae_s: float
    total_s: float
    peak_gib: float
    latents: torch.Tensor = field(repr=False)


@dataclass
class Row:
    name: str
    label: str
    dtype: str
    call: Callable[[int], Measure]  # steps -> one measured generation
    runs: list[Measure] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(getattr(m, key) for m in self.runs)


def _settings(a: argparse.Namespace) -> dict:
    return dict(frames=a.frames, height=a.height, width=a.width, guidance_scale=a.guidance_scale, seed=0)


def vidiff_row(
    name: str, label: str, pipe, a, fast: bool = False, steps: int | None = None, controls: tuple = (),
    ip: str | None = None, **settings,
) -> Row:  # fmt: skip
    """A vidiff row; `steps` fixes the row's step count (else the call's), `controls` are ControlNet paths
    steered by random frames, `ip` an IP-Adapter folder (weights and image_encoder/) given a random image,
    `settings` override the request."""
    from .control import ControlOptions, IPAdapterOptions
    from .request import GenerationRequest
    from .sources import Source

    fixed = steps

    def call(steps: int) -> Measure:
        if fast:
            pipe.enable_cache()
        with PeakMemory(pipe.device) as mem:
            start = clock(pipe.device)
            options = _settings(a) | settings | {"steps": fixed or steps}
            adapter = IPAdapterOptions(f"{ip}/ip-adapter.safetensors;scale=0.6" if ip else None)
            request = GenerationRequest(PROMPT, **options, control=ControlOptions(nets=controls), ip_adapter=adapter)
            request = pipe.resolve(request)
            source = Source(
                control=[control_frames(a)] * len(controls), adapter={0: control_frames(a)[0]} if ip else None
            )
            run = pipe.generate_latents(request, progress=False, source=source)
            latents, t = run.latents, run.timings  # (1, C, F, h, w)
            for _ in pipe.decode(latents[0], a.decode_chunk_size, t):
                pass
            total = clock(pipe.device) - start
        pipe.disable_cache()
        prompt = pipe.image_prompt  # installed for this row's call (the IP-Adapter row), weights counted
        steering = [*(pipe.control_models[c.split(";")[0]] for c in controls), *(prompt.modules if prompt else ())]
        weights = weight_bytes(pipe.denoiser.module, pipe.vae, *pipe.prompt_encoder.modules, *steering)
        return Measure(t.per_step, t.decode, total, (weights + mem.peak) / 2**30, latents.float().cpu())

    return Row(name, label, str(pipe.denoiser.dtype).removeprefix("torch."), call)


def diffusers_row(folder: str, motion: str | None, dtype: str, a) -> Row:
    """diffusers' AnimateDiffPipeline, or AnimateDiffSDXLPipeline for an SDXL folder, as users load them."""
    from diffusers import AnimateDiffPipeline, AnimateDiffSDXLPipeline, DDIMScheduler

    from .loading import resolve_device, resolve_dtype
    from .motion.animatediff_format import load_motion_adapter
    from .specs import detect

    device = resolve_device(a.device)
    torch_dtype = resolve_dtype(dtype, device)
    adapter = load_motion_adapter(motion or str(Path(folder) / "motion_adapter"), torch_dtype)
    cls = AnimateDiffSDXLPipeline if detect(Path(folder)).name == "sdxl" else AnimateDiffPipeline
    pipe = cls.from_pretrained(folder, motion_adapter=adapter, dtype=torch_dtype).to(device)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    weights = weight_bytes(
        pipe.unet, pipe.vae, pipe.text_encoder, *filter(None, [getattr(pipe, "text_encoder_2", None)])
    )

    first: list[float] = []  # when the UNet first runs in a call: the denoising loop's start
    pipe.unet.register_forward_pre_hook(lambda *_: first.append(clock(device)) if not first else None)

    def call(steps: int) -> Measure:
        stamps: list[float] = []

        def on_step(_pipe, _i, _t, kwargs):
            stamps.append(clock(device))
            return kwargs

        s = _settings(a)
        first.clear()
        with PeakMemory(device) as mem:
            start = clock(device)
            latents = pipe(
                PROMPT,
                num_frames=s["frames"],
                height=s["height"],
                width=s["width"],
                num_inference_steps=steps,
                guidance_scale=s["guidance_scale"],
                generator=torch.Generator("cpu").manual_seed(s["seed"]),
                output_type="latent",
                callback_on_step_end=on_step,
            ).frames  # (1, C, F, h, w); decode_chunk_size applies to the decode below
            decode = clock(device)
            with torch.no_grad():  # what output_type="np" runs
                chunk = (a.decode_chunk_size,) if cls is AnimateDiffPipeline else ()  # the SDXL one decodes all
                video = pipe.decode_latents(latents, *chunk)  # (1, 3, F, H, W)
                pipe.video_processor.postprocess_video(video=video, output_type="np")
            total = clock(device) - start
        per_step = (stamps[-1] - first[0]) / steps
        vae = clock(device) - decode
        return Measure(per_step, vae, total, (weights + mem.peak) / 2**30, latents.float().cpu())

    return Row("diffusers", "diffusers", dtype, call)


def control_frames(a: argparse.Namespace):
    """Random control frames (F, H, W, 3) uint8, the same for every row."""
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (a.frames, a.height, a.width, 3), dtype=np.uint8)


def random_controlnets(folder: str, cache: Path, count: int) -> list[str]:
    """ControlNets shaped as `folder`'s UNet (its encoder's weights copied, as training starts), their zero
    convolutions filled with random values, saved as diffusers folders."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from .tiny import fill_zero_layers

    paths = [cache / f"bench-controlnet{i}-{Path(folder).name}" for i in range(count)]
    for i, path in enumerate(paths):
        if not (path / "config.json").is_file():
            unet = UNet2DConditionModel.from_pretrained(Path(folder) / "unet")
            fill_zero_layers(ControlNetModel.from_unet(unet), seed=i).save_pretrained(path)
    return [str(p) for p in paths]


def random_ip_adapter(folder: str, cache: Path) -> str:
    """An IP-Adapter shaped for `folder`'s UNet (4 image tokens from 1024-wide embeddings, as ip-adapter_sd15),
    random weights, with a small random CLIP vision encoder beside it (it runs once per video, not per step)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from .tiny import tiny_image_encoder, tiny_ip_adapter

    path = cache / f"bench-ip-adapter-{Path(folder).name}"
    if not (path / "ip-adapter.safetensors").is_file():
        unet = UNet2DConditionModel.from_pretrained(Path(folder) / "unet")
        state = tiny_ip_adapter(unet, image_dim=1024)
        path.mkdir(parents=True, exist_ok=True)
        tiny_image_encoder(projection_dim=1024).save_pretrained(path / "image_encoder")
        save_file({f"{p}.{k}": v for p, values in state.items() for k, v in values.items()},
                  path / "ip-adapter.safetensors")  # fmt: skip
    return str(path)


def diffusers_controlnet_row(folder: str, motion: str | None, dtype: str, a, nets: list[str]) -> Row:
    """diffusers' AnimateDiffControlNetPipeline on the same weights and control frames."""
    from diffusers import AnimateDiffControlNetPipeline, ControlNetModel, DDIMScheduler
    from PIL import Image

    from .loading import resolve_device, resolve_dtype
    from .motion.animatediff_format import load_motion_adapter

    device = resolve_device(a.device)
    torch_dtype = resolve_dtype(dtype, device)
    adapter = load_motion_adapter(motion or str(Path(folder) / "motion_adapter"), torch_dtype)
    controlnet = ControlNetModel.from_pretrained(nets[0], dtype=torch_dtype)
    pipe = AnimateDiffControlNetPipeline.from_pretrained(
        folder, motion_adapter=adapter, controlnet=controlnet, dtype=torch_dtype
    ).to(device)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    weights = weight_bytes(pipe.unet, pipe.vae, pipe.text_encoder, pipe.controlnet)
    frames = [Image.fromarray(f) for f in control_frames(a)]

    def call(steps: int) -> Measure:
        s = _settings(a)
        with PeakMemory(device) as mem:
            start = clock(device)
            latents = pipe(
                PROMPT, num_frames=s["frames"], height=s["height"], width=s["width"], num_inference_steps=steps,
                guidance_scale=s["guidance_scale"], generator=torch.Generator("cpu").manual_seed(s["seed"]),
                conditioning_frames=frames, output_type="latent",
            ).frames  # fmt: skip
            denoised = clock(device)
            with torch.no_grad():
                pipe.video_processor.postprocess_video(pipe.decode_latents(latents, a.decode_chunk_size), "np")
            total = clock(device) - start
        vae = clock(device) - denoised
        return Measure((total - vae) / steps, vae, total, (weights + mem.peak) / 2**30, latents.float().cpu())

    return Row("diffusers-controlnet", "diffusers + ControlNet", dtype, call)


def random_lora(folder: str, cache: Path) -> Path:
    """A kohya-layout LoRA of rank LORA_RANK on every spatial attention projection of `folder`'s UNet."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    path = cache / f"bench-lora-r{LORA_RANK}-{Path(folder).name}.safetensors"
    if path.is_file():
        return path
    unet = UNet2DConditionModel.from_pretrained(Path(folder) / "unet")
    g, state = torch.Generator().manual_seed(0), {}
    for name, layer in unet.named_modules():
        if name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or name.endswith("to_out.0"):
            key = "lora_unet_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = torch.randn(LORA_RANK, layer.in_features, generator=g) * 0.01
            state[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, LORA_RANK, generator=g) * 0.01
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path)
    return path


def run(a: argparse.Namespace) -> list[Row]:
    """Load every row, warm each up, alternate them for `rounds`, print the table (and write --json)."""
    from .errors import InvalidArgument
    from .loading import resolve_device, resolve_dtype
    from .pipeline import VideoPipeline

    # 1. Check the arguments, then find or build the weights.
    wanted = [r.strip() for r in a.rows.split(",") if r.strip()]
    if not wanted or any(r not in ROWS + OPTIONAL_ROWS for r in wanted):
        raise InvalidArgument("--rows", f"choose from {', '.join(ROWS + OPTIONAL_ROWS)}, got {a.rows!r}")
    for flag in ("steps", "rounds", "frames", "lightning_steps"):
        if getattr(a, flag) < 1:
            raise InvalidArgument(f"--{flag.replace('_', '-')}", f"must be >= 1, got {getattr(a, flag)}")
    device = resolve_device(a.device)
    resolve_dtype(a.baseline_dtype, device)
    default = str(resolve_dtype("auto", device)).removeprefix("torch.")
    folder = a.model or str(model_folder(a.size, a.cache))
    motion = a.motion_module if a.model else None
    # 2. Load the rows; vidiff rows of one dtype share a pipeline (PAB is switched on per call).
    pipes: dict[str, VideoPipeline] = {}

    def vidiff(dtype: str, lora: str = "") -> VideoPipeline:
        key = f"{resolve_dtype(dtype, device)} {lora}"
        if key not in pipes:
            loras = [str(random_lora(folder, Path(a.cache or tempfile.gettempdir())))] if lora else []
            pipes[key] = VideoPipeline.from_pretrained(
                folder, motion, dtype=dtype, device=a.device, loras=loras, fuse_loras=lora != "unfused"
            )
        return pipes[key]

    def nets(count: int) -> list[str]:
        return random_controlnets(folder, Path(a.cache or tempfile.gettempdir()), count)

    lightning = {"scheduler": "euler", "timestep_spacing": "trailing", "beta_schedule": "linear", "guidance_scale": 1.0}

    makers = {
        "diffusers": lambda: diffusers_row(folder, motion, a.baseline_dtype, a),
        "same-dtype": lambda: vidiff_row("same-dtype", "vidiff same dtype", vidiff(a.baseline_dtype), a),
        "default": lambda: vidiff_row("default", "vidiff default", vidiff("auto"), a),
        "fast": lambda: vidiff_row("fast", "vidiff default + fast", vidiff("auto"), a, fast=True),
        "lightning": lambda: vidiff_row(
            "lightning",
            f"lightning, {a.lightning_steps} steps",
            vidiff("auto"),
            a,
            steps=a.lightning_steps,
            **lightning,
        ),
        "lora": lambda: vidiff_row("lora", "LoRA fused", vidiff("auto", "fused"), a),
        "lora-unfused": lambda: vidiff_row("lora-unfused", "LoRA unfused (peft)", vidiff("auto", "unfused"), a),
        "diffusers-controlnet": lambda: diffusers_controlnet_row(folder, motion, a.baseline_dtype, a, nets(1)),
        "controlnet": lambda: vidiff_row(
            "controlnet", "vidiff + ControlNet", vidiff(a.baseline_dtype), a, controls=tuple(nets(1))
        ),
        "controlnet-2": lambda: vidiff_row(
            "controlnet-2", "vidiff + 2 ControlNets", vidiff(a.baseline_dtype), a, controls=tuple(nets(2))
        ),
        "ip-adapter": lambda: vidiff_row(
            "ip-adapter",
            "vidiff + IP-Adapter",
            vidiff(a.baseline_dtype),
            a,
            ip=random_ip_adapter(folder, Path(a.cache or tempfile.gettempdir())),
        ),  # fmt: skip
    }
    rows = [makers[name]() for name in ROWS + OPTIONAL_ROWS if name in wanted]
    # 3. Warm up (one step each), then take turns.
    for row in rows:
        row.call(1)
    for _ in range(a.rounds):
        for row in rows:
            row.runs.append(row.call(a.steps))
    report(rows, a, default)
    if a.json:
        results = [
            {"row": r.name, "dtype": r.dtype, "runs": [asdict(m) | {"latents": None} for m in r.runs]} for r in rows
        ]
        Path(a.json).write_text(json.dumps({"settings": vars(a) | {"func": None}, "rows": results}, indent=2))
    return rows


def report(rows: list[Row], a: argparse.Namespace, default: str) -> None:
    by = {r.name: r for r in rows}
    print(
        f"{a.model or a.size} weights, {a.frames} frames {a.width}x{a.height}, {a.steps} steps, CFG "
        f"{a.guidance_scale}, {a.device} ({torch.get_num_threads()} threads), vidiff default dtype {default}; "
        f"median of {a.rounds} alternating rounds after a warm-up"
    )
    base = by.get("diffusers")
    head = f"{'':22} {'dtype':>9} {'s/step':>8} {'VAE s':>7} {'total s':>8} {'peak GiB':>9}"
    print(head + (f" {'step vs diffusers':>18}" if base else ""))
    for r in rows:
        line = (
            f"{r.label:22} {r.dtype:>9} {r.median('step_s'):8.2f} {r.median('vae_s'):7.2f} "
            f"{r.median('total_s'):8.2f} {r.median('peak_gib'):9.2f}"
        )
        if base:
            line += f" {r.median('step_s') / base.median('step_s'):17.2f}x"
        print(line)
    if "default" in by and "fast" in by:
        on, off = by["fast"].runs[-1].latents, by["default"].runs[-1].latents
        print(
            f"--fast: {by['default'].median('step_s') / by['fast'].median('step_s'):.2f}x faster per step than "
            f"vidiff default; relative L2 of final latents vs --fast off: {((on - off).norm() / off.norm()).item():.4f}"
        )
    if "default" in by and "lightning" in by:
        d, lt = by["default"].median("total_s"), by["lightning"].median("total_s")
        print(f"lightning: {lt:.1f} s per video vs {d:.1f} s for vidiff default at {a.steps} steps ({d / lt:.1f}x)")
    if "controlnet" in by and "diffusers-controlnet" in by:
        ours, theirs = by["controlnet"].median("step_s"), by["diffusers-controlnet"].median("step_s")
        plain = f"; no ControlNet {by['same-dtype'].median('step_s'):.2f}" if "same-dtype" in by else ""
        print(f"ControlNet per step: vidiff {ours:.2f} s, diffusers {theirs:.2f} s ({ours / theirs:.2f}x){plain}")
    if "lora" in by and "lora-unfused" in by:
        fused, live = by["lora"].median("step_s"), by["lora-unfused"].median("step_s")
        plain = f", {by['default'].median('step_s'):.2f} without a LoRA" if "default" in by else ""
        print(f"LoRA per step: fused {fused:.2f} s, unfused {live:.2f} s{plain}")
