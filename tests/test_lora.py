"""LoRAs in the layouts users have: the same video as diffusers' load_lora_weights, fused; bad files refused."""

from __future__ import annotations

import pytest
import torch
from conftest import RunsCode
from diffusers import AnimateDiffPipeline, MotionAdapter
from helpers import cli
from safetensors.torch import save_file

from vidiff import VideoPipeline
from vidiff.motion import to_original_keys

SETTINGS = dict(frames=4, height=64, width=64, steps=3)
LORA_TOL = 1e-4  # fused (vidiff) vs unfused (diffusers) LoRA weights, float32 latents of magnitude ~5
RANK = 4


def _pair(out_features: int, in_features: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(RANK, in_features, generator=g) * 0.3, torch.randn(out_features, RANK, generator=g) * 0.3


def kohya_lora(pipe: VideoPipeline) -> dict[str, torch.Tensor]:
    """Random low-rank weights on every spatial attention projection and text-encoder attention, kohya-named."""
    g = torch.Generator().manual_seed(11)
    state = {}
    targets = [("lora_unet_", pipe.denoiser.module, r) for r in ("attn1.to_q", "attn2.to_k", "attn1.to_out.0")]
    text = ("self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj")  # kohya trains all four; diffusers needs out
    targets += [("lora_te_", pipe.prompt_encoder.text_encoder, r) for r in text]
    for prefix, module, suffix in targets:
        for name, layer in module.named_modules():
            if name.endswith(suffix) and "motion_modules" not in name:
                key = prefix + name.replace(".", "_")
                down, up = _pair(layer.out_features, layer.in_features, g)
                state |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up}
                state[f"{key}.alpha"] = torch.tensor(RANK / 2.0)  # scales the update by alpha / rank
    return state


def motion_lora(adapter: MotionAdapter) -> dict[str, torch.Tensor]:
    """A motion LoRA in the diffusers layout (what diffusers' conversion script writes): attention processors."""
    g = torch.Generator().manual_seed(12)
    state = {}
    for name, layer in adapter.named_modules():
        for proj, path in (("to_q", "to_q"), ("to_v", "to_v"), ("to_out", "to_out.0")):
            if name.endswith(f"attn1.{path}"):
                down, up = _pair(layer.out_features, layer.in_features, g)
                base = name.removesuffix(f".{path}")
                state |= {f"unet.{base}.processor.{proj}_lora.down.weight": down}
                state |= {f"unet.{base}.processor.{proj}_lora.up.weight": up}
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory, motion_pipe, adapter_folder) -> dict:
    folder = tmp_path_factory.mktemp("loras")
    save_file(kohya_lora(motion_pipe), folder / "style.safetensors")
    motion = motion_lora(MotionAdapter.from_pretrained(adapter_folder))
    save_file(motion, folder / "pan_diffusers.safetensors")
    original = {}  # the same motion LoRA in AnimateDiff's own layout (v2_lora_*.ckpt)
    for key, value in motion.items():
        layer, rest = key.removeprefix("unet.").split(".processor.")
        module_key = next(iter(to_original_keys({f"{layer}.to_q.weight": value})))  # diffusers -> original path
        original[f"{module_key.removesuffix('.to_q.weight')}.processor.{rest}"] = value
    torch.save(original, folder / "v2_lora_Pan.ckpt")
    return {"style": folder / "style.safetensors", "motion": folder / "pan_diffusers.safetensors",
            "original": folder / "v2_lora_Pan.ckpt"}  # fmt: skip


def reference(sd1_folder, adapter_folder, lora, scale) -> torch.Tensor:
    pipe = AnimateDiffPipeline.from_pretrained(sd1_folder, motion_adapter=MotionAdapter.from_pretrained(adapter_folder))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora), adapter_name="x")
    pipe.set_adapters(["x"], [scale])
    out = pipe("a cat", num_frames=4, height=64, width=64, num_inference_steps=3, output_type="latent",
               generator=torch.Generator("cpu").manual_seed(1))  # fmt: skip
    return out.frames  # (1, C, F, h, w)


def ours(sd1_folder, adapter_folder, **loras) -> torch.Tensor:
    pipe = VideoPipeline.from_pretrained(str(sd1_folder), str(adapter_folder), dtype="float32", groupnorm="diffusers",
                                         **loras)  # fmt: skip
    return pipe("a cat", seed=1, output_type="latent", progress=False, **SETTINGS).latents


def test_kohya_lora_equals_diffusers(sd1_folder, adapter_folder, files):
    plain = ours(sd1_folder, adapter_folder)
    got = ours(sd1_folder, adapter_folder, loras=[f"{files['style']}:0.7"])
    want = reference(sd1_folder, adapter_folder, files["style"], 0.7)
    assert (got - want).abs().max() <= LORA_TOL
    assert (got - plain).abs().max() > 100 * LORA_TOL  # the LoRA did something


def test_motion_lora_equals_diffusers_and_its_original_layout(sd1_folder, adapter_folder, files):
    got = ours(sd1_folder, adapter_folder, motion_loras=[f"{files['motion']}:0.8"])
    want = reference(sd1_folder, adapter_folder, files["motion"], 0.8)
    assert (got - want).abs().max() <= LORA_TOL
    original = ours(sd1_folder, adapter_folder, motion_loras=[f"{files['original']}:0.8"])
    assert (original - got).abs().max() <= LORA_TOL


def test_fused_weights_leave_no_lora_layers(sd1_folder, adapter_folder, files):
    from peft.tuners.tuners_utils import BaseTunerLayer

    loras = {"loras": [str(files["style"])], "motion_loras": [str(files["original"])]}
    pipe = VideoPipeline.from_pretrained(str(sd1_folder), str(adapter_folder), dtype="float32", **loras)
    modules = [*pipe.denoiser.module.modules(), *pipe.prompt_encoder.text_encoder.modules()]
    assert not any(isinstance(m, BaseTunerLayer) for m in modules)  # fused into the weights, peft layers gone
    assert any("style.safetensors at 1" in n for n in pipe.notes) and any("AnimateDiff layout" in n for n in pipe.notes)


def test_bad_loras_are_one_line(tmp_path, sd1_folder, original_files, files, capsys):
    save_file(
        {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 32)},
        tmp_path / "xl.safetensors",
    )
    save_file({"conv_in.weight": torch.zeros(1)}, tmp_path / "not_lora.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(files["style"].read_bytes()[:200])
    marker = tmp_path / "ran"
    torch.save({"lora_unet_x.lora_down.weight": RunsCode(marker)}, tmp_path / "evil.ckpt")
    model = ["--model", str(sd1_folder), "--motion-module", str(original_files["ckpt"])]
    for lora, text in [
        (f"{tmp_path / 'xl.safetensors'}", "is a LoRA for SDXL"),
        (f"{tmp_path / 'not_lora.safetensors'}", "holds no LoRA weights"),
        (f"{files['style']}:strong", "scale 'strong'"),
        (f"{files['style']}:1e999", "not a finite number"),
        (f"{tmp_path / 'cut.safetensors'}", "not a readable safetensors file"),
        (f"{tmp_path / 'evil.ckpt'}", "needs code to unpickle and was refused"),
    ]:
        assert (
            cli("generate", "x", *model, "--lora", lora, "--steps", "1", "--frames", "2", "-o", tmp_path / "o.gif") == 2
        )
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--lora" in err and text in err, err
    assert not (tmp_path / "o.gif").exists() and not marker.exists()
