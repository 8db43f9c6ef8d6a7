"""Collects every benchmark's row, prints one table at the end and saves it as JSON."""

import json
import os
from pathlib import Path

import pytest

RESULTS: list[dict] = []
OUT = Path(os.environ.get("BENCH_OUT", Path(__file__).parent / "results.json"))


@pytest.fixture
def record():
    def add(**row):
        RESULTS.append(row)

    return add


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    columns = ["kernel", "impl", "device", "shape", "ms", "GB/s", "roofline %", "peak extra MiB"]
    rows = [[str(r.get(c, "")) for c in columns] for r in RESULTS]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    terminalreporter.write_line("")
    terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        terminalreporter.write_line("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    OUT.write_text(json.dumps(RESULTS, indent=1))
    terminalreporter.write_line(f"saved {OUT}")
