"""Original AnimateDiff single files <-> diffusers MotionAdapter, version detection, safe loading."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import RunsCode, save_original
from diffusers import MotionAdapter
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
from safetensors.torch import save_file

from vidiff.errors import LoadError
from vidiff.motion import detect_version, load_motion_adapter, to_original_keys
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
