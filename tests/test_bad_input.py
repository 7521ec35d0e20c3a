"""Bad input through the CLI and the Python API: one line naming the argument, exit 2, nothing written, and
every check that needs no model made before torch loads. One test per kind of bad input seen in the field."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import cli
from PIL import Image

from vidiff import GenerationRequest, InvalidArgument, RenderJob

DEMO = ["--steps", "2", "--frames", "8", "--seed", "3", "--quiet"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, never a traceback
    assert err[0].startswith("vidiff: error: ")
    return err[0]


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--fps", "nan"], "--fps"),
        (["--fps", "inf"], "--fps"),
        (["--fps", "0"], "--fps"),
        (["--guidance-scale", "nan"], "--guidance-scale"),
        (["--pab-range", "800", "100"], "--pab-range"),  # inverted, even without --pab
        (["--frame-noise", "-1"], "--frame-noise"),
        (["--decode-chunk-size", "0"], "--decode-chunk-size"),
        (["--denoising-start", "0.5"], "--denoising-start"),  # no latents to start from
        (["--eta", "nan"], "--eta"),
        (["--motion-scale", "inf"], "--motion-scale"),
        (["--context-overlap", "-2"], "--context-overlap"),
        (["--free-init", "0"], "--free-init"),
        (["--seed", "-5"], "--seed"),
        (["--prompt-travel", "x: a cat"], "--prompt-travel"),
        (["--lora", "missing.safetensors:0.5"], "--lora"),
        (["--lora", "x.safetensors:nan"], "--lora"),
        (["--dtype", "int8"], "--dtype"),
        (["--device", "tpu"], "--device"),
        (["--scheduler", "nope"], "--scheduler"),
        (["--image-seeds", "latents: missing.pt"], "--image-seeds"),
        (["--motion-module", "missing/"], "--motion-module"),
        (["--loop", "--context-schedule", "static"], "--loop"),
        (["--prompt-travel", "0: a cat | 4: a dog | 0: a bird"], "--prompt-travel"),
    ],
)
def test_refused_before_any_model_loads(tmp_path, capsys, monkeypatch, args, flag):
    monkeypatch.chdir(tmp_path)
    assert cli("generate", "a red circle", "-o", "out.gif", *DEMO, *args) == 2
    assert flag in error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # nothing written
    # The Python API raises the same error from the job's own validation, no model involved.
    from vidiff.cli import build_parser
    from vidiff.options import job_from_args

    with pytest.raises(InvalidArgument) as e:
        job_from_args(build_parser().parse_args(["generate", "a red circle", "-o", "out.gif", *args])).validate()
    assert e.value.argument == flag


@pytest.mark.parametrize("output", ["", "out.xyz"])
def test_bad_output_names(tmp_path, capsys, monkeypatch, output):
    monkeypatch.chdir(tmp_path)
    assert cli("generate", "a red circle", "-o", output, *DEMO) == 2
    assert "--output" in error_line(capsys)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a folder no file can be created in")
def test_unwritable_output_folder_is_refused_before_loading(capsys):
    """/proc refuses new files even to root, as a read-only mount would."""
    assert cli("generate", "a red circle", "-o", "/proc/out.gif", *DEMO) == 2
    assert "not writable" in error_line(capsys)
    with pytest.raises(InvalidArgument, match="not writable"):
        RenderJob(GenerationRequest("a red circle"), output="/proc/out.gif").validate()


def test_steps_beyond_the_schedule(tmp_path, capsys):
    assert cli("generate", "a red circle", "-o", tmp_path / "o.gif", "--steps", "1001", "--quiet") == 2
    assert "--steps" in error_line(capsys) and not any(tmp_path.iterdir())


def test_a_huge_size_is_refused_by_the_memory_preflight(tmp_path, capsys):
    assert cli("generate", "a red circle", "-o", tmp_path / "o.gif", "--height", "100000", "--width", "100000") == 2
    line = error_line(capsys)
    assert "--force" in line and "GiB is free" in line and not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "content", [[torch.zeros(1, 4, 2, 8, 8)], 7, {"a": 1}, torch.full((1, 4, 2, 8, 8), float("nan"))]
)
def test_latents_files_holding_something_else(tmp_path, capsys, content):
    torch.save(content, tmp_path / "f.pt")
    assert cli("decode", tmp_path / "f.pt", "-o", tmp_path / "o.gif") == 2
    assert "latents" in error_line(capsys)
    args = ["-o", tmp_path / "o.gif", "--image-seeds", f"latents: {tmp_path / 'f.pt'}", *DEMO]
    assert cli("generate", "a red circle", *args) == 2
    assert "--image-seeds" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pt"]


@pytest.mark.parametrize(
    "flag, name", [("--model", "x.safetensors"), ("--motion-module", "x.safetensors"), ("--vae", "x.safetensors"),
                   ("--lora", "x.safetensors"), ("--resume", "x.safetensors"), ("--image-seeds", "x.mp4"),
                   ("--image-seeds", "x.png"), ("--prompt-travel", "x.json")],
)  # fmt: skip
def test_files_that_do_not_hold_what_they_must(tmp_path, capsys, flag, name):
    """Garbage under each name a user may give: one line naming the option, nothing written (the
    preflight reads weight headers first and must not choke on them either)."""
    (tmp_path / name).write_bytes(b"\x10" * 8 + b"not what it claims to be" * 40)
    out = tmp_path / "out.gif"
    assert cli("generate", "a red circle", "-o", out, flag, tmp_path / name, *DEMO) == 2
    assert flag in error_line(capsys) and not out.exists()


def test_help_and_argument_errors_do_not_import_torch():
    """What makes `vidiff --help` and argument errors come back at once: no heavy library is imported."""
    code = (
        "import sys\nfrom vidiff.cli import main\n"
        "assert main(['generate', 'x', '--fps', 'nan']) == 2\n"
        "assert main(['train', 'motion', '--model', '.', '--steps', '0']) == 2\n"
        "assert main(['decode', 'missing.pt', '-o', 'x.gif']) == 2\n"
        "assert main(['generate', 'x', '--dry-run']) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers'))\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "vidiff", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "generate" in proc.stdout


def test_overwriting_a_frames_folder_leaves_no_old_frames(tmp_path):
    folder = tmp_path / "frames"
    assert cli("generate", "a red circle", "-o", f"{folder}/", "--frames", "12", *DEMO[:2], "--quiet") == 0
    assert len(list(folder.glob("frame_*.png"))) == 12
    assert cli("generate", "a red circle", "-o", f"{folder}/", "--frames", "8", "--overwrite", *DEMO[:2]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"frame_{i:05d}.png" for i in range(8)]


def test_eval_demo_takes_no_mode_and_uses_what_it_takes(capsys):
    assert cli("eval-demo", "--mode", "sequential") == 2  # --modes chooses the modes
    assert "--mode" in error_line(capsys)
    assert cli("eval-demo", "--frame-noise", "-1") == 2
    assert "--frame-noise" in error_line(capsys)
    # --frame-batch reaches the sequential pipeline (it was dropped before): 0 is refused there.
    assert cli("eval-demo", "--modes", "sequential", "--frame-batch", "0", "--limit", "1", "--seeds", "1") == 2
    assert "--frame-batch" in error_line(capsys)


# Resume ---------------------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint(tmp_path):
    """A finished 3-step run's checkpoint, as an interrupted run leaves it (kept at step 2)."""
    from vidiff.renderer import render

    out = tmp_path / "run.gif"
    job = RenderJob(GenerationRequest("a red circle moving right", frames=8, steps=3, seed=11), output=str(out),
                    checkpoint_every=1)  # fmt: skip
    import vidiff.renderer as render_module

    saved = {}
    original = render_module.save_latents

    def keep_step_two(path, item, overwrite=False):
        if str(path).endswith(".resume.safetensors") and item.meta.step == 2:
            original(tmp_path / "step2.safetensors", item, overwrite=True)
            saved["path"] = tmp_path / "step2.safetensors"
        return original(path, item, overwrite)

    render_module.save_latents = keep_step_two
    try:
        render(job)
    finally:
        render_module.save_latents = original
    return saved["path"], out


def test_the_printed_resume_command_works_and_contradictions_are_refused(tmp_path, capsys, checkpoint):
    path, whole = checkpoint
    out = tmp_path / "resumed.gif"
    for given, flag in ((["a blue square"], "prompt"), (["--steps", "9"], "--steps"), (["--seed", "2"], "--seed"),
                        (["--frames", "16"], "--frames"), (["--model", "tiny-random"], "--model")):  # fmt: skip
        assert cli("generate", *given, "--resume", path, "-o", out) == 2
        assert flag in error_line(capsys)
    # The command as vidiff prints it after an interrupt: no prompt, the checkpoint and the output.
    assert cli("generate", "--resume", path, "-o", out, "--quiet") == 0
    assert Image.open(out).n_frames == 8
    # Options equal to the saved job's are no contradiction.
    again = tmp_path / "again.gif"
    assert cli("generate", "a red circle moving right", "--seed", "11", "--resume", path, "-o", again, "--quiet") == 0
    assert again.read_bytes() == out.read_bytes() == whole.read_bytes()


def test_continuing_from_latents_records_the_seed_that_made_them(tmp_path, capsys):
    half = tmp_path / "half.safetensors"
    assert cli("generate", "a red circle", "-o", half, "--denoising-end", "0.5", *DEMO) == 0
    assert cli("generate", "a red circle", "-o", tmp_path / "o.gif", "--image-seeds", f"latents: {half}",
               "--denoising-start", "0.5", "--steps", "2", "--frames", "8") == 0  # fmt: skip
    assert "seed 3 |" in capsys.readouterr().out


# The property test --------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

WEIRD_TEXT = st.one_of(
    st.sampled_from(["", " ", "nan", "inf", "-inf", "-1", "0", "1e309", "9" * 40, "\u202e\u0000", "é/ü", "..", "/"]),
    st.text(max_size=12),
)
NUMBER_TEXT = st.one_of(
    WEIRD_TEXT, st.integers(-(2**70), 2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr)
)
GENERATE_OPTIONS = [
    "--frames", "--height", "--width", "--steps", "--guidance-scale", "--seed", "--eta", "--fps", "--decode-chunk-size",
    "--context-length", "--context-overlap", "--context-stride", "--free-init", "--motion-scale", "--frame-noise",
    "--frame-batch", "--denoising-start", "--denoising-end", "--image-seed-strength", "--checkpoint-every",
    "--max-sequence-length", "--pab-spatial", "--pab-temporal", "--pab-cross", "--deep-cache", "--dtype", "--device",
    "--scheduler", "--beta-schedule", "--timestep-spacing", "--prompt-travel", "--negative-prompt", "--model",
    "--motion-module", "--vae", "--lora", "--motion-lora", "--image-seeds", "--resume", "--preset", "--mode",
    "--groupnorm", "--context-schedule", "--context-fuse", "--context-scope", "--noise-type", "-o",
    "--travel-interpolation", "--free-init-method", "--compile-backend",
]  # fmt: skip
TRAIN_OPTIONS = ["--steps", "--batch-size", "--lr", "--frames", "--size", "--seed", "--checkpoint-every",
                 "--save-dtype", "--family", "--keyframe-share", "--text-lr-scale", "--trainable", "--lora-rank",
                 "--lora-out", "--min-noise", "--out", "--data", "--model"]  # fmt: skip
DECODE_OPTIONS = ["--fps", "--decode-chunk-size", "-o", "--dtype", "--device", "--model"]
BATCH_OPTIONS = ["--sweep", "--name-template", "--worker-cpus", "--worker-gpus", "--threads", "--fps", "--steps",
                 "--frames", "--seed", "--guidance-scale", "-o"]  # fmt: skip


def options(names):
    return st.lists(st.tuples(st.sampled_from(names), NUMBER_TEXT), max_size=4)


def run_dry(argv: list[str]) -> None:
    """The CLI in-process with --dry-run: exit 0, or exit 2 with one line naming an argument; never a traceback."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli(*argv, "--dry-run")
        except Exception as e:  # a traceback: the test fails and hypothesis shrinks the case
            raise AssertionError(f"{argv}: {type(e).__name__}: {e}") from e
    lines = err.getvalue().strip().splitlines()
    assert code in (0, 2), (argv, code, lines)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("vidiff: error: "), (argv, lines)
        said = lines[0].removeprefix("vidiff: error: ")
        argparse_said = said.startswith(("argument ", "the following arguments", "unrecognized arguments"))
        assert argparse_said or re.match(r"[^\s:]+: ", said), lines  # "--flag: ...", "JOBS: ...", "prompt: ..."


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True)
@hypothesis.given(prompt=WEIRD_TEXT, opts=options(GENERATE_OPTIONS))
def test_property_generate(prompt, opts):
    run_dry(["generate", prompt, *[x for pair in opts for x in pair]])


@hypothesis.settings(max_examples=80, deadline=None, derandomize=True)
@hypothesis.given(stage=st.sampled_from(["vae", "image", "motion", "x"]), opts=options(TRAIN_OPTIONS))
def test_property_train(stage, opts):
    run_dry(["train", stage, "--model", "/proc/nope", *[x for pair in opts for x in pair]])


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(latents=WEIRD_TEXT, opts=options(DECODE_OPTIONS))
def test_property_decode(latents, opts):
    run_dry(["decode", latents, "-o", "/proc/x.gif", *[x for pair in opts for x in pair]])


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(line=st.dictionaries(st.sampled_from(["prompt", "steps", "fps", "seed", "frames", "x"]),
                                       st.one_of(WEIRD_TEXT, st.floats(), st.integers(), st.none()), max_size=4),
                  opts=options(BATCH_OPTIONS))  # fmt: skip
def test_property_batch(tmp_path_factory, line, opts):
    jobs = tmp_path_factory.mktemp("jobs") / "jobs.jsonl"
    jobs.write_text(json.dumps(line) + "\n")
    run_dry(["batch", jobs, "-o", jobs.parent / "out", *[x for pair in opts for x in pair]])


def test_a_motion_module_for_another_unet_is_refused_in_one_line(tmp_path, adapter_folder, original_files, capsys):
    """The tiny adapter (widths 32, 64; 2 layers per block) on the demo's UNet (32, 64, 128; 1 layer): refused
    before merging, naming both shapes, for the diffusers folder and the original single file alike."""
    for module in (adapter_folder, original_files["safetensors"]):
        assert cli("generate", "a red circle", "--motion-module", module, "-o", tmp_path / "o.gif", *DEMO) == 2
        line = error_line(capsys)
        assert line.startswith(f"vidiff: error: --motion-module: {module} was made for a UNet with block widths")
        assert "(32, 64)" in line and "this model's UNet has (32, 64, 128)" in line
    assert not any(tmp_path.iterdir())


def test_found_by_a_new_user(tmp_path, capsys, monkeypatch, adapter_folder):
    """Each ends in one line and exit 2 before loading, nothing written: a 300-character output name, an existing
    folder named without a final / (frames would land in it), a motion module in frame-by-frame mode, a travel
    JSON file keying a frame twice."""
    monkeypatch.chdir(tmp_path)
    assert cli("generate", "a red circle", "-o", "x" * 300 + ".gif", *DEMO) == 2
    assert "--output: the name 'xxx" in error_line(capsys)
    (tmp_path / "renders").mkdir()
    (tmp_path / "renders" / "keep.txt").write_text("mine")
    assert cli("generate", "a red circle", "-o", "renders", *DEMO) == 2
    assert "--output: renders is an existing folder; end it in / " in error_line(capsys)
    assert cli("generate", "a red circle", "--mode", "sequential", "--motion-module", adapter_folder, *DEMO) == 2
    assert "--motion-module: has no use in --mode sequential" in error_line(capsys)
    (tmp_path / "travel.json").write_text('{"0": "a cat", "00": "a dog"}')
    assert cli("generate", "--prompt-travel", "travel.json", "-o", "t.gif", *DEMO) == 2
    assert "--prompt-travel: frame 0 is keyed twice" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.txt", "renders", "travel.json"]
    assert cli("generate", "a red circle", "-o", "renders/", *DEMO) == 0  # asked for frames: written beside keep.txt
    assert (tmp_path / "renders" / "keep.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def demo_pipe():
    from vidiff import VideoPipeline

    return VideoPipeline.from_pretrained("demo", dtype="float32")


CROSS = st.fixed_dictionaries(
    {},
    optional={
        "--frames": st.integers(1, 64),
        "--context-length": st.integers(1, 32),  # longer than the model's table: its own check, at load
        "--context-overlap": st.integers(0, 20),
        "--context-stride": st.integers(1, 20),
        "--noise-type": st.sampled_from(["random", "shuffle", "repeat"]),
        "--context-schedule": st.sampled_from(["uniform", "looped", "static"]),
        "--loop": st.just(None),
        "--prompt-travel": st.lists(st.integers(0, 70), min_size=1, max_size=3).map(
            lambda keys: " | ".join(f"{k}: a cat" for k in keys)
        ),
        "--denoising-start": st.floats(0, 1),
        "--denoising-end": st.floats(0, 1),
        "--free-init": st.integers(1, 3),
        "--image-seeds": st.just("latents: LATENTS"),
    },
)


@hypothesis.settings(max_examples=120, deadline=None, derandomize=True)
@hypothesis.given(opts=CROSS)
def test_property_cross_field_rules_are_all_checked_before_loading(demo_pipe, tmp_path_factory, opts):
    """Cross-field combinations (windows against frames, keyframes against frames, split runs against FreeInit,
    sources): the dry run answers exit 0 or one line with exit 2; and what it accepts, the loaded model's own
    checks (resolving the request, choosing the windows) accept too: no rule waits for the weights."""
    from vidiff.cli import build_parser
    from vidiff.options import job_from_args

    latents = tmp_path_factory.getbasetemp() / "cross.pt"
    if not latents.exists():
        torch.save(torch.zeros(1, 4, 16, 16, 16), latents)
    argv = ["generate", "a cat", "-o", str(tmp_path_factory.getbasetemp() / "x.gif")]
    for flag, value in opts.items():
        argv += [flag] if value is None else [flag, str(value).replace("LATENTS", str(latents))]
    run_dry(argv)
    try:
        job = job_from_args(build_parser().parse_args(argv))
        job.validate()
    except InvalidArgument:
        return  # refused before loading, in one line (run_dry saw it)
    request = job.request if job.request.frames or job.image_seeds else replace(job.request, frames=16)
    request = demo_pipe.resolve(replace(request, frames=request.frames or 16))  # latents files hold 16 frames
    demo_pipe.denoiser_for(request)
