"""Render jobs: the library does what `vidiff generate` does, with identical latents; jobs round-trip as JSON."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import cli, source_and_mask
from PIL import Image

from vidiff import (
    DeepCacheConfig,
    GenerationRequest,
    InvalidArgument,
    LoadSettings,
    PABConfig,
    Renderer,
    RenderJob,
    VideoPipeline,
    VidiffError,
    render,
)
from vidiff.latents_io import load_latents
from vidiff.sources import Source

FLAGS = ["--frames", "8", "--steps", "6", "--height", "64", "--width", "64", "--seed", "3", "--quiet"]
FLAGS += ["--dtype", "float32"]


def request(**overrides) -> GenerationRequest:
    return GenerationRequest(**({"prompt": "a cat", "frames": 8, "steps": 6, "height": 64, "width": 64, "seed": 3}
                                | overrides))  # fmt: skip


@pytest.fixture
def model(sd1_folder, original_files) -> dict:
    return {"model": str(sd1_folder), "motion_module": str(original_files["safetensors"]), "dtype": "float32"}


@pytest.fixture
def flags(model) -> list[str]:
    return ["--model", model["model"], "--motion-module", model["motion_module"], *FLAGS]


def latents(path) -> torch.Tensor:
    return load_latents(path).latents


def test_json_round_trip():
    job = RenderJob(
        request(scheduler="dpm++2m", denoising_end=0.5),
        load=LoadSettings("demo", loras=("a.safetensors:0.5",)),
        image_seeds="a.gif;mask=m.png",
        pab=PABConfig(spatial_skip=3, cross_range=(200, 700)),
        deep_cache=DeepCacheConfig(skip=2),
        output="x.safetensors",
        checkpoint_every=4,
    )
    again = RenderJob.from_json(job.to_json())
    assert again == job and isinstance(again.pab.cross_range, tuple)
    with pytest.raises(InvalidArgument, match="job: unknown keys colour"):
        RenderJob.from_dict(job.to_dict() | {"colour": "red"})


def test_text_to_video_equals_the_cli(tmp_path, model, flags):
    assert cli("generate", "a cat", *flags, "-o", tmp_path / "cli.safetensors") == 0
    result = render(RenderJob(request(), output=str(tmp_path / "api.safetensors"), load=LoadSettings(**model)))
    assert torch.equal(latents(tmp_path / "cli.safetensors"), latents(tmp_path / "api.safetensors"))
    assert torch.equal(result.latents.float(), latents(tmp_path / "api.safetensors"))
    pipe = VideoPipeline.from_pretrained(model["model"], model["motion_module"], dtype="float32")
    direct = pipe("a cat", frames=8, steps=6, height=64, width=64, seed=3, output_type="latent", progress=False)
    assert torch.equal(direct.latents, result.latents)


def test_image_seeds_with_a_mask_equal_the_cli(tmp_path, model, flags):
    seeds = source_and_mask(tmp_path)
    assert cli("generate", "a cat", *flags, "--image-seeds", seeds, "-o", tmp_path / "cli.safetensors") == 0
    render(
        RenderJob(request(), image_seeds=seeds, output=str(tmp_path / "api.safetensors"), load=LoadSettings(**model))
    )
    assert torch.equal(latents(tmp_path / "cli.safetensors"), latents(tmp_path / "api.safetensors"))


def test_split_and_resume_equal_the_cli(tmp_path, model, flags):
    split = ["--scheduler", "dpm++2m", "--denoising-end", "0.5"]
    assert cli("generate", "a cat", *flags, *split, "-o", tmp_path / "cli-half.safetensors") == 0
    seeds = f"latents: {tmp_path / 'cli-half.safetensors'}"
    rest = ["--scheduler", "dpm++2m", "--denoising-start", "0.5", "--image-seeds", seeds]
    assert cli("generate", "a cat", *flags, *rest, "-o", tmp_path / "cli.safetensors") == 0
    half = render(
        RenderJob(
            request(scheduler="dpm++2m", denoising_end=0.5),
            output=str(tmp_path / "half.safetensors"),
            load=LoadSettings(**model),
        )
    )
    assert torch.equal(half.latents.float(), latents(tmp_path / "cli-half.safetensors"))
    seeds = f"latents: {tmp_path / 'half.safetensors'}"
    job = RenderJob(request(scheduler="dpm++2m", denoising_start=0.5), image_seeds=seeds,
                    output=str(tmp_path / "api.safetensors"), load=LoadSettings(**model))  # fmt: skip
    render(job)
    assert torch.equal(latents(tmp_path / "cli.safetensors"), latents(tmp_path / "api.safetensors"))


def test_resume_checkpoint_stores_the_job(tmp_path, model):
    """A checkpoint written mid-run holds the resolved job; resuming it alone finishes the same video."""
    whole = render(
        RenderJob(
            request(scheduler="dpm++2m", seed=None), output=str(tmp_path / "whole.pt"), load=LoadSettings(**model)
        )
    )
    seed = whole.job.request.seed
    job = RenderJob(request(scheduler="dpm++2m", seed=seed), output=str(tmp_path / "run.safetensors"),
                    checkpoint_every=2, load=LoadSettings(**model))  # fmt: skip
    checkpoint = tmp_path / "run.safetensors.resume.safetensors"
    calls = []

    def stop_after_four(*_):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt

    renderer = Renderer()
    pipe, _ = renderer.pipeline(job)
    original = pipe.denoiser.predict
    pipe.denoiser.predict = lambda *a: (stop_after_four(), original(*a))[1]
    with pytest.raises(KeyboardInterrupt):
        renderer.render(job)
    del pipe.denoiser.predict
    stored = load_latents(checkpoint).meta
    assert stored.step == 2 and RenderJob.from_dict(stored.job).request.seed == seed
    result = renderer.render(RenderJob(GenerationRequest(""), resume=str(checkpoint)))  # nothing contradicts it
    assert result.output == tmp_path / "run.safetensors" and not checkpoint.exists()
    assert renderer.loads == 1 and result.reused_pipeline
    assert (result.latents - whole.latents).abs().max() <= 1e-5


def test_accelerators_equal_the_cli(tmp_path, model, flags):
    pab = ["--pab", "--pab-cross", "4", "--deep-cache", "2"]
    assert cli("generate", "a cat", *flags, *pab, "-o", tmp_path / "cli.safetensors") == 0
    job = RenderJob(request(), pab=PABConfig(cross_skip=4), deep_cache=DeepCacheConfig(skip=2),
                    output=str(tmp_path / "api.safetensors"), load=LoadSettings(**model))  # fmt: skip
    render(job)
    assert torch.equal(latents(tmp_path / "cli.safetensors"), latents(tmp_path / "api.safetensors"))
    assert cli("generate", "a cat", *flags, "--fast", "-o", tmp_path / "fast.safetensors") == 0
    render(RenderJob(request(), fast=True, output=str(tmp_path / "api-fast.safetensors"), load=LoadSettings(**model)))
    assert torch.equal(latents(tmp_path / "fast.safetensors"), latents(tmp_path / "api-fast.safetensors"))
    assert not torch.equal(latents(tmp_path / "fast.safetensors"), latents(tmp_path / "cli.safetensors"))


def test_a_warm_pipeline_is_reused_and_accelerators_do_not_leak(tmp_path, model):
    renderer = Renderer()
    plain = renderer.render(RenderJob(request(), output=str(tmp_path / "a.pt"), load=LoadSettings(**model)))
    renderer.render(RenderJob(request(), fast=True, output=str(tmp_path / "b.pt"), load=LoadSettings(**model)))
    again = renderer.render(RenderJob(request(), output=str(tmp_path / "c.pt"), load=LoadSettings(**model)))
    assert renderer.loads == 1 and again.reused_pipeline and not renderer.pipe.accelerators
    assert torch.equal(plain.latents, again.latents)


def test_video_output_and_checks_before_loading(tmp_path, model):
    result = render(RenderJob(request(), output=str(tmp_path / "v.gif"), fps=10, load=LoadSettings(**model)))
    assert result.frames_written == 8 and not result.is_latents
    with Image.open(tmp_path / "v.gif") as gif:
        assert (gif.n_frames, gif.size, gif.info["duration"]) == (8, (64, 64), 100)
    bad = {"model": "/nonexistent"}  # never loaded: each error comes first
    for job, text in [
        (RenderJob(request(), output=str(tmp_path / "v.gif"), load=LoadSettings(**bad)), "--output: "),
        (RenderJob(request(denoising_end=0.5), output=str(tmp_path / "x.gif"), load=LoadSettings(**bad)), "go to .pt"),
        (RenderJob(request(), fps=float("nan"), output=str(tmp_path / "y.gif"), load=LoadSettings(**bad)), "--fps"),
        (RenderJob(request(), pab=PABConfig(spatial_skip=0), load=LoadSettings(**bad)), "--pab-spatial"),
        (RenderJob(request(), pab=PABConfig(spatial_range=(800, 100)), load=LoadSettings(**bad)), "--pab-range"),
    ]:
        with pytest.raises(VidiffError, match=text):
            render(job)


def test_runs_are_independent_of_the_pipeline(sd1_folder):
    """`generate_latents` returns its run (latents, schedule, scheduler and generator state, timings); the
    pipeline keeps none, so a run snapshotted after another one still holds its own state."""
    pipe = VideoPipeline.from_pretrained(str(sd1_folder), mode="sequential", dtype="float32")
    first = pipe.generate_latents(pipe.resolve(request(scheduler="dpm++2m", denoising_end=0.5)), progress=False)
    alone = pipe.snapshot(first)
    second = pipe.generate_latents(pipe.resolve(request(steps=4, seed=9)), progress=False)
    again = pipe.snapshot(first)
    assert not hasattr(pipe, "run") and second.timings.steps == 4 and first.timings.steps == 3
    assert torch.equal(alone.latents, again.latents) and again.meta.step == 3 and again.meta.steps == 6
    assert torch.equal(alone.generator_state, again.generator_state)
    whole = pipe.generate_latents(pipe.resolve(request(scheduler="dpm++2m")), progress=False).latents
    rest = pipe(**vars(request(scheduler="dpm++2m", denoising_start=0.5)), source=Source(latents=again),
                output_type="latent", progress=False).latents  # fmt: skip
    assert (rest - whole).abs().max() <= 1e-5  # the second run left the first one's scheduler state alone


def test_decode_file(tmp_path, model):
    from vidiff import decode_file

    render(RenderJob(request(), output=str(tmp_path / "a.safetensors"), load=LoadSettings(**model)))
    count, denoised = decode_file(str(tmp_path / "a.safetensors"), model["model"], str(tmp_path / "a.mp4"))
    assert (count, denoised) == (8, 1.0) and (tmp_path / "a.mp4").stat().st_size > 0
    assert json.loads(json.dumps(RenderJob(request()).to_dict()))["request"]["prompt"] == "a cat"


def test_flat_options_make_the_same_job_as_the_flags(tmp_path):
    """`job_from_options` reads a flat job's keys as `vidiff generate` reads its flags (types, choices, switches,
    repeatable and two-valued flags); unknown keys and bad values name the key; `false` turns a switch off."""
    from vidiff.cli import build_parser
    from vidiff.options import job_from_args, job_from_options

    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    flags = ["a cat", "--frames", "24", "--lora", f"{lora}:0.5", "--lora", str(lora), "--pab", "--pab-range", "50",
             "700", "--no-t5", "--loop", "--prompt-travel", "0: a cat | 20: a dog", "--deep-cache", "--compile",
             "--guidance-rescale", "0.7", "--context-length", "12"]  # fmt: skip
    want = job_from_args(build_parser().parse_args(["generate", *flags]))
    options = {"prompt": "a cat", "frames": 24, "lora": [f"{lora}:0.5", str(lora)], "pab": True, "pab_range": [50, 700],
               "no-t5": True, "loop": True, "prompt_travel": "0: a cat | 20: a dog", "deep_cache": 3,
               "compile": True, "guidance_rescale": 0.7, "context-length": "12", "overwrite": False}  # fmt: skip
    got = job_from_options(options)
    assert got == want and got.load.loras == (f"{lora}:0.5", str(lora)) and got.request.context.schedule == "looped"
    assert got.load.compile_backend == "inductor" and got.pab.spatial_range == (50, 700)
    defaults = build_parser().parse_args(["generate", "x", "--overwrite", "--lora", str(lora)])
    assert job_from_options({"prompt": "a", "overwrite": False, "lora": []}, defaults).overwrite is False
    assert job_from_options({"prompt": "a"}, defaults).load.loras == (str(lora),)
    for options, message in [
        ({"prompt": "a", "colour": "red"}, "job: unknown option 'colour'"),
        ({"prompt": "a", "steps": "many"}, "job: steps: 'many' is not a valid value"),
        ({"prompt": "a", "scheduler": ["ddim"]}, "job: scheduler: ['ddim'] is not a valid value (expected a single"),
        ({"prompt": "a", "frames": True}, "job: frames: True is not a valid value"),
        ({"prompt": 1.0}, "prompt: must be"),
        ({"prompt": "a", "context_fuse": "max"}, "job: context_fuse: 'max' is not a valid value"),
    ]:
        with pytest.raises(InvalidArgument, match=re.escape(message)):
            job_from_options(options)


def test_request_groups_are_dataclasses_that_round_trip():
    """Context windows, prompt travel and FreeInit are typed groups inside the request, each with its own
    validate; flat keyword names (as the flags name them) build them; JSON nests them."""
    from vidiff.request import FreeInitOptions
    from vidiff.windowing import ContextOptions

    r = GenerationRequest.from_options("a cat", context_length=8, noise_type="shuffle", free_init=2,
                                       prompt_travel={0: "a", 7: "b"}, frames=8)  # fmt: skip
    assert r.context == ContextOptions(length=8, noise="shuffle") and r.free_init == FreeInitOptions(passes=2)
    assert r.travel.prompt == {0: "a", 7: "b"}
    data = json.loads(RenderJob(r).to_json())["request"]
    assert data["context"]["length"] == 8 and "context_length" not in data and data["free_init"]["passes"] == 2
    assert RenderJob.from_json(RenderJob(r).to_json()).request == r
    with pytest.raises(InvalidArgument, match="request: context: unknown keys size"):
        GenerationRequest("a", context={"size": 3})
    for bad, flag in [(dict(context=ContextOptions(length=4, overlap=4)), "--context-overlap"),
                      (dict(free_init=FreeInitOptions(order=0)), "--free-init-order"),
                      (dict(free_init=3), "request: free_init must be a FreeInitOptions")]:  # fmt: skip
        with pytest.raises(InvalidArgument, match=flag):
            GenerationRequest("a", **bad).validate()
