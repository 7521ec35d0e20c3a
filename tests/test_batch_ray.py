"""`vidiff batch --ray` on a local 2-CPU Ray cluster: the local batch's outputs, and a killed worker's job
retried on its restarted actor."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_batch import SIX, plan_for, write_jobs

from vidiff.batch import Manifest, run_local

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'vidiff[ray]')")
from vidiff.cluster import RayBatch, RayOptions, route  # noqa: E402


def test_route_keeps_models_together_and_splits_for_idle_workers(tmp_path):
    items = plan_for(write_jobs(tmp_path, SIX), tmp_path / "o")  # two models, three jobs each
    models = [{i.job.load.model for i in q} for q in route(items, 2)]
    assert models == [{"demo"}, {"tiny-random"}]
    assert sorted(len(q) for q in route(items, 4)) == [1, 1, 2, 2]
    assert sorted(len(q) for q in route(items[:3], 2)) == [1, 2]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_outputs_equal_the_local_batch(cluster, tmp_path):
    """Both with one torch thread per video (float sums depend on the thread count)."""
    jobs = write_jobs(tmp_path, SIX)
    local = run_local(plan_for(jobs, tmp_path / "local"), Manifest(str(tmp_path / "local")), False, threads=1)
    batch = RayBatch(RayOptions(worker_cpus=1))
    try:
        assert len(batch.workers) == 2
        items = plan_for(jobs, tmp_path / "ray")
        report = batch.run(items, Manifest(str(tmp_path / "ray")), progress=False)
    finally:
        batch.close()
    assert report.loads == 2 and not report.failed and len(report.records) == 6 == len(local.records)
    for item in items:
        name = Path(item.job.output).name
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_a_killed_worker_is_restarted_and_its_job_retried(cluster, tmp_path):
    jobs = write_jobs(tmp_path, [{"prompt": "a red circle moving right", "seed": [1, 2, 3], "steps": 12}])
    items = plan_for(jobs, tmp_path / "out")
    batch = RayBatch(RayOptions(worker_cpus=1, retries=2))
    assert [len(q) for q in route(items, 2)] == [1, 2]  # one model, split: the second worker has two jobs
    busy = ray.get(batch.workers[1].pid.remote())

    def kill_mid_job() -> None:
        time.sleep(4.0)
        os.kill(busy, signal.SIGKILL)

    killer = threading.Thread(target=kill_mid_job)
    killer.start()
    try:
        report = batch.run(items, Manifest(str(tmp_path / "out")), progress=False)
        assert ray.get(batch.workers[1].pid.remote()) != busy  # a new process
    finally:
        killer.join()
        batch.close()
    assert [r["status"] for r in report.records] == ["done"] * 3
    assert all(Path(i.job.output).is_file() for i in items)
