"""Prompt travel: per-frame conditioning interpolated between keyframes, with and without context windows."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import LATENT, cli

from vidiff import GenerationRequest, InvalidArgument, RenderJob, VideoPipeline
from vidiff.travel import interpolate, parse_travel

OPTS = LATENT | dict(frames=6, steps=3, seed=4)


def test_one_keyframe_is_the_plain_prompt(motion_pipe):
    plain = motion_pipe("a cat", negative_prompt="blur", **OPTS).latents
    travel = motion_pipe("a cat", prompt_travel={0: "a cat"}, negative_prompt_travel={3: "blur"}, **OPTS).latents
    assert torch.equal(plain, travel)


@pytest.mark.parametrize("how", ["linear", "slerp"])
def test_keyframes_set_their_frames_and_frames_between_blend(motion_pipe, how):
    request = motion_pipe.resolve(GenerationRequest.from_options("x", prompt_travel={0: "a cat", 5: "a dog"},
                                                    travel_interpolation=how, **{"frames": 6, "seed": 1}))  # fmt: skip
    cond, uncond = motion_pipe._encode(request)
    cat, dog = (motion_pipe.prompt_encoder([p]).embeds for p in ("a cat", "a dog"))
    assert cond.embeds.shape[:2] == (1, 6) and uncond.embeds.dim() == 3  # only the prompt travels
    assert torch.equal(cond.embeds[:, 0], cat) and torch.equal(cond.embeds[:, 5], dog)
    middle = cond.embeds[:, 2]
    assert 0 < (middle - cat).norm() < (dog - cat).norm() and (middle - dog).norm() > 0
    run = motion_pipe("x", prompt_travel={0: "a cat", 5: "a dog"}, travel_interpolation=how, **OPTS).latents
    assert not torch.equal(run, motion_pipe("a cat", **OPTS).latents)


def test_travel_with_context_windows_and_on_sd3(motion_pipe, sd3_folder, tmp_path):
    from vidiff.motion.sd3_temporal import SD3TemporalLayers

    long = motion_pipe("x", prompt_travel={0: "a cat", 39: "a dog"}, **(LATENT | dict(frames=40, steps=2, seed=1)))
    assert torch.isfinite(long.latents).all()
    seq = VideoPipeline.from_pretrained(str(sd3_folder), dtype="float32", use_t5=False)
    SD3TemporalLayers.for_transformer(seq.denoiser.image.transformer).save(tmp_path / "t.safetensors")
    sd3 = VideoPipeline.from_pretrained(str(sd3_folder), str(tmp_path / "t.safetensors"), dtype="float32", use_t5=False)
    request = sd3.resolve(GenerationRequest.from_options("x", prompt_travel={0: "a cat", 2: "a dog"}, frames=3, seed=1))
    cond, _ = sd3._encode(request)
    assert cond.pooled.shape[:2] == (1, 3)  # pooled embeddings travel too
    assert torch.isfinite(sd3("x", prompt_travel={0: "a cat", 2: "a dog"}, **(OPTS | {"frames": 3})).latents).all()


def test_specs_files_and_bad_input(tmp_path, sd1_folder, original_files, capsys):
    assert parse_travel("0: a cat sitting | 32: a cat running") == {0: "a cat sitting", 32: "a cat running"}
    (tmp_path / "travel.json").write_text(json.dumps({"0": "a", "7": "b"}))
    assert parse_travel(str(tmp_path / "travel.json")) == {0: "a", 7: "b"}
    job = RenderJob(GenerationRequest.from_options("x", prompt_travel={0: "a", 7: "b"}))
    assert RenderJob.from_json(job.to_json()).request.travel.prompt == {0: "a", 7: "b"}
    keyed = {0: torch.zeros(1, 2), 2: torch.ones(1, 2)}
    assert torch.equal(interpolate(keyed, 4)[0, :, 0], torch.tensor([0.0, 0.5, 1.0, 1.0]))
    model = ["--model", str(sd1_folder), "--motion-module", str(original_files["ckpt"])]
    for travel, text in [("0 a cat", "cannot read"), ("0: a | 9: b", "keyframe 9 is beyond the last frame (7)")]:
        assert cli("generate", *model, "--frames", "8", "--prompt-travel", travel, "-o", tmp_path / "o.gif") == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--prompt-travel" in err and text in err, err
    with pytest.raises(InvalidArgument, match="--travel-interpolation"):
        GenerationRequest.from_options("x", travel_interpolation="cubic").validate()
