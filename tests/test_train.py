"""The trainer: each stage lowers its loss on tiny data; a resumed run equals the uninterrupted one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vidiff.demo.data import render_clip
from vidiff.errors import InvalidArgument
from vidiff.train import TrainConfig, make_stage, train
from vidiff.train.data import VideoFolder


def run(stage: str, folder: Path, steps: int, **kw) -> list[float]:
    cfg = TrainConfig(stage=stage, model=folder, steps=steps, warmup=1, checkpoint_every=kw.pop("every", 100), **kw)
    return train(cfg, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A demo-shaped folder after a few steps of every stage."""
    folder = tmp_path_factory.mktemp("demo") / "model"
    run("vae", folder, 40, batch_size=4, lr=2e-3)
    run("image", folder, 30, batch_size=8, lr=1e-3)
    run("motion", folder, 4, batch_size=1, frames=8)
    return folder


def test_stages_write_a_loadable_sd1_folder(trained):
    from vidiff import VideoPipeline

    for part in ("vae", "unet", "text_encoder", "tokenizer", "scheduler", "motion_adapter"):
        assert (trained / part).is_dir(), part
    assert json.loads((trained / "model_index.json").read_text())["motion_adapter"] == ["diffusers", "MotionAdapter"]
    pipe = VideoPipeline.from_pretrained(str(trained), dtype="float32")
    out = pipe("a red circle moving right", frames=8, steps=2, seed=0, progress=False)
    assert out.frames[0].shape == (8, 64, 64, 3)


def test_vae_loss_goes_down(tmp_path):
    losses = run("vae", tmp_path / "m", 30, batch_size=4, lr=2e-3)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_image_loss_goes_down(trained, tmp_path):
    import shutil

    shutil.copytree(trained / "vae", tmp_path / "m" / "vae")
    losses = run("image", tmp_path / "m", 40, batch_size=8, lr=2e-3)
    assert np.mean(losses[-8:]) < np.mean(losses[:8])


def test_text_lr_scale_zero_freezes_the_text_encoder(trained, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns(".train-*"))  # weights, not the checkpoints
    text, unet = "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors"
    before = {p: load_file(folder / p) for p in (text, unet)}
    run("image", folder, 3, batch_size=2, lr=1e-3, text_lr_scale=0.0)
    after = {p: load_file(folder / p) for p in (text, unet)}
    assert all(torch.equal(before[text][k], after[text][k]) for k in before[text])
    assert not all(torch.equal(before[unet][k], after[unet][k]) for k in before[unet])
    optimizer = torch.load(folder / ".train-image.pt", weights_only=True)["optimizer"]
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == len(before[unet])  # no state for the text
    with pytest.raises(InvalidArgument, match="--text-lr-scale"):
        run("image", folder, 1, text_lr_scale=-1.0)


def test_motion_stage_trains_only_motion_modules(trained, tmp_path):
    before = load_file(trained / "unet" / "diffusion_pytorch_model.safetensors")
    out = tmp_path / "adapter"
    losses = run("motion", trained, 6, batch_size=1, frames=8, out=out, lr=2e-3)
    assert len(losses) == 6 and all(np.isfinite(losses))
    after = load_file(trained / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the image model stayed frozen
    adapter = load_file(out / "diffusion_pytorch_model.safetensors")
    proj_out = [v for k, v in adapter.items() if k.endswith("proj_out.weight")]
    assert proj_out and any(v.abs().max() > 0 for v in proj_out)  # zero-initialised, then trained


def test_trainable_patterns_select_exactly_the_named_parameters(trained, tmp_path):
    """AnimateDiff's trainable_modules rule: motion modules plus the spatial cross-attention train, all else
    is bit-identical after a step; the optimizer holds exactly the selected parameters; spatial weights are
    written into the model folder, motion modules into the adapter."""
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns(".train-*"))
    cfg = TrainConfig(stage="motion", model=folder, steps=2, batch_size=1, frames=8, lr=1e-2, warmup=1,
                      out=tmp_path / "adapter", trainable=("motion_modules.", "attn2."))  # fmt: skip
    stage = make_stage(cfg)
    before = {k: v.clone() for k, v in stage.unet.state_dict().items()}
    selected = {n for n, _ in stage.unet.named_parameters() if "motion_modules." in n or "attn2." in n}
    assert {n for n, p in stage.unet.named_parameters() if p.requires_grad} == selected
    assert set(stage.trained_groups()) == {"motion", "spatial"}
    train(cfg, progress=False, stage=stage)
    after = stage.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k not in selected)
    changed = {k for k in selected if not torch.equal(before[k], after[k])}
    assert len(changed) > 0.9 * len(selected)
    optimizer = torch.load(cfg.checkpoint, weights_only=True)["optimizer"]
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == len(selected)
    saved = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(saved[k], after[k]) for k in saved)  # the image UNet's names, trained values
    assert any(not torch.equal(saved[k], before[k]) for k in saved if "attn2." in k)
    text_file = folder / "text_encoder" / "model.safetensors"
    text_before, unet_before = load_file(text_file), saved
    cfg = replace(cfg, trainable=("motion_modules.", "text_encoder."), out=tmp_path / "adapter2")
    stage = make_stage(cfg)
    assert set(stage.trained_groups()) == {"motion", "text_encoder"}
    train(cfg, progress=False, stage=stage)
    text_after = load_file(text_file)
    assert any(not torch.equal(text_before[k], text_after[k]) for k in text_before)  # the text encoder trained
    unet_after = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(unet_before[k], unet_after[k]) for k in unet_before)
    with pytest.raises(InvalidArgument, match="--trainable: nothing_like_this selects no parameter"):
        make_stage(TrainConfig(stage="motion", model=folder, trainable=("nothing_like_this",)))
    with pytest.raises(InvalidArgument, match="--lora-rank: trains the spatial layers as a LoRA"):
        make_stage(TrainConfig(stage="motion", model=folder, trainable=("attn2.",), lora_rank=4))


def test_spatial_lora_export_loads_back_through_lora(trained, tmp_path):
    """A LoRA trained on the spatial attention (motion modules alongside) loads through `--lora` and gives
    the trained model's prediction; the image UNet's file is untouched."""
    import shutil

    from vidiff import VideoPipeline
    from vidiff.adapters.base import Conditioning

    folder = tmp_path / "m"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns(".train-*"))
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    before = load_file(unet_file)
    cfg = TrainConfig(stage="motion", model=folder, steps=3, batch_size=1, frames=8, lr=1e-2, warmup=1,
                      out=tmp_path / "adapter", lora_rank=4)  # fmt: skip
    stage = make_stage(cfg)
    assert set(stage.trained_groups()) == {"motion", "lora"}
    train(cfg, progress=False, stage=stage)
    after = load_file(unet_file)
    assert all(torch.equal(before[k], after[k]) for k in before)
    torch.manual_seed(0)
    x, embeds = torch.randn(1, 4, 8, 8, 8), torch.randn(1, 77, stage.unet.config.cross_attention_dim)
    with torch.no_grad():
        want = stage.denoiser.predict(x, torch.tensor(500), Conditioning(embeds))
        kw = dict(motion_module=str(tmp_path / "adapter"), dtype="float32")
        pipe = VideoPipeline.from_pretrained(str(folder), loras=[str(cfg.lora_path)], **kw)
        got = pipe.denoiser.predict(x, torch.tensor(500), Conditioning(embeds))
        plain = VideoPipeline.from_pretrained(str(folder), **kw).denoiser.predict(
            x, torch.tensor(500), Conditioning(embeds)
        )
    assert (got - want).abs().max() < 1e-4  # LoRA fused at load vs live peft layers, float32
    assert (plain - want).abs().max() > 1e-3  # the LoRA learned something


def test_min_noise_draws_only_high_noise_levels(trained):
    stage = make_stage(TrainConfig(stage="motion", model=trained, frames=8, min_noise=0.6))
    _, t, _ = stage.diff.noised(torch.zeros(256, 4, 1, 2, 2), torch.Generator().manual_seed(0), 0.6)
    assert t.min() >= 600 and t.max() < 1000
    with pytest.raises(InvalidArgument, match="--min-noise: must be in"):
        make_stage(TrainConfig(stage="motion", model=trained, min_noise=1.0))


def test_resume_equals_uninterrupted(trained, tmp_path):
    """Interrupt after 3 of 6 steps; rerunning resumes at step 3 and ends with the same weights."""
    whole = run("motion", trained, 6, batch_size=1, frames=8, out=tmp_path / "whole", every=3)

    def interrupt(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    cfg = TrainConfig(stage="motion", model=trained, steps=6, batch_size=1, frames=8, out=tmp_path / "split",
                      warmup=1, checkpoint_every=3)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, on_step=interrupt)
    assert torch.load(cfg.checkpoint, weights_only=True)["step"] == 3
    resumed = train(cfg, progress=False)
    assert len(resumed) == 6 and resumed[:3] == whole[:3]
    assert np.allclose(resumed, whole, rtol=0, atol=1e-6)
    a = load_file(tmp_path / "whole" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "split" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_video_folder_with_captions(tmp_path):
    rng = np.random.default_rng(0)
    clip = render_clip("red", "circle", "right", rng)
    frames_dir = tmp_path / "clip_a"
    frames_dir.mkdir()
    for i, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(frames_dir / f"{i:03d}.png")
    Image.fromarray(clip.frames[0]).save(
        tmp_path / "clip_b.gif", save_all=True, append_images=[Image.fromarray(f) for f in clip.frames[1:]]
    )
    (tmp_path / "clip_b.txt").write_text("a red circle moving right\n")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "clip_a", "caption": "a clip"}) + "\n")
    data = VideoFolder(tmp_path, frames=8, size=32)
    videos, captions = data.clips(np.random.default_rng(1), 4)
    assert videos.shape == (4, 8, 3, 32, 32) and videos.min() >= -1 and videos.max() <= 1
    assert set(captions) <= {"a clip", "a red circle moving right"}
    (tmp_path / "clip_c.gif").write_bytes((tmp_path / "clip_b.gif").read_bytes())
    with pytest.raises(InvalidArgument, match="clip_c.gif has no caption"):
        VideoFolder(tmp_path, frames=8, size=32)


def test_sd3_family_image_and_temporal_stages(trained, tmp_path):
    """A new SD 3-shaped folder: the image stage lowers its loss, the temporal stage trains only its layers,
    and the result loads through the SD 3 loader, frame by frame and with the temporal layers."""
    import shutil

    from vidiff import VideoPipeline

    folder = tmp_path / "sd3"
    shutil.copytree(trained / "vae", folder / "vae")
    losses = run("image", folder, 40, batch_size=8, lr=2e-3, family="sd3")
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
    before = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    losses = run("motion", folder, 3, batch_size=1, frames=8, lr=2e-3)
    assert len(losses) == 3 and all(np.isfinite(losses))
    after = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the MMDiT stayed frozen
    temporal = load_file(folder / "temporal.safetensors")
    assert any(v.abs().max() > 0 for k, v in temporal.items() if "to_out" in k)  # zero-initialised, then trained
    for kw in ({"mode": "sequential"}, {"motion_module": str(folder / "temporal.safetensors")}):
        pipe = VideoPipeline.from_pretrained(str(folder), dtype="float32", **kw)
        out = pipe("a red circle moving right", frames=8, steps=2, seed=0, max_sequence_length=77, progress=False)
        assert out.frames[0].shape == (8, 64, 64, 3)
    # temporal layers plus a LoRA on the MMDiT's attention: the LoRA loads back through --lora
    cfg = TrainConfig(stage="motion", model=folder, steps=3, batch_size=1, frames=8, lr=1e-2, warmup=1,
                      out=tmp_path / "t2.safetensors", lora_rank=4)  # fmt: skip
    stage = make_stage(cfg)
    assert set(stage.trained_groups()) == {"motion", "lora"}
    train(cfg, progress=False, stage=stage)
    assert all(
        torch.equal(before[k], v)
        for k, v in load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors").items()
    )
    torch.manual_seed(0)
    x, t = torch.randn(1, stage.transformer.config.in_channels, 8, 8, 8), torch.tensor(700.0)
    with torch.no_grad():
        cond = stage.flow.cond(["a red circle moving right"], None, grad=False)
        want = stage.denoiser.predict(x, t, cond)
        kw = dict(motion_module=str(cfg.out), dtype="float32")
        got = VideoPipeline.from_pretrained(str(folder), loras=[str(cfg.lora_path)], **kw).denoiser.predict(x, t, cond)
        plain = VideoPipeline.from_pretrained(str(folder), **kw).denoiser.predict(x, t, cond)
    assert (got - want).abs().max() < 1e-4 and (plain - want).abs().max() > 1e-3


def test_keyframe_share_picks_first_frames():
    from vidiff.train.data import pick_frames

    videos = torch.arange(6 * 5, dtype=torch.float32).view(6, 5, 1, 1, 1).expand(6, 5, 3, 2, 2)  # frame id = value
    first, _ = pick_frames(videos, [""] * 6, np.random.default_rng(0), keyframe_share=1.0)
    assert torch.equal(first[:, 0, 0, 0], videos[:, 0, 0, 0, 0])
    picks = [pick_frames(videos, [""] * 6, np.random.default_rng(s), 0.0)[0][:, 0, 0, 0] for s in range(20)]
    assert any(not torch.equal(p, videos[:, 0, 0, 0, 0]) for p in picks)  # share 0: any frame


def test_zero_snr_trains_on_the_rescaled_schedule_and_writes_it(trained, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns(".train-*"))
    cfg = TrainConfig(stage="motion", model=folder, steps=1, batch_size=1, frames=8, warmup=1, zero_snr=True)
    stage = make_stage(cfg)
    assert stage.diff.noise.alphas_cumprod[-1].item() == 0  # x_T is pure noise: nothing of the clip leaks
    train(cfg, progress=False, stage=stage)
    written = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert written["rescale_betas_zero_snr"] is True and written["timestep_spacing"] == "trailing"
    assert written["_class_name"] == "DDIMScheduler"  # the folder's sampler, its schedule switched
    again = make_stage(replace(cfg, zero_snr=False))  # later runs train on the folder's schedule as written
    assert again.diff.noise.alphas_cumprod[-1].item() == 0


def test_probe_reports_direction_and_colour_gaps_at_the_top_of_the_schedule(trained, tmp_path):
    from vidiff.train.trainer import PROBE_LEVELS, probe

    plain = probe(make_stage(TrainConfig(stage="motion", model=trained, frames=8)), clips=4)
    assert list(plain) == list(PROBE_LEVELS) == ["t=999", "t=950", "t=900", "pure noise", "t>=600"]
    for row in plain.values():
        assert set(row) == {"loss", "direction", "colour"} and all(np.isfinite(v) for v in row.values())
        assert row["colour"] != 0 and row["direction"] != 0  # the words reach the model
    assert plain["t=999"]["loss"] != plain["pure noise"]["loss"]  # the leak: x_999 still holds the clip
    zero = probe(make_stage(TrainConfig(stage="motion", model=trained, frames=8, zero_snr=True)), clips=4)
    for key, value in zero["t=999"].items():  # at zero terminal SNR, x_999 is pure noise (float sums: 1e-6)
        assert value == pytest.approx(zero["pure noise"][key], abs=1e-6)
    again = probe(make_stage(TrainConfig(stage="motion", model=trained, frames=8)), clips=4)  # seeded
    assert all(again[level][k] == pytest.approx(v, abs=1e-6) for level, row in plain.items() for k, v in row.items())


def test_noise_range_draws_only_inside_it(trained):
    from vidiff.train.trainer import Levels

    stage = make_stage(TrainConfig(stage="motion", model=trained, frames=8, min_noise=0.5, max_noise=0.7))
    assert stage.levels == Levels(0.5, 0.7)
    _, t, _ = stage.diff.noised(torch.zeros(256, 4, 1, 2, 2), torch.Generator().manual_seed(0), stage.levels)
    assert t.min() >= 500 and t.max() < 700 and t.max() > 680
    with pytest.raises(InvalidArgument, match="--max-noise: must be above --min-noise"):
        make_stage(TrainConfig(stage="motion", model=trained, min_noise=0.5, max_noise=0.5))


def test_resume_with_other_settings_is_refused(trained, tmp_path):
    """The checkpoint records the run's settings: a resume that contradicts one is refused naming it, the
    checkpoint untouched; one that agrees (or changes only where the weights go) continues."""
    from helpers import cli

    cfg = TrainConfig(stage="motion", model=trained, steps=4, batch_size=1, frames=8, out=tmp_path / "a", warmup=1,
                      checkpoint_every=2, lr=1e-3)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, on_step=lambda step, loss: (_ for _ in ()).throw(KeyboardInterrupt) if step == 2
              else None)  # fmt: skip
    saved = torch.load(cfg.checkpoint, weights_only=True)
    assert saved["step"] == 2 and saved["config"]["lr"] == 1e-3 and saved["config"]["trainable"] == ["motion_modules."]
    changes = ((dict(lr=2e-3), "--lr"), (dict(batch_size=2), "--batch-size"), (dict(steps=8), "--steps"),
               (dict(zero_snr=True), "--zero-snr"), (dict(trainable=("attn2.",)), "--trainable"))  # fmt: skip
    for change, flag in changes:
        with pytest.raises(InvalidArgument, match=f"^{flag}: .* was trained with"):
            train(replace(cfg, **change), progress=False)
    assert torch.load(cfg.checkpoint, weights_only=True)["step"] == 2
    base = ["train", "motion", "--model", trained, "--out", tmp_path / "a", "--steps", 4, "--batch-size", 1]
    assert cli(*base, "--frames", 8, "--warmup", 1, "--checkpoint-every", 2, "--lr", 2e-3) == 2
    assert len(train(replace(cfg, checkpoint_every=1, save_dtype="float16"), progress=False)) == 4


def test_cli_takes_the_recipe_options(trained, capsys):
    from helpers import cli

    code = cli("train", "motion", "--model", trained, "--warmup", 7, "--min-noise", 0.2, "--max-noise", 0.9,
               "--zero-snr", "--fresh-text-encoder", "--dry-run")  # fmt: skip
    out = capsys.readouterr().out
    assert code in (0, None)
    for text in ("warmup=7", "min_noise=0.2", "max_noise=0.9", "zero_snr=True", "fresh_text_encoder=True"):
        assert text in out
    assert cli("train", "image", "--model", trained, "--probe", 4, "--dry-run") == 2


def test_fresh_text_encoder_restarts_from_random_weights_and_is_exported(trained, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns(".train-*"))
    before = load_file(folder / "text_encoder" / "model.safetensors")
    run("motion", folder, 1, batch_size=1, frames=8, fresh_text_encoder=True)
    after = load_file(folder / "text_encoder" / "model.safetensors")
    assert set(before) == set(after)
    assert all(before[k].shape == after[k].shape for k in before)
    tokens = next(k for k in before if k.endswith("token_embedding.weight"))
    assert not torch.equal(before[tokens], after[tokens])


def test_zero_snr_is_refused_for_flow_matching(sd3_folder):
    with pytest.raises(InvalidArgument, match="--zero-snr: sd3's flow matching already ends at pure noise"):
        make_stage(TrainConfig(stage="motion", model=sd3_folder, zero_snr=True))
