"""Few-step presets equal diffusers' AnimateDiffPipeline with the scheduler each model card prescribes."""

from __future__ import annotations

import torch
from diffusers import AnimateDiffPipeline, EulerDiscreteScheduler, LCMScheduler, MotionAdapter
from safetensors.torch import save_file

from vidiff import GenerationRequest, LoadSettings, RenderJob, render
from vidiff.presets import module_steps

TOL = 1e-4  # float32 latents


def diffusers_latents(sd1_folder, adapter_folder, scheduler, steps, guidance, lora=None):
    pipe = AnimateDiffPipeline.from_pretrained(sd1_folder, motion_adapter=MotionAdapter.from_pretrained(adapter_folder))
    pipe.scheduler = scheduler(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="lcm")
        pipe.set_adapters(["lcm"], [0.8])
    out = pipe("a cat", num_frames=4, height=64, width=64, num_inference_steps=steps, guidance_scale=guidance,
               output_type="latent", generator=torch.Generator("cpu").manual_seed(3))  # fmt: skip
    return out.frames


def job(motion_module, preset, tmp_path, **extra) -> RenderJob:
    request = GenerationRequest("a cat", frames=4, height=64, width=64, seed=3)
    load = LoadSettings(motion_module=str(motion_module), dtype="float32", groupnorm="diffusers", **extra)
    return RenderJob(request, load=load, preset=preset, output=str(tmp_path / f"{preset}.pt"))


def test_lightning(tmp_path, sd1_folder, adapter_folder):
    module = tmp_path / "animatediff_lightning_2step_diffusers.safetensors"  # its diffusers-keyed single file
    state = MotionAdapter.from_pretrained(adapter_folder).state_dict()
    save_file({k: v.clone().contiguous() for k, v in state.items()}, module)
    result = render(job(module, "lightning", tmp_path, model=str(sd1_folder)))
    r = result.job.request
    assert (r.scheduler, r.timestep_spacing, r.beta_schedule, r.guidance_scale, r.steps) == ("euler", "trailing",
                                                                                          "linear", 1.0, 2)  # fmt: skip
    assert (
        result.notes[0].startswith("preset lightning: scheduler euler") and "(from the module name)" in result.notes[0]
    )
    trailing = lambda c: EulerDiscreteScheduler.from_config(c, timestep_spacing="trailing", beta_schedule="linear")  # noqa: E731
    want = diffusers_latents(sd1_folder, adapter_folder, trailing, 2, 1.0)
    assert (result.latents - want).abs().max() <= TOL


def test_an_explicit_option_wins_over_the_preset(tmp_path, sd1_folder, adapter_folder):
    module = tmp_path / "mm_8step.safetensors"
    state = MotionAdapter.from_pretrained(adapter_folder).state_dict()
    save_file({k: v.clone().contiguous() for k, v in state.items()}, module)
    spec = job(module, "lightning", tmp_path, model=str(sd1_folder))
    spec.request = GenerationRequest("a cat", frames=4, height=64, width=64, seed=3, steps=3, guidance_scale=2.0)
    r = render(spec).job.request
    assert (r.steps, r.guidance_scale, r.scheduler) == (3, 2.0, "euler")
    assert module_steps("animatediff_lightning_4step_comfyui.safetensors") == 4 and module_steps("mm.ckpt") is None


def test_animatelcm(tmp_path, sd1_folder, adapter_folder):
    from test_lora import kohya_lora

    from vidiff import VideoPipeline

    plain = VideoPipeline.from_pretrained(str(sd1_folder), str(adapter_folder), dtype="float32")
    save_file(kohya_lora(plain), tmp_path / "AnimateLCM_sd15_t2v_lora.safetensors")
    lora = tmp_path / "AnimateLCM_sd15_t2v_lora.safetensors"
    result = render(job(adapter_folder, "animatelcm", tmp_path, model=str(sd1_folder), loras=[str(lora)]))
    r = result.job.request
    assert (r.scheduler, r.beta_schedule, r.guidance_scale, r.steps) == ("lcm", "linear", 1.5, 6)
    assert result.job.load.loras == (f"{lora}:0.8",)
    lcm = lambda c: LCMScheduler.from_config(c, beta_schedule="linear")  # noqa: E731
    want = diffusers_latents(sd1_folder, adapter_folder, lcm, 6, 1.5, lora=lora)
    assert (result.latents - want).abs().max() <= TOL
