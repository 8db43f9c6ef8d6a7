"""Timing, bandwidth and peak-memory helpers shared by the benchmarks."""

from __future__ import annotations

import functools
import multiprocessing as mp
import resource
import statistics
import time

import torch


def cuda_time_ms(fn, warmup: int = 3, reps: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cuda_peak_extra_mib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


@functools.cache
def copy_bandwidth_gbs(num_bytes: int = 2**30) -> float:
    """The device's measured copy bandwidth (read + write), the roofline's denominator."""
    src = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src))
    return 2 * num_bytes / ms / 1e6


def cpu_time_ms(fn, reps: int = 3) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss_bytes() -> int:
    # VmHWM, not getrusage's ru_maxrss: a spawned child's ru_maxrss starts at the parent's peak
    # (fork copies the high-water mark and exec keeps it), which hid the child's own peak
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _child(make_inputs, fn, limit_mib, queue):
    inputs = make_inputs()
    base = _rss_bytes()
    if limit_mib is not None:
        with open("/proc/self/statm") as f:
            address_space = int(f.read().split()[0]) * resource.getpagesize()
        limit = address_space + int(limit_mib * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    start = time.perf_counter()
    try:
        fn(*inputs)
    except (MemoryError, RuntimeError) as error:  # torch's CPU allocator raises RuntimeError
        if limit_mib is None or "alloc" not in str(error).lower():
            raise
        queue.put(None)
        return
    queue.put(((time.perf_counter() - start) * 1e3, _peak_rss_bytes() - base))


def cpu_fresh_process_run(make_inputs, fn, limit_mib: float | None = None) -> tuple[float, float] | None:
    """(ms, peak extra resident MiB) of one `fn(*make_inputs())` in a fresh process; with
    `limit_mib` the process may map only that much more memory, and None means `fn` needed more."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(make_inputs, fn, limit_mib, queue))
    proc.start()
    result = queue.get(timeout=1800)
    proc.join()
    if result is None:
        return None
    ms, extra = result
    return ms, max(extra, 0) / 2**20


def cpu_peak_extra_mib(make_inputs, fn) -> float:
    """Peak resident memory added by `fn(*make_inputs())`, measured in a fresh process."""
    return cpu_fresh_process_run(make_inputs, fn)[1]
