"""Timings on CUDA wait for the queued kernels before the clock is read; on a CPU nothing is waited for."""

from __future__ import annotations

import torch

from vidiff import memory


def test_clock_synchronises_cuda_before_reading(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    before = memory.clock(torch.device("cpu"))
    assert waited == []
    after = memory.clock(torch.device("cuda", 0))
    assert waited == [torch.device("cuda", 0)] and after >= before


def test_every_stage_timing_uses_the_clock(monkeypatch, sd1_folder, adapter_folder):
    """The pipeline reads the time only through `clock` (so CUDA figures are synchronised): encode, denoise and
    each decode chunk each read it twice."""
    import vidiff.pipeline
    from vidiff import VideoPipeline

    pipe = VideoPipeline.from_pretrained(str(sd1_folder), motion_module=str(adapter_folder), dtype="float32")
    reads = []
    monkeypatch.setattr(vidiff.pipeline, "clock", lambda device: reads.append(device) or 0.0)
    pipe("a cat", frames=4, steps=1, height=64, width=64, progress=False, decode_chunk_size=2)
    assert len(reads) == 2 + 2 + 2 * 3  # encode, denoise, two chunks of two frames and the end of the stream
    assert all(d == pipe.device for d in reads)
