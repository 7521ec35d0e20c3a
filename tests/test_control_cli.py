"""Steering through the CLI: bad input is one line naming the argument and exit 2 before any model loads
(`--dry-run` proves it); the canny processor matches OpenCV's edge map; a control job renders and its
ControlNet is loaded once across a batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import cli
from PIL import Image
from safetensors.torch import save_file
from test_control import save_frames

from vidiff.tiny import tiny_controlnet, tiny_sparsectrl


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("vidiff: error: ")
    return err[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_control")
    tiny_controlnet().save_pretrained(root / "net")
    tiny_sparsectrl(rgb=True).save_pretrained(root / "sparse")
    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    save_frames(root / "ctrl8", frames)
    Image.fromarray(frames[0]).save(root / "still.png")
    sdxl = {"control_model.label_emb.0.0.weight": torch.zeros(4, 4), "control_model.input_hint_block.0.weight":
            torch.zeros(16, 3, 3, 3)}  # fmt: skip
    save_file(sdxl, root / "controlnet_sdxl.safetensors")
    (root / "ip.safetensors").write_bytes(b"")  # its encoder is missing: refused before the file is read
    (root / "ip2" / "image_encoder").mkdir(parents=True)
    (root / "ip2" / "ip.safetensors").write_bytes(b"")
    (root / "sd3").mkdir()
    (root / "sd3" / "config.json").write_text(json.dumps({"_class_name": "SD3ControlNetModel"}))
    return root


def bad_cases(root, marker):
    net, sparse, ctrl, still = root / "net", root / "sparse", root / "ctrl8", root / "still.png"
    return [
        (["--control-nets", str(root / "controlnet_sdxl.safetensors"), "--image-seeds", still], "SDXL ControlNet"),
        (["--control-nets", str(root / "sd3"), "--image-seeds", still], "Stable Diffusion 3 ControlNet"),
        (["--control-nets", net, "--image-seeds", ctrl, "--frames", "12"], "ctrl8 has 8 frames; --frames is 12"),
        (["--control-nets", f"{sparse};frames=0,16", "--image-seeds", ctrl, "--frames", "16"], "outside a 16-frame"),
        (["--control-nets", f"{sparse};frames=0,4,5", "--image-seeds", root / "two"], "has 2 frames; its frames="),
        (["--control-nets", f"{net}, {net}", "--image-seeds", ctrl], "1 control sources for 2 ControlNets"),
        (["--control-nets", f"{net};strength=2", "--image-seeds", ctrl], "unknown key 'strength'"),
        (["--control-nets", f"{net};start=0.8;end=0.2", "--image-seeds", ctrl], "must be below end"),
        (["--control-nets", f"{net};frames=0", "--image-seeds", still], "frames= places SparseCtrl images"),
        (["--control-nets", net], "needs control images"),
        (["--image-seeds", f"{still};control={still}"], "no --control-nets"),
        (["--control-nets", marker, "--image-seeds", still], "needs code to unpickle"),
        (["--control-nets", net, "--image-seeds", ctrl, "--control-image-processors", "openpose"], "detector's"),
        (["--control-nets", net, "--image-seeds", ctrl, "--control-image-processors", "canny", "none"], "2 processors"),
        (["--control-nets", net, "--image-seeds", ctrl, "--control-image-processors", "canny;lower=9;upper=2"],
         "lower <= upper"),
        (["--ip-adapters", root / "ip.safetensors", "--image-seeds", f"adapter: {still}"], "--image-encoder"),
        (["--image-seeds", f"adapter: {still}"], "no --ip-adapters"),
        (["--ip-adapters", f"{root / 'ip2' / 'ip.safetensors'};scale=0:0.2,20:1", "--image-seeds", f"adapter: {still}"],
         "outside a 16-frame video"),
    ]  # fmt: skip


def test_bad_control_input_is_one_line_before_loading(files, tmp_path, capsys):
    from conftest import RunsCode

    save_frames(files / "two", np.zeros((2, 64, 64, 3), dtype=np.uint8))
    ran = tmp_path / "ran"
    torch.save({"x": RunsCode(ran)}, tmp_path / "evil.pth")
    for args, message in bad_cases(files, tmp_path / "evil.pth"):
        code = cli("generate", "a cat", "--dry-run", "-o", tmp_path / "out.gif", *args)
        line = error_line(capsys)
        assert code == 2 and message in line, (args, line)
        assert any(f in line for f in ("--control", "--image-seeds", "--frames", "--ip-adapters", "--image-encoder"))
    assert not ran.exists()  # the pickle was refused, its code never ran


def test_canny_matches_opencv_on_a_fixed_image():
    """A drawn rectangle and disc: the processor's map is the ControlNet annotator's (OpenCV's Canny on the RGB
    image, thresholds 100/200), white on black in three channels; the edge count (156) pins the reference."""
    import cv2

    from vidiff.control import Processor
    from vidiff.processors import process

    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[12:40, 10:30] = (200, 30, 30)
    yy, xx = np.mgrid[:64, :64]
    image[(yy - 40) ** 2 + (xx - 44) ** 2 < 100] = (20, 220, 90)
    edges = process(image[None], Processor.parse("canny"))[0]
    reference = cv2.Canny(image, 100, 200)
    assert edges.shape == (64, 64, 3) and (edges[..., 0] == edges[..., 2]).all()
    assert np.array_equal(edges[..., 0], reference)
    assert set(np.unique(edges)) == {0, 255}
    assert (edges[..., 0] > 0).sum() == 156  # the two outlines
    low = process(image[None], Processor.parse("canny;lower=10;upper=20"))[0]
    assert (low > 0).sum() >= (edges > 0).sum()


def test_split_run_with_a_controlnet_equals_the_unsplit_one(sd1_folder, adapter_folder, files, tmp_path):
    from vidiff.latents_io import load_latents

    base = ["generate", "a cat", "--model", sd1_folder, "--motion-module", adapter_folder, "--dtype", "float32",
            "--groupnorm", "diffusers", "--control-nets", f"{files / 'net'};scale=0.9", "--frames", "8",
            "--height", "64", "--width", "64", "--steps", "6", "--seed", "3", "--quiet"]  # fmt: skip
    ctrl = str(files / "ctrl8")
    assert cli(*base, "--image-seeds", ctrl, "-o", tmp_path / "whole.safetensors") == 0
    assert cli(*base, "--image-seeds", ctrl, "--denoising-end", "0.5", "-o", tmp_path / "half.safetensors") == 0
    seeds = f"{ctrl};latents={tmp_path / 'half.safetensors'}"
    assert cli(*base, "--image-seeds", seeds, "--denoising-start", "0.5", "-o", tmp_path / "rest.safetensors") == 0
    whole, half, rest = (load_latents(tmp_path / f"{n}.safetensors").latents for n in ("whole", "half", "rest"))
    assert (rest - whole).abs().max().item() <= 1e-5  # as the split tests without a ControlNet
    assert (half - whole).abs().max().item() > 1e-3


def test_a_batch_loads_its_controlnet_once_and_jobs_round_trip(sd1_folder, adapter_folder, files, tmp_path):
    from vidiff import GenerationRequest, RenderJob
    from vidiff.control import ControlOptions
    from vidiff.renderer import Renderer
    from vidiff.settings import LoadSettings

    load = LoadSettings(str(sd1_folder), str(adapter_folder), dtype="float32")
    control = ControlOptions(nets=(f"{files / 'net'};scale=0.5",), processors=("canny",))
    renderer, models = Renderer(), []
    for seed in (1, 2):
        request = GenerationRequest("a cat", frames=8, height=64, width=64, steps=2, seed=seed, control=control)
        job = RenderJob(request, load, image_seeds=str(files / "ctrl8"), output=str(tmp_path / f"{seed}.gif"))
        assert RenderJob.from_json(job.to_json()) == job
        result = renderer.render(job)
        assert result.frames_written == 8
        models.append(next(iter(renderer.pipe.control_models.values())))
    assert renderer.loads == 1 and models[0] is models[1] and len(renderer.pipe.control_models) == 1


def test_preflight_counts_controlnet_weights_and_residuals(sd1_folder, adapter_folder, files):
    from vidiff import GenerationRequest, RenderJob
    from vidiff.control import ControlOptions
    from vidiff.renderer import Renderer
    from vidiff.settings import LoadSettings

    load = LoadSettings(str(sd1_folder), str(adapter_folder), dtype="float32")
    plain = GenerationRequest("a cat", frames=8, height=64, width=64)
    steered = GenerationRequest("a cat", frames=8, height=64, width=64,
                                control=ControlOptions(nets=(str(files / "net"),) * 2))  # fmt: skip
    a = Renderer().preflight(RenderJob(plain, load, output="a.gif"))
    b = Renderer().preflight(RenderJob(steered, load, image_seeds=f"{files / 'ctrl8'}, {files / 'ctrl8'}",
                                       output="b.gif"))  # fmt: skip
    params = sum(p.numel() for p in tiny_controlnet().parameters())
    assert b.weights - a.weights == 2 * params * 4  # two ControlNets' float32 weights
    assert b.denoise > a.denoise and b.decode == a.decode
