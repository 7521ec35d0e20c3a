"""`vidiff batch`: jobs grouped by model (each loaded once), outputs equal to `vidiff generate`'s, a manifest
that makes reruns skip finished jobs, bad jobs failing alone, bad input refused before any rendering."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import cli

from vidiff.batch import Manifest, defaults_from, parse_sweep, plan, read_jobs, run_local
from vidiff.cli import build_parser

FAST = ["--steps", "2", "--frames", "4", "--quiet"]
SIX = [{"prompt": "a red circle moving right", "seed": [1, 2, 3]},
       {"prompt": "a blue square moving up", "model": "tiny-random", "seed": [4, 5, 6]}]  # fmt: skip


def write_jobs(folder: Path, jobs: list[dict], name: str = "jobs.jsonl") -> Path:
    path = folder / name
    path.write_text("\n".join(json.dumps(j) for j in jobs) + "\n")
    return path


def records(outdir: Path) -> list[dict]:
    return [json.loads(line) for line in (outdir / "manifest.jsonl").read_text().splitlines()]


def plan_for(jobs: Path, outdir: Path, *flags: str):
    args = build_parser().parse_args(["batch", str(jobs), "-o", str(outdir), *FAST, *flags])
    sweeps = [parse_sweep(s) for s in args.sweep]
    return plan(read_jobs(str(jobs)), defaults_from(args), str(outdir), args.name_template, sweeps)


def test_six_jobs_two_models_each_loaded_once_equal_generate_and_a_rerun_does_nothing(tmp_path):
    jobs, out = write_jobs(tmp_path, SIX), tmp_path / "out"
    items = plan_for(jobs, out)
    assert [i.job.request.seed for i in items] == [1, 2, 3, 4, 5, 6]
    report = run_local(items, Manifest(str(out)), progress=False)
    assert report.loads == 2 and not report.failed and len(report.records) == 6
    (tmp_path / "alone").mkdir()
    for item in items:  # the same options through `vidiff generate`
        alone = tmp_path / "alone" / Path(item.job.output).name
        model = item.options.get("model", "demo")
        prompt, seed = item.options["prompt"], str(item.options["seed"])
        assert cli("generate", prompt, "--model", model, "--seed", seed, *FAST, "-o", alone) == 0
        assert alone.read_bytes() == Path(item.job.output).read_bytes()
    again = run_local(plan_for(jobs, out), Manifest(str(out)), progress=False)
    assert (again.skipped, again.loads, again.records) == (6, 0, [])


def test_a_bad_job_fails_alone_and_is_retried(tmp_path, capsys):
    jobs = write_jobs(tmp_path, [{"prompt": "a red circle moving right", "seed": 1},
                                 {"prompt": "a cat", "model": str(tmp_path / "missing.safetensors")},
                                 {"prompt": "a green square moving left", "seed": 2}])  # fmt: skip
    out = tmp_path / "out"
    assert cli("batch", jobs, "-o", out, *FAST) == 1
    recs = records(out)
    assert [r["status"] for r in recs] == ["done", "done", "failed"]  # model order: demo jobs first
    assert "--model" in recs[2]["error"] and "missing.safetensors" in recs[2]["error"]
    assert "job 1 failed: --model" in capsys.readouterr().out
    assert cli("batch", jobs, "-o", out, *FAST) == 1  # only the failed job runs again
    assert [r["status"] for r in records(out)[3:]] == ["failed"]


def test_grids_sweeps_csv_and_templates(tmp_path):
    jobs = write_jobs(tmp_path, [{"prompt": "a red circle moving right", "guidance_scale": [1.0, 5.0]}])
    items = plan_for(jobs, tmp_path / "o", "--sweep", "seed=1..3", "--name-template", "{guidance_scale}/{seed}.gif")
    assert [(i.job.request.guidance_scale, i.job.request.seed) for i in items] == [
        (g, s) for g in (1.0, 5.0) for s in (1, 2, 3)
    ]
    assert Path(items[-1].job.output) == tmp_path / "o" / "5.0" / "3.gif"
    csv = tmp_path / "prompts.csv"
    csv.write_text("prompt,steps\na red circle moving right,3\na blue square moving up,4\n")
    items = plan_for(csv, tmp_path / "o")
    assert [(i.job.request.prompt, i.job.request.steps) for i in items] == [
        ("a red circle moving right", 3), ("a blue square moving up", 4)
    ]  # fmt: skip
    assert items[0].job.request.seed == plan_for(csv, tmp_path / "o")[0].job.request.seed  # derived, stable
    (tmp_path / "plain.csv").write_text("a red circle moving right\na blue square moving up\n")
    assert len(plan_for(tmp_path / "plain.csv", tmp_path / "o")) == 2


@pytest.mark.parametrize(
    ("lines", "flags", "message"),
    [
        (['{"prompt": "a cat"}', "{not json"], [], "JOBS: jobs.jsonl line 2: not JSON"),
        (['{"prompt": "a cat", "colour": "red"}'], [], "JOBS: line 1: unknown option 'colour'"),
        (['{"prompt": "a cat", "steps": "many"}'], [], "JOBS: line 1: steps: 'many' is not a valid value"),
        (['{"prompt": "a cat", "seed": [1, 2]}'], ["--name-template", "same.mp4"], "--name-template: jobs 0 and 1"),
        (['{"prompt": "a cat"}'], ["--sweep", "seed=9..1"], "--sweep: empty range"),
        (['{"prompt": "a cat"}'], ["--sweep", "seed=1..100000000"], "--sweep: '1..100000000' is 100000000 values"),
        (
            ['{"prompt": "a cat", "seed": [1, 2]}'] * 3,
            ["--sweep", "steps=1..400", "--sweep", "frames=1..400"],
            "--sweep: the grid over",
        ),
        ([*['{"prompt": "a cat"}'] * 700, '{"prompt": "a cat", "steps": -3}'], [], "JOBS: line 701: --steps: must be"),
        (
            [*['{"prompt": "a cat"}'] * 9, '{"prompt": "a cat", "lora": "gone.safetensors"}'],
            [],
            "JOBS: line 10: --lora: ",
        ),
        (['{"prompt": "a cat"}', '{"prompt": "a \\u0000 cat"}'], [], "JOBS: line 2: prompt: "),
    ],
)
def test_bad_input_is_one_line_before_any_rendering(tmp_path, capsys, lines, flags, message):
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    assert cli("batch", tmp_path / "jobs.jsonl", "-o", tmp_path / "out", *FAST, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (tmp_path / "out").exists()


def test_sigterm_leaves_finished_outputs_and_the_manifest_consistent(tmp_path):
    jobs = write_jobs(tmp_path, [{"prompt": "a red circle moving right", "seed": list(range(1, 40))}])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vidiff", "batch", str(jobs), "-o", str(out), *FAST]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "manifest.jsonl").is_file() or len(records(out)) < 2:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 130
    recs = records(out)
    assert 2 <= len(recs) < 39 and all(r["status"] == "done" for r in recs)
    videos = sorted(p.name for p in out.iterdir() if p.name != "manifest.jsonl")
    assert videos == sorted(Path(r["output"]).name for r in recs)  # no partial file, none unrecorded
    assert all(not name.startswith(".") for name in os.listdir(out))


def test_csv_with_a_byte_order_mark_or_without_a_prompt_column(tmp_path, capsys):
    """Excel's UTF-8 CSVs start with a BOM: the header is still read as one (no job made of it, no column lost);
    several columns without a `prompt` header are refused naming the file, before rendering."""
    bom = tmp_path / "excel.csv"
    bom.write_bytes("\ufeffprompt,steps\na red circle moving right,3\n".encode())
    items = plan_for(bom, tmp_path / "o")
    assert len(items) == 1 and items[0].job.request.prompt == "a red circle moving right"
    assert items[0].job.request.steps == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("text,steps\na red circle moving right,3\n")
    assert cli("batch", bad, "-o", tmp_path / "out", *FAST) == 2
    assert "needs a header row with a 'prompt' column" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_motion_module_for_another_unet_fails_its_job_alone(tmp_path, adapter_folder):
    jobs = write_jobs(tmp_path, [{"prompt": "a red circle moving right", "seed": 1},
                                 {"prompt": "a cat", "motion_module": str(adapter_folder)}])  # fmt: skip
    out = tmp_path / "out"
    assert cli("batch", jobs, "-o", out, *FAST) == 1
    recs = {r["index"]: r for r in records(out)}
    assert recs[0]["status"] == "done" and recs[1]["status"] == "failed"
    assert recs[1]["error"].startswith("--motion-module: ") and "block widths" in recs[1]["error"]


def test_dry_run_lines_render_the_same_videos_as_generate(tmp_path, capsys):
    """One job format: what `vidiff generate --dry-run` prints is a batch line; the batch renders each byte for
    byte as `vidiff generate` does (the name comes from the batch's template). Flat lines still mix in."""
    runs = [["a red circle moving right", "--seed", "3"], ["a blue square moving up", "--model", "tiny-random",
            "--seed", "4", "--guidance-rescale", "0.5", "--context-length", "4"]]  # fmt: skip
    lines = []
    for run in runs:
        assert cli("generate", *run, *FAST, "--dry-run") in (0, None)
        lines.append(capsys.readouterr().out.strip())
    lines.append(json.dumps({"prompt": "a green triangle moving left", "seed": 5}))
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert cli("batch", tmp_path / "jobs.jsonl", "-o", out, *FAST) == 0
    recs = sorted(records(out), key=lambda r: r["index"])
    assert [r["status"] for r in recs] == ["done"] * 3 and recs[1]["seed"] == 4
    for run, rec in zip(runs, recs, strict=False):
        alone = tmp_path / f"alone-{rec['index']}.mp4"
        assert cli("generate", *run, *FAST, "-o", alone) == 0
        assert alone.read_bytes() == Path(rec["output"]).read_bytes()
    (tmp_path / "bad.jsonl").write_text(json.dumps({"request": {"prompt": "x", "colour": 1}}) + "\n")
    assert cli("batch", tmp_path / "bad.jsonl", "-o", tmp_path / "o2", *FAST) == 2
    assert "JOBS: line 1: job: request: unknown keys colour" in capsys.readouterr().err
