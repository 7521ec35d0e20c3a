"""`vidiff batch --ray`: the batch's jobs on a Ray cluster, one actor per worker slot holding a warm pipeline.

Jobs are grouped by model and each group goes to the actor with the least work queued, so each model loads
once per actor that needs it; an actor left idle takes half of the longest queue. An actor runs one job at
a time and writes its output into the output folder (on a cluster: shared storage). Ray restarts an actor
whose process dies and retries the job it was running (`max_restarts`, `max_task_retries`); the driver
alone writes the manifest, as each job ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import checks
from .batch import BatchReport, Item, Manifest, record, render_one
from .errors import InvalidArgument


@dataclass(frozen=True)
class RayOptions:
    address: str = "local"  # "local": a cluster on this machine; else what ray.init(address=...) takes
    worker_cpus: int = 1  # CPU cores per worker slot (torch threads in the actor)
    worker_gpus: float = 0.0  # GPUs per worker slot
    retries: int = 3  # actor restarts and job retries after a worker dies

    def validate(self) -> None:
        checks.text("--ray", self.address, empty=False)
        checks.integer("--worker-cpus", self.worker_cpus, 1)
        checks.number("--worker-gpus", self.worker_gpus, 0)


def route(items: list[Item], workers: int) -> list[list[Item]]:
    """Per worker, the jobs it runs in order: whole model groups to the least-loaded worker (largest groups
    first), then, while a worker is idle, the longest queue gives it its second half (one more model load
    buys a parallel worker)."""
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        groups.setdefault(item.job.load, []).append(item)
    queues: list[list[Item]] = [[] for _ in range(workers)]
    for group in sorted(groups.values(), key=len, reverse=True):
        min(queues, key=len).extend(group)
    while (idle := min(queues, key=len)) == [] and len(longest := max(queues, key=len)) > 1:
        half = len(longest) // 2
        idle.extend(longest[half:])
        del longest[half:]
    return queues


class RenderWorker:
    """A Ray actor: one warm pipeline; renders the jobs sent to it."""

    def __init__(self, threads: int) -> None:
        import torch

        from .renderer import Renderer

        torch.set_num_threads(threads)
        self.renderer = Renderer()

    def pid(self) -> int:
        import os

        return os.getpid()

    def render(self, item: Item) -> dict:
        return render_one(self.renderer, item) | {"worker_loads": self.renderer.loads}


class RayBatch:
    """Connect, start the workers, run items; `workers` are the actor handles."""

    def __init__(self, options: RayOptions) -> None:
        try:
            import ray
        except ImportError:
            raise InvalidArgument("--ray", "needs Ray: pip install 'vidiff[ray]'") from None
        options.validate()
        self.ray, self.options, self.started = ray, options, False
        # 1. Connect: a local cluster, or the one at `address`.
        if not ray.is_initialized():
            address = None if options.address == "local" else options.address
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            self.started = True
        # 2. One actor per worker slot.
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // options.worker_cpus)
        if options.worker_gpus:
            slots = min(slots, int(resources.get("GPU", 0) // options.worker_gpus))
        if slots < 1:
            raise InvalidArgument("--worker-cpus", f"no worker fits the cluster ({resources})")
        actor = ray.remote(RenderWorker).options(
            num_cpus=options.worker_cpus, num_gpus=options.worker_gpus,
            max_restarts=options.retries, max_task_retries=options.retries,
        )  # fmt: skip
        self.workers = [actor.remote(options.worker_cpus) for _ in range(slots)]

    def run(self, items: list[Item], manifest: Manifest, progress: bool = True) -> BatchReport:
        """Render the jobs not yet done; the manifest gets each record as its job ends."""
        from tqdm.auto import tqdm

        ray, start = self.ray, time.perf_counter()
        todo, report = BatchReport.pending(items, manifest)
        queues = route(todo, len(self.workers))
        # 2. One job in flight per worker; the next is sent as one ends.
        running = {}
        for w, queue in zip(self.workers, queues, strict=True):
            if queue:
                running[w.render.remote(queue[0])] = (w, queue, 0)
        loads: dict[int, int] = {}
        bar = tqdm(total=len(todo), desc="videos", unit="video", disable=not progress)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            worker, queue, i = running.pop(ref)
            try:
                rec = ray.get(ref)
                loads[id(worker)] = rec.pop("worker_loads")
            except ray.exceptions.RayError as e:  # the worker died past its retries
                rec = record(queue[i], "failed", 0.0, error=f"worker lost: {type(e).__name__}")
            report.ended(rec, manifest, bar)
            bar.update()
            if i + 1 < len(queue):
                running[worker.render.remote(queue[i + 1])] = (worker, queue, i + 1)
        bar.close()
        report.loads, report.seconds = sum(loads.values()), time.perf_counter() - start
        return report

    def close(self) -> None:
        """Stop the workers (and the cluster, when this batch started it)."""
        for worker in self.workers:
            self.ray.kill(worker)
        if self.started:
            self.ray.shutdown()


def run_ray(items: list[Item], manifest: Manifest, options: RayOptions, progress: bool = True) -> BatchReport:
    batch = RayBatch(options)
    try:
        return batch.run(items, manifest, progress)
    finally:
        batch.close()
