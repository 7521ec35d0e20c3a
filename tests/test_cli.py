"""End to end through the CLI: real files written and read back; bad input gives one line and exit 2."""

from __future__ import annotations

import re
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from helpers import cli
from PIL import Image

from vidiff.export import FrameWriter

FAST = ["--frames", "8", "--steps", "2", "--height", "64", "--width", "48", "--seed", "1", "--quiet"]


@pytest.fixture
def model_args(sd1_folder, original_files):
    return ["--model", str(sd1_folder), "--motion-module", str(original_files["ckpt"])]


def generate(*args: str) -> int:
    return cli("generate", "a red circle moving right", *args)


def test_gif(tmp_path, model_args):
    out = tmp_path / "clip.gif"
    assert generate("-o", str(out), "--fps", "10", *model_args, *FAST) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 8
        assert gif.size == (48, 64)
        assert gif.info["duration"] == 100  # ms per frame at 10 fps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif"]  # no temporary left behind


def test_mp4(tmp_path, model_args):
    out = tmp_path / "clip.mp4"
    assert generate("-o", str(out), "--fps", "8", *model_args, *FAST) == 0
    reader = imageio.get_reader(out, format="FFMPEG")
    frames = [frame for frame in reader]
    assert reader.get_meta_data()["fps"] == 8
    reader.close()
    assert len(frames) == 8
    assert frames[0].shape == (64, 48, 3)


def test_webp_and_png_frames_hold_the_same_video(tmp_path, model_args):
    assert generate("-o", str(tmp_path / "clip.webp"), *model_args, *FAST) == 0
    assert generate("-o", f"{tmp_path / 'frames'}/", *model_args, *FAST) == 0
    pngs = sorted((tmp_path / "frames").iterdir())
    assert [p.name for p in pngs] == [f"frame_{i:05d}.png" for i in range(8)]
    with Image.open(tmp_path / "clip.webp") as webp:
        assert webp.n_frames == 8
        assert webp.size == (48, 64)
    first = np.asarray(Image.open(pngs[0]))
    assert first.shape == (64, 48, 3)


def test_existing_output_is_kept_without_overwrite(tmp_path, model_args, capsys):
    out = tmp_path / "clip.gif"
    out.write_bytes(b"precious")
    assert generate("-o", str(out), *model_args, *FAST) == 2
    assert out.read_bytes() == b"precious"
    assert "--output" in capsys.readouterr().err
    assert generate("-o", str(out), "--overwrite", *model_args, *FAST) == 0
    assert out.read_bytes()[:3] == b"GIF"


def test_png_folder_with_frames_needs_overwrite(tmp_path, model_args):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "frame_00000.png").write_bytes(b"old")
    assert generate("-o", str(folder), *model_args, *FAST) == 2
    assert (folder / "frame_00000.png").read_bytes() == b"old"
    assert generate("-o", str(folder), "--overwrite", *model_args, *FAST) == 0
    assert len(list(folder.glob("frame_*.png"))) == 8
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("args", "flag", "text"),
    [
        (["--model", "/nonexistent/model"], "--model", "no such folder"),
        (["--height", "60"], "--height", "multiple of 8"),
        (["--width", "0"], "--width", "must be >= 1"),
        (["--frames", "33", "--context-length", "33"], "--frames", "positional table of 32"),  # a window too long
        (["--scheduler", "heun-ish"], "--scheduler", "unknown scheduler"),
        (["--dtype", "float8"], "--dtype", "unknown dtype"),
        (["--dtype", "float16"], "--dtype", "not supported on cpu"),
        (["--device", "tpu"], "--device", "unknown device"),
        (["--beta-schedule", "cubic"], "--beta-schedule", "unknown beta schedule"),
        (["--steps", "0"], "--steps", ">= 1"),
        (["--frames", "x"], "--frames", "invalid int value"),
    ],
)
def test_bad_input_names_the_argument(tmp_path, model_args, capsys, args, flag, text):
    out = tmp_path / "clip.gif"
    assert generate("-o", str(out), *model_args, *FAST, *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("vidiff: error:")
    assert flag in err and text in err
    assert list(tmp_path.iterdir()) == []


def test_bad_model_folders_and_motion_modules(tmp_path, sd1_folder, capsys):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    fake_module = tmp_path / "fake.safetensors"
    from safetensors.torch import save_file

    save_file({"conv_in.weight": torch.zeros(1)}, fake_module)
    cases = [
        (["--model", str(not_a_model)], "--model", "not a diffusers Stable Diffusion folder"),
        (["--model", str(fake_module)], "--model", "not a Stable Diffusion checkpoint"),  # single files load now
        (
            ["--model", str(sd1_folder), "--motion-module", str(fake_module)],
            "--motion-module",
            "not an AnimateDiff",
        ),
        (
            ["--model", str(sd1_folder), "--motion-module", str(tmp_path / "nope.ckpt")],
            "--motion-module",
            "no such",
        ),
        (["--model", str(sd1_folder)], "--motion-module", "no motion module"),
    ]
    for args, flag, text in cases:
        assert generate("-o", str(tmp_path / "out.gif"), *args, *FAST) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and flag in err and text in err, err
    assert not (tmp_path / "out.gif").exists()


def test_unavailable_cuda_is_refused(tmp_path, model_args, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert generate("-o", str(tmp_path / "o.gif"), "--device", "cuda", *model_args, *FAST) == 2
    assert "--device: cuda is not available" in capsys.readouterr().err


def test_process_exit_code_and_single_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vidiff", "generate", "x", "--height", "7", "-o", str(tmp_path / "o.gif")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "vidiff: error: --height: must be a positive multiple of 8, got 7"


def test_writer_failure_leaves_nothing(tmp_path):
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    for name in ("a.gif", "a.mp4", "a.webp", "frames/"):
        with pytest.raises(RuntimeError), FrameWriter(f"{tmp_path}/{name}", fps=8) as writer:
            writer.append(frames)
            raise RuntimeError("decoder died mid-video")
    assert list(tmp_path.iterdir()) == []


def test_default_output_name_and_timings_line(tmp_path, model_args, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert generate(*model_args, *FAST) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "a-red-circle-moving-right-1.gif").is_file()
    assert "s/step" in out and "s/frame" in out and "load" in out
    process, weights, working = re.search(
        r"memory: process peak ([\d.]+) GiB .* model weights ([\d.]+) GiB \| denoise and decode ([\d.]+) GiB", out
    ).groups()
    assert float(process) >= float(weights) + float(working) and float(weights) > 0


def test_dtype_auto_is_bfloat16_where_the_cpu_has_it(tmp_path, model_args):
    from vidiff.loading import cpu_has_bf16, resolve_dtype

    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    for dtype in ("bfloat16", "float32"):
        assert generate("-o", str(tmp_path / f"{dtype}.gif"), "--dtype", dtype, *model_args, *FAST) == 0
        with Image.open(tmp_path / f"{dtype}.gif") as gif:
            assert gif.n_frames == 8


def test_uncached_hub_id_offline_is_one_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidiff",
            "generate",
            "x",
            "--model",
            "someone/sd15-video",
            "-o",
            str(tmp_path / "o.gif"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("vidiff: error: --model: 'someone/sd15-video' is not a local folder")


def test_pab_flags(tmp_path, model_args, capsys):
    assert generate("-o", str(tmp_path / "pab.gif"), "--pab", "--pab-cross", "4", *model_args, *FAST) == 0
    assert generate("-o", str(tmp_path / "bad.gif"), "--pab", "--pab-spatial", "0", *model_args, *FAST) == 2
    assert "--pab-spatial: must be >= 1" in capsys.readouterr().err
