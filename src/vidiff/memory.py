"""Measuring a run: the bytes of a model's weights, the peak working memory of a call above its start, and a
clock that waits for the device."""

from __future__ import annotations

import sys
import threading
import time

import torch


class PeakMemory:
    """Highest memory in use above the level at entry: the CUDA allocator's peak, or on CPU the resident set
    sampled every 2 ms from /proc/self/statm (0 where that file does not exist)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak = device, 0

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096
        except OSError:
            return 0

    def _sample(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, self._rss() - self.base)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base, self._done = self._rss(), threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._done.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss() - self.base)


def current_bytes(device: torch.device) -> int:
    """Memory in use now: the CUDA allocator's, else this process's resident set."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else PeakMemory._rss()


def process_peak(device: torch.device) -> int:
    """The process's highest memory so far: the CUDA allocator's peak on a GPU, else the maximum resident set
    (runtime, libraries, weights and activations all counted; 0 where the OS does not say)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib if sys.platform == "darwin" else kib * 1024


def weight_bytes(*modules: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def clock(device: torch.device) -> float:
    """Seconds for timing work on `device`: CUDA's queued kernels are waited for first, so a figure counts
    the work done, not the launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
