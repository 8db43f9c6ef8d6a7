"""One page of the same held-out prompts' greedy responses at every evaluation step, side by side.

Reads the `heldout/step_K.jsonl` files a run writes at each evaluation (`RolloutCallback`); a
row per evaluation step, a column per prompt, each cell the response and its reward, so a person
can read down a column how the reasoning changed.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

HELDOUT_DIR = "heldout"  # each evaluation's greedy responses, `step_K.jsonl` in the run folder
STEP_FILE = re.compile(r"step_(\d+)\.jsonl")
CELL_COLOURS = {"solved": "#d9f2d9", "formatted": "#f2f2f2", "unformatted": "#f9dede"}


def heldout_steps(run_dir: str | Path) -> dict[int, list[dict]]:
    """{step: rows of `heldout/step_K.jsonl`} of a run, steps ascending."""
    folder = Path(run_dir) / HELDOUT_DIR
    files = {int(m.group(1)): path for path in folder.glob("step_*.jsonl") if (m := STEP_FILE.fullmatch(path.name))}
    if not files:
        raise FileNotFoundError(f"{folder} holds no step_K.jsonl: was the run evaluated (eval_every_n_steps > 0)?")
    return {step: [json.loads(line) for line in open(files[step])] for step in sorted(files)}


def cell_kind(score: float) -> str:
    return "solved" if score >= 1.0 else "formatted" if score > 0 else "unformatted"


def samples_page(run_dir: str | Path, prompts: int = 8) -> str:
    """An HTML page: the first `prompts` held-out problems' greedy responses at every evaluated step."""
    steps = heldout_steps(run_dir)
    first = next(iter(steps.values()))[:prompts]
    indices = [row["index"] for row in first]
    head = "".join(f"<th>{html.escape(row['prompt'])}</th>" for row in first)
    body = []
    for step, rows in steps.items():
        by_index = {row["index"]: row for row in rows}
        cells = []
        for index in indices:
            row = by_index.get(index)
            if row is None:
                cells.append("<td></td>")
                continue
            colour = CELL_COLOURS[cell_kind(row["score"])]
            cells.append(
                f'<td style="background:{colour}"><pre>{html.escape(row["response"])}</pre>reward {row["score"]:g}</td>'
            )
        solved = sum(row["score"] >= 1.0 for row in rows) / len(rows)
        body.append(f"<tr><th>step {step}<br>held-out {solved:.3f}</th>{''.join(cells)}</tr>")
    return (
        "<!doctype html><meta charset='utf-8'><title>held-out samples</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px;vertical-align:top;font-size:12px}pre{white-space:pre-wrap;margin:0;max-width:22em}</style>"
        f"<h2>Greedy responses to {len(indices)} held-out prompts at each evaluation: {html.escape(str(run_dir))}</h2>"
        "<p>green: reward 1 (solved); grey: a well-formed wrong answer; red: no answer.</p>"
        f"<table><tr><th>step</th>{head}</tr>{''.join(body)}</table>"
    )


def write_samples(run_dir: str | Path, out: str | Path | None = None, prompts: int = 8) -> Path:
    out = Path(out) if out else Path(run_dir) / "samples.html"
    out.write_text(samples_page(run_dir, prompts))
    return out
