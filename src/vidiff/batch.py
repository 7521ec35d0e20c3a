"""`vidiff batch`: many render jobs, each model loaded once, resumable through a manifest; here or on Ray.

Jobs come from a JSONL file (one job a line; keys are `vidiff generate`'s options, over the defaults given
on the command line) or a CSV of prompts (a `prompt` column and option columns, or prompts alone). A list
value, or `--sweep key=values`, expands a job into a grid. Every job gets a seed (its own, or one derived
from its options, so a rerun makes the same video) and an output name from a template. The manifest
(`manifest.jsonl` in the output folder) gets one record per finished or failed job, appended as each ends,
so it is consistent after any interruption; a rerun skips jobs recorded done with the same job hash whose
output is there, and retries the others.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import checks
from .errors import InvalidArgument, VidiffError
from .job import RenderJob, slug
from .options import ALIASES, LIST_FLAGS
from .outputs import check_name_length, writable_folder
from .request import flat_groups

MANIFEST = "manifest.jsonl"
TEMPLATE = "{index}-{prompt_slug}-{seed}.mp4"
MAX_JOBS = 100_000  # a batch (after its grids and sweeps) holds at most this many jobs


@dataclass(frozen=True)
class Item:
    """One job of the batch: its number, its own options (after the grid), the resolved job, its hash."""

    index: int
    options: dict
    job: RenderJob
    digest: str


# 1. Reading jobs -------------------------------------------------------------------------------------------


def read_jobs(path: str) -> list[dict]:
    """The job lines of a JSONL file or a CSV of prompts, as option dicts."""
    file = Path(path)
    if not file.is_file():
        raise InvalidArgument("JOBS", f"no such file: {path}")
    text = file.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's CSVs) is not part of the first key
    if file.suffix.lower() == ".csv":
        return _csv_jobs(text, file.name)
    jobs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            job = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidArgument("JOBS", f"{file.name} line {number}: not JSON ({e.msg})") from None
        if not isinstance(job, dict):
            raise InvalidArgument("JOBS", f"{file.name} line {number}: a job is a JSON object of options")
        jobs.append(job | {"_line": number})
    return jobs


def _csv_jobs(text: str, name: str) -> list[dict]:
    """A CSV's rows as jobs: a header with a `prompt` column names every column; a single column without one
    is prompts alone; several columns without one are refused (the header would become a job)."""
    rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), 1) if any(cell.strip() for cell in r)]
    if not rows:
        return []
    header = [h.strip() for h in rows[0][1]]
    if "prompt" in header:
        for n, r in rows[1:]:
            if len(r) > len(header):
                raise InvalidArgument("JOBS", f"{name} line {n}: {len(r)} cells under {len(header)} column names")
        return [{k: _cell(v) for k, v in zip(header, r, strict=False) if v != ""} | {"_line": n} for n, r in rows[1:]]
    if any(len(r) > 1 for _, r in rows):
        raise InvalidArgument("JOBS", f"{name}: a CSV of several columns needs a header row with a 'prompt' column")
    return [{"prompt": r[0], "_line": n} for n, r in rows]


def _cell(value: str):
    """A CSV cell as JSON when it parses (numbers, true, lists), else the string."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def parse_sweep(spec: str) -> tuple[str, list]:
    """`key=1..8` (integers, inclusive) or `key=a,b,c` -> (key, values)."""
    key, sep, values = spec.partition("=")
    if not sep or not key.strip() or not values:
        raise InvalidArgument("--sweep", f"expected key=1..8 or key=a,b,c, got {spec!r}")
    span = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", values.strip())
    if span:
        lo, hi = int(span[1]), int(span[2])
        if hi < lo:
            raise InvalidArgument("--sweep", f"empty range {values!r}")
        if hi - lo + 1 > MAX_JOBS:
            raise InvalidArgument(
                "--sweep", f"{values!r} is {hi - lo + 1} values; a batch takes at most {MAX_JOBS} jobs"
            )
        return key.strip(), list(range(lo, hi + 1))
    return key.strip(), [_cell(v.strip()) for v in values.split(",")]


def expand(job: dict, sweeps: list[tuple[str, list]]) -> list[dict]:
    """A job with list values (and the sweeps) as the grid of single-valued jobs."""
    job = dict(job)
    for key, values in sweeps:
        job.setdefault(key, values)
    axes = {k: v for k, v in job.items() if isinstance(v, list) and not _list_option(k, v)}
    if not axes:
        return [job]
    if math.prod(len(v) for v in axes.values()) > MAX_JOBS:
        raise InvalidArgument("--sweep", f"the grid over {', '.join(axes)} has more than {MAX_JOBS} jobs")
    return [job | dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _list_option(key: str, value: list) -> bool:
    """A list that is the value of a list option (not a grid of them, which is a list of lists)."""
    key = key.replace("-", "_")
    return ALIASES.get(key, key) in LIST_FLAGS and not any(isinstance(v, list) for v in value)


# 2. Options -> render jobs ---------------------------------------------------------------------------------


def defaults_from(args: argparse.Namespace) -> argparse.Namespace:
    """The generate options given to `vidiff batch` (its defaults for every job)."""
    from .options import option_defaults

    if getattr(args, "resume", None):
        raise InvalidArgument("--resume", "resumes one render; a batch resumes through its manifest")
    base = option_defaults()
    return argparse.Namespace(**{k: getattr(args, k, v) for k, v in base.items()} | {"prompt": None, "output": None})


def _derived_seed(options: dict, index: int) -> int:
    text = json.dumps(options, sort_keys=True, default=str) + f"#{index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def plan(
    jobs: list[dict],
    defaults: argparse.Namespace,
    outdir: str,
    template: str = TEMPLATE,
    sweeps: list[tuple[str, list]] = (),
) -> list[Item]:
    """Every job resolved (options, seed, output in `outdir`), checked, before anything renders. A line is a
    RenderJob's JSON (what `vidiff generate --dry-run` prints: it has a "request") or flat option keys."""
    items, names = [], {}
    for line in jobs:
        where = f"line {line['_line']}" if "_line" in line else f"job {len(items) + 1}"
        body = {k: v for k, v in line.items() if k != "_line"}
        for options in [body] if "request" in body else expand(body, list(sweeps)):
            index = len(items)
            try:
                job, fields = _job(options, defaults, index, where)
                name = _name(template, fields | {"index": index, "seed": job.request.seed}, index, names)
                job = replace(job, output=str(Path(outdir) / name))
                check_name_length(job.output)
                job.validate(output=False)  # OUTDIR is made later
            except InvalidArgument as e:
                if e.argument in ("--name-template", "JOBS"):
                    raise
                raise InvalidArgument("JOBS", f"{where}: {e}") from None
            if index >= MAX_JOBS:
                raise InvalidArgument("JOBS", f"more than {MAX_JOBS} jobs; split the batch")
            items.append(Item(index, options, job, hashlib.sha256(job.to_json().encode()).hexdigest()[:16]))
    return items


def _job(options: dict, defaults: argparse.Namespace, index: int, where: str) -> tuple[RenderJob, dict]:
    """The render job of one line's options (a seed derived when it has none), and the fields a name template
    may use."""
    from .options import job_from_options

    if "request" in options:
        job = RenderJob.from_dict(options)
    elif "resume" in options:
        raise InvalidArgument("JOBS", f"{where}: unknown option 'resume' (a batch resumes through its manifest)")
    else:
        try:
            job = job_from_options(options, defaults)
        except InvalidArgument as e:
            raise InvalidArgument("JOBS", f"{where}: {e.message}") if e.argument == "job" else e from None
    if job.request.seed is None:
        job = replace(job, request=replace(job.request, seed=_derived_seed(options, index)))
    fields = {k: v for k, v in job.to_dict().items() if k not in ("request", "load")}
    fields |= asdict(job.load) | asdict(job.request) | flat_groups(job.request)
    return job, fields | {"prompt_slug": slug(job.request.prompt or "", 40)}


def _name(template: str, fields: dict, index: int, names: dict[str, int]) -> str:
    """The output name `template` gives a job: inside OUTDIR, and no other job's."""
    try:
        name = template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise InvalidArgument("--name-template", f"{template!r}: {e}") from None
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise InvalidArgument("--name-template", f"{template!r} gives {name!r}, not a name inside OUTDIR")
    if name in names:
        raise InvalidArgument("--name-template", f"jobs {names[name]} and {index} are both named {name!r}")
    names[name] = index
    return name


# 3. The manifest -------------------------------------------------------------------------------------------


class Manifest:
    """`manifest.jsonl`: one record per ended job, appended and flushed as it ends; the last record of a job
    hash wins."""

    def __init__(self, outdir: str) -> None:
        prepare_outdir(outdir)
        self.path = Path(outdir) / MANIFEST
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash mid-write
                self.records[record.get("hash")] = record

    def done(self, item: Item) -> bool:
        record = self.records.get(item.digest)
        return record is not None and record["status"] == "done" and Path(record["output"]).exists()

    def add(self, record: dict) -> None:
        self.records[record["hash"]] = record
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def record(item: Item, status: str, seconds: float, timings: dict | None = None, error: str | None = None) -> dict:
    out = {"index": item.index, "hash": item.digest, "status": status, "output": item.job.output}
    out |= {"seed": item.job.request.seed, "seconds": round(seconds, 3), "options": item.options}
    return out | ({"timings": timings} if timings else {}) | ({"error": error} if error else {})


# 4. Running ------------------------------------------------------------------------------------------------


def by_model(items: list[Item]) -> list[Item]:
    """Jobs ordered so each model loads once (stable: first appearance of each model, then job order)."""
    first: dict[tuple, int] = {}
    for item in items:
        first.setdefault(item.job.load, len(first))
    return sorted(items, key=lambda i: first[i.job.load])


def render_one(renderer, item: Item) -> dict:
    """Render one job; a bad job becomes a failed record (its one-line error), never an exception."""
    from .renderer import render

    start = time.perf_counter()
    Path(item.job.output).parent.mkdir(parents=True, exist_ok=True)  # a template may name subfolders
    try:
        result = render(item.job, renderer)
    except VidiffError as e:
        return record(item, "failed", time.perf_counter() - start, error=str(e))
    load = 0.0 if result.reused_pipeline else result.timings.load
    timings = {"load": load, "denoise": result.timings.denoise, "decode": result.timings.decode}
    return record(item, "done", time.perf_counter() - start, {k: round(v, 3) for k, v in timings.items()})


@dataclass
class BatchReport:
    """What a run did: the records of the jobs it ran, jobs skipped as done, models loaded, wall time."""

    records: list[dict] = field(default_factory=list)
    skipped: int = 0
    loads: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "failed"]

    @classmethod
    def pending(cls, items: list[Item], manifest: Manifest) -> tuple[list[Item], BatchReport]:
        """The jobs not yet done, in model order, and a report counting the others as skipped."""
        todo = [i for i in by_model(items) if not manifest.done(i)]
        return todo, cls(skipped=len(items) - len(todo))

    def ended(self, rec: dict, manifest: Manifest, bar) -> None:
        """A job's record: into the manifest (at once), the report and the progress bar."""
        manifest.add(rec)
        self.records.append(rec)
        bar.set_postfix(s_per_video=f"{rec['seconds']:.1f}", refresh=False)


def check_threads(threads: int | None) -> None:
    if threads is not None:
        checks.integer("--threads", threads, 1)


def run_local(items: list[Item], manifest: Manifest, progress: bool = True, threads: int | None = None) -> BatchReport:
    """Render the jobs not yet done, in model order, on one warm renderer (with `threads` torch threads)."""
    import torch
    from tqdm.auto import tqdm

    from .renderer import Renderer

    check_threads(threads)
    start, renderer, before = time.perf_counter(), Renderer(), torch.get_num_threads()
    todo, report = BatchReport.pending(items, manifest)
    torch.set_num_threads(threads or before)
    try:
        bar = tqdm(todo, desc="videos", unit="video", disable=not progress)
        for item in bar:
            report.ended(render_one(renderer, item), manifest, bar)
    finally:
        torch.set_num_threads(before)
    report.loads, report.seconds = renderer.loads, time.perf_counter() - start
    return report


def prepare_outdir(outdir: str) -> None:
    folder = Path(outdir)
    if folder.exists() and not folder.is_dir():
        raise InvalidArgument("--output", f"{outdir} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidArgument("--output", f"cannot make {outdir} ({e.strerror or e})") from None
    writable_folder("--output", folder)
