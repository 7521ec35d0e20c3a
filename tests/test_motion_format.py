"""Original AnimateDiff single files <-> diffusers MotionAdapter, version detection, safe loading."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import RunsCode, save_original
from diffusers import MotionAdapter, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from safetensors.torch import save_file

from vidiff.errors import LoadError
from vidiff.motion import detect_version, load_motion_adapter, load_motion_module, to_original_keys
from vidiff.motion.animatediff_format import adapter_config
from vidiff.tensor_files import read_state_dict
from vidiff.tiny import tiny_motion_adapter


def test_inverse_conversion_round_trips_through_diffusers():
    state = tiny_motion_adapter().state_dict()
    back = convert_animatediff_checkpoint_to_diffusers(to_original_keys(state))
    expected = {k: v for k, v in state.items() if not k.endswith(".pos_embed.pe")}  # diffusers drops the sinusoid
    assert back.keys() == expected.keys()
    assert all(torch.equal(back[k], expected[k]) for k in expected)


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_original_file_loads_to_the_same_weights(adapter_folder, original_files, fmt):
    reference = MotionAdapter.from_pretrained(adapter_folder)
    loaded = load_motion_adapter(original_files[fmt], torch.float32)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(reference.config)
    want, got = reference.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert not any(p.is_meta for p in loaded.parameters())


@pytest.mark.parametrize(
    ("max_frames", "mid_block", "version"), [(24, False, "v1"), (32, True, "v2"), (32, False, "v3")]
)
def test_version_and_config_are_read_off_the_keys(tmp_path, max_frames, mid_block, version):
    adapter = tiny_motion_adapter(max_frames=max_frames, mid_block=mid_block)
    path = save_original(adapter, tmp_path, f"mm_{version}")["safetensors"]
    state = read_state_dict(path, "--motion-module")
    assert detect_version(state) == version
    config = adapter_config(state)
    assert config["motion_max_seq_length"] == max_frames
    assert config["use_motion_mid_block"] is mid_block
    assert config["block_out_channels"] == list(adapter.config.block_out_channels)
    assert config["motion_layers_per_block"] == adapter.config.motion_layers_per_block


def test_a_file_that_is_not_a_motion_module_is_refused(tmp_path):
    path = tmp_path / "unet.safetensors"
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, path)
    with pytest.raises(LoadError, match="not an AnimateDiff motion module") as err:
        load_motion_adapter(path, torch.float32)
    assert err.value.argument == "--motion-module"


def test_garbage_and_missing_files_are_refused(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(LoadError, match="not a readable torch checkpoint"):
        load_motion_adapter(junk, torch.float32)
    with pytest.raises(LoadError, match="no such file"):
        load_motion_adapter(tmp_path / "missing.ckpt", torch.float32)
    with pytest.raises(LoadError, match="not a diffusers MotionAdapter folder"):
        load_motion_adapter(tmp_path, torch.float32)


def test_a_pickle_that_needs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:  # a bare pickle, as old checkpoints are
        pickle.dump({"down_blocks.0.motion_modules.0.x": RunsCode(marker)}, f, protocol=2)
    torch.save({"payload": RunsCode(marker)}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(LoadError, match="needs code to unpickle"):
            load_motion_adapter(p, torch.float32)
    assert not marker.exists()


def _layouts(adapter: MotionAdapter, folder) -> dict[str, tuple]:
    """One module written in every released layout: name -> (path, expected version)."""
    original = {k: v.clone().contiguous() for k, v in to_original_keys(adapter.state_dict()).items()}
    no_table = {k: v for k, v in original.items() if not k.endswith("pos_encoder.pe")}
    spatial = {
        "down_blocks.0.resnets.0.conv1.weight": torch.randn(32, 32, 3, 3),
        "conv_in.weight": torch.randn(32, 4, 3, 3),
    }
    files = {
        "original.ckpt": original,
        "no_table.safetensors": no_table,  # the original code's current layout: the table is not saved
        "training.ckpt": {"epoch": 3, "global_step": 1200, "state_dict": original},
        "module_prefix.ckpt": {f"module.{k}": v for k, v in original.items()},
        "whole_unet.safetensors": original | spatial,
        "diffusers_keys.safetensors": {k: v.clone().contiguous() for k, v in adapter.state_dict().items()},
        "fp16.safetensors": {k: v.half() for k, v in original.items()},
    }
    for name, state in files.items():
        if name.endswith(".ckpt"):
            torch.save(state, folder / name)
        else:
            save_file(state, folder / name)
    return {name: folder / name for name in files}


@pytest.mark.parametrize(
    ("max_frames", "mid_block", "version"), [(32, True, "v2"), (32, False, "v3"), (24, False, "v1")]
)
def test_every_released_layout_loads_to_the_same_weights(tmp_path, max_frames, mid_block, version):
    torch.manual_seed(3)
    adapter = tiny_motion_adapter(max_frames=max_frames, mid_block=mid_block)
    want = {k: v for k, v in adapter.state_dict().items() if not k.endswith(".pos_embed.pe")}
    for name, path in _layouts(adapter, tmp_path).items():
        module = load_motion_module(path, torch.float32)
        # without the table a v1 file cannot be told from v3: it is taken as the current code's v3, 32 frames
        expected = "v3" if name == "no_table.safetensors" and version == "v1" else version
        assert module.version == expected, name
        got = module.adapter.state_dict()
        for key, value in want.items():
            value = value.half().float() if name.startswith("fp16") else value
            assert torch.equal(got[key], value), (name, key)


def test_v3_with_its_domain_adapter_is_v3_and_the_adapter_is_applied(tmp_path, sd1_folder):
    from vidiff import VideoPipeline

    torch.manual_seed(4)
    adapter = tiny_motion_adapter(mid_block=False)
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    down, up = torch.randn(4, 32), torch.randn(32, 4)
    lora = {f"{layer}.processor.to_q_lora.down.weight": down, f"{layer}.processor.to_q_lora.up.weight": up}
    state = {k: v.clone().contiguous() for k, v in to_original_keys(adapter.state_dict()).items()} | lora
    save_file(state, tmp_path / "v3_with_adapter.safetensors")
    module = load_motion_module(tmp_path / "v3_with_adapter.safetensors", torch.float32)
    assert module.version == "v3" and module.domain_adapter.keys() == lora.keys()
    assert module.describe() == "v3, original layout; domain-adapter LoRA (1 layers)"
    plain = VideoPipeline.from_pretrained(
        str(sd1_folder), str(tmp_path / "v3_with_adapter.safetensors"), dtype="float32"
    )
    unet2d = UNet2DConditionModel.from_pretrained(sd1_folder / "unet")
    want = unet2d.get_submodule(f"{layer}.to_q").weight + up @ down
    got = plain.denoiser.module.get_submodule(f"{layer}.to_q").weight
    assert torch.allclose(got, want, atol=1e-6)


def _domain_adapter(seed: int) -> dict[str, torch.Tensor]:
    """A v3-style domain-adapter LoRA in AnimateDiff's layout on every spatial attention, the mid block's too."""
    torch.manual_seed(seed)
    lora = {}
    for block, width in (("down_blocks.0", 32), ("mid_block", 64)):  # the tiny SD 1.x UNet's widths
        for i in (1, 2):
            for proj in ("to_q", "to_out"):
                layer = f"{block}.attentions.0.transformer_blocks.0.attn{i}.processor.{proj}_lora"
                lora[f"{layer}.down.weight"] = 0.1 * torch.randn(4, width)
                lora[f"{layer}.up.weight"] = 0.1 * torch.randn(width, 4)
    return lora


def test_a_bundled_adapter_on_the_mid_block_cannot_make_v3_look_like_v2(tmp_path, sd1_folder):
    """The version is read off the motion modules' own keys: a v3 file whose domain adapter touches the mid
    block's attention stays v3 (no mid-block motion module) and keeps its adapter, equal to passing the adapter
    with --lora beside the plain module."""
    from vidiff import VideoPipeline

    torch.manual_seed(5)
    motion = {
        k: v.clone().contiguous()
        for k, v in to_original_keys(tiny_motion_adapter(mid_block=False).state_dict()).items()
    }
    lora = _domain_adapter(6)
    save_file(motion | lora, tmp_path / "v3_bundled.safetensors")
    save_file(motion, tmp_path / "v3.safetensors")
    save_file(lora, tmp_path / "v3_adapter.safetensors")
    assert detect_version(motion | lora) == "v3"
    bundled = VideoPipeline.from_pretrained(str(sd1_folder), str(tmp_path / "v3_bundled.safetensors"), dtype="float32")
    separate = VideoPipeline.from_pretrained(str(sd1_folder), str(tmp_path / "v3.safetensors"), dtype="float32",
                                             loras=(str(tmp_path / "v3_adapter.safetensors"),))  # fmt: skip
    assert "v3" in bundled.notes[0] and "domain-adapter LoRA (8 layers)" in bundled.notes[0]
    assert not any(".motion_modules." in n for n, _ in bundled.denoiser.module.mid_block.named_parameters(prefix="m"))
    settings = dict(frames=4, height=64, width=64, steps=2, seed=3, progress=False, output_type="latent")
    a, b = bundled("a cat", **settings).latents, separate("a cat", **settings).latents
    assert (a - b).abs().max().item() <= 1e-5


def test_a_bundled_lora_in_another_layout_is_refused_not_dropped(tmp_path):
    motion = {
        k: v.clone().contiguous()
        for k, v in to_original_keys(tiny_motion_adapter(mid_block=False).state_dict()).items()
    }
    peft = {"mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32)}
    save_file(motion | peft, tmp_path / "v3_peft.safetensors")
    assert detect_version(motion | peft) == "v3"
    with pytest.raises(LoadError, match="bundles a LoRA in another layout"):
        load_motion_module(tmp_path / "v3_peft.safetensors", torch.float32)
