"""`vidiff bench` runs its four rows in one process on tiny weights and reports them (no timing asserted)."""

from __future__ import annotations

import json

from vidiff.cli import main


def test_bench_rows_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--size", "tiny", "--cache", str(tmp_path / "w"), "--frames", "2", "--height", "32"]
    args += ["--width", "32", "--steps", "3", "--rounds", "1", "--json", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    for label in ("diffusers", "vidiff same dtype", "vidiff default", "vidiff default + fast", "relative L2"):
        assert label in table, label
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["diffusers", "same-dtype", "default", "fast"]
    assert rows[0]["dtype"] == rows[1]["dtype"] == "float32"
    for r in rows:
        (run,) = r["runs"]
        assert run["step_s"] > 0 and run["vae_s"] > 0 and run["total_s"] >= run["vae_s"] and run["peak_gib"] > 0


def test_bench_bad_rows_is_one_line(tmp_path, capsys):
    assert main(["bench", "--size", "tiny", "--cache", str(tmp_path / "w"), "--rows", "diffusers,nope"]) == 2
    assert capsys.readouterr().err.startswith("vidiff: error: --rows: choose from")


def test_optional_rows(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "--size",
        "tiny",
        "--cache",
        str(tmp_path / "w"),
        "--frames",
        "2",
        "--height",
        "32",
        "--width",
        "32",
    ]
    args += ["--steps", "3", "--rounds", "1", "--rows", "default,lightning,lora,lora-unfused", "--json", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "lightning: " in table and "LoRA per step: fused" in table
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["default", "lightning", "lora", "lora-unfused"]
