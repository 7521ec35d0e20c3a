"""Make `sdxl_original.safetensors`: one forward of the original AnimateDiff-SDXL and Hotshot-XL UNets.

Run in a separate environment holding the original code (not vidiff's): torch 2.13.0 CPU, diffusers 0.21.4,
huggingface_hub 0.16.4, transformers 4.34.0, einops; `guoyww/AnimateDiff` at its `sdxl` branch (8d19107) and
`hotshotco/Hotshot-XL` (cc01f7f) checked out side by side. WEIGHTS is what `test_fidelity_sdxl.py`'s
`save_reference_model` writes for 'sdxl' and 'hotshot' (plus `inputs.safetensors` from `reference_inputs`):

    python sdxl_reference.py ANIMATEDIFF_SDXL_CHECKOUT HOTSHOT_CHECKOUT WEIGHTS OUTPUT
"""

import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

BLOCKS = {  # as both repositories' from_pretrained_2d / from_pretrained_spatial set them
    "down_block_types": ["DownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D"],
    "up_block_types": ["CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"],
    "mid_block_type": "UNetMidBlock3DCrossAttn",
}
ANIMATEDIFF_SDXL = {  # configs/inference/inference.yaml of the sdxl branch
    "use_motion_module": True,
    "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": False,
    "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_attention_heads": 8,
        "num_transformer_block": 1,
        "attention_block_types": ["Temporal_Self", "Temporal_Self"],
        "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 32,
        "temporal_attention_dim_div": 1,
    },
}


def build(cls, folder: Path, motion_file: Path, extra: dict):
    config = json.loads((folder / "model" / "unet" / "config.json").read_text()) | BLOCKS
    model = cls.from_config(config, **extra)
    state = load_file(folder / "model" / "unet" / "diffusion_pytorch_model.safetensors") | load_file(motion_file)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing[:3], unexpected[:3])
    return model.eval()


def forward(model, inputs: dict) -> torch.Tensor:
    added = {"text_embeds": inputs["pooled"], "time_ids": inputs["time_ids"]}
    t = inputs["timestep"].reshape(1)  # (B,): AnimateDiff-SDXL's UNet repeats it per frame with einops
    with torch.no_grad():
        return model(inputs["latents"], t, inputs["embeds"], added_cond_kwargs=added).sample


def main(animatediff: str, hotshot: str, weights: str, output: str) -> None:
    weights = Path(weights)
    inputs = load_file(weights / "inputs.safetensors")
    import diffusers.loaders  # noqa: F401 (imports transformers before the stand-in below, which it would probe)

    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))  # imported there, unused by the UNet
    sys.path.insert(0, animatediff)
    from animatediff.models.unet import UNet3DConditionModel as AnimateDiffUNet

    sdxl = build(AnimateDiffUNet, weights / "sdxl", weights / "sdxl" / "mm_sdxl_v10_beta.safetensors", ANIMATEDIFF_SDXL)
    out = {"out_sdxl": forward(sdxl, inputs)}
    sys.path.insert(0, hotshot)
    from hotshot_xl.models.unet import UNet3DConditionModel as HotshotUNet

    hsxl = build(HotshotUNet, weights / "hotshot", weights / "hotshot" / "hsxl_temporal_layers.safetensors", {})
    out["out_hotshot"] = forward(hsxl, inputs)
    save_file({**inputs, **{k: v.contiguous() for k, v in out.items()}}, output)


if __name__ == "__main__":
    main(*sys.argv[1:5])
