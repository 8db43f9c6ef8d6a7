"""Collects every benchmark's row, prints one table at the end and saves it as JSON."""

import json
import os
from pathlib import Path

import pytest

RESULTS: list[dict] = []
OUT = Path(os.environ.get("BENCH_OUT", Path(__file__).parent / "results.json"))


@pytest.fixture
def record():
    """Add a row: achieved GB/s over the fewest bytes the operation must move, and on CUDA
    that figure as a share of the device's measured copy bandwidth."""
    from measure import copy_bandwidth_gbs

    def add(kernel: str, impl: str, shape: str, ms: float | None, bytes_moved: int, peak_mib, cuda: bool = False):
        """`ms=None`: it did not run to the end; `peak_mib` may then say why (a string)."""
        import torch

        gbs = bytes_moved / ms / 1e6 if ms else None
        row = {
            "kernel": kernel,
            "impl": impl,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "shape": shape,
            "ms": round(ms, 3) if ms else None,
            "GB/s": round(gbs, 2) if gbs else None,
            "peak extra MiB": round(peak_mib, 1) if isinstance(peak_mib, float) else peak_mib,
        }
        if cuda and gbs:
            row["roofline %"] = round(100 * gbs / copy_bandwidth_gbs(), 1)
        RESULTS.append(row)

    return add


@pytest.fixture
def record_row():
    """Add a row of any columns (rollout engines report tokens/s, not bandwidth)."""
    return RESULTS.append


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    columns = list(dict.fromkeys(key for row in RESULTS for key in row))
    rows = [[str(r.get(c, "")) for c in columns] for r in RESULTS]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    terminalreporter.write_line("")
    terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        terminalreporter.write_line("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    OUT.write_text(json.dumps(RESULTS, indent=1))
    terminalreporter.write_line(f"saved {OUT}")
