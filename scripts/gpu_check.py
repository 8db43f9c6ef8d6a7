"""One GPU's acceptance in one command: the compiled rollout engine (greedy equality, tokens/s
against transformers) first, as its code has never run on a GPU, then kernels vs float64,
benchmarks, PPO steps at the 1.5B shape (time and peak memory per phase against the plan), 30 steps
of the tiny recipe, and vLLM when it imports. Each stage runs in its own process under its own time
limit; a failed or stuck stage does not stop the rest; a summary table prints last. Everything
lands in one folder.

    python scripts/gpu_check.py --budget 360 --out "$OUT/gc"   # on a lent GPU: the whole run in 6 minutes
    python scripts/gpu_check.py --cpu --budget 120 --out DIR    # every stage at toy sizes on CPU (CI)
    python scripts/gpu_check.py --stages a c                    # some stages only

With `--budget S` each stage's limit is its share of what is left of S (shares in proportion to the
stages' own limits), so a stage that finishes early leaves its time to the rest and one that hangs
takes no more than its share. Exit status: 0 every stage that ran passed (a stage that could not
run, vLLM absent, reads "not run"), 1 one failed or timed out, 2 no CUDA device (without --cpu).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if "--cpu" in sys.argv[1:]:  # Triton picks the interpreter when a kernel is defined: before the stages import one
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(ROOT / "tests"))  # the stages: tests/gpu/, beside the float64 references
from gpu.forked import run_command, run_forked, warm_up  # noqa: E402

# seconds per stage on one H100/H200, in the order they run (those never run on a GPU first: f, g); --cpu
# uses its own
LIMITS = {"f": 240, "g": 330, "a": 45, "b": 90, "c": 330, "d": 90, "e": 240}
# about three times what each took on 2 Xeon cores, forked after the imports (2026-12-03: f 4, a 10, b 4,
# c 3, d 3, e 0 s; the imports 10 s before them), f's ten: it took 17 to 27 s beside two to three other
# processes on those cores, and g (a toy LoRA run) 13 s. Each stage's share of `--budget 120` then holds a
# slower CPU (AMD EPYC: about 1.6x) shared with another process.
CPU_LIMITS = {"f": 40, "g": 25, "a": 30, "b": 10, "c": 15, "d": 15, "e": 5}
SUMMARY_SECONDS = 5  # kept back from the budget for the table
SUMMARY_CHARS = 11_000  # the table fits the 12 000 characters a lent GPU's output keeps
VERDICTS = {True: "pass", False: "FAIL", None: "not run"}


def stage_limits(weights: dict[str, float], remaining: float) -> dict[str, float]:
    """Each stage's share of `remaining` seconds, in proportion to `weights` (its own limit)."""
    total = sum(weights.values())
    return {stage: remaining * weight / total for stage, weight in weights.items()}


def run_stage(stage: str, out: Path, cpu: bool, module: str) -> None:
    """In the child process: run one stage and write its rows and verdict to `stage_<x>.json`."""
    STAGES = importlib.import_module(module).STAGES

    name, fn = STAGES[stage]
    rows, ok = fn(out, small=cpu)
    (out / f"stage_{stage}.json").write_text(json.dumps({"stage": stage, "name": name, "ok": ok, "rows": rows}))


def headline(rows: list[dict]) -> str:
    """A stage's rows in one cell: kernel checks counted per kernel, anything else compact."""
    if rows and all("max_rel_error" in r for r in rows):
        kernels = {}
        for r in rows:
            kernels.setdefault(r["kernel"], []).append(r)
        return "; ".join(
            f"{k}: {sum(r['ok'] for r in rs)}/{len(rs)} ok, worst rel. error {max(r['max_rel_error'] for r in rs):.1e}"
            for k, rs in kernels.items()
        )
    return "<br>".join(json.dumps(row, separators=(", ", ": ")) for row in rows)


def summarize(results: list[dict], limit: int = SUMMARY_CHARS) -> str:
    """The table of `results`, its detail cells cut so that it stays within `limit` characters."""
    details = [headline(r.get("rows", [])) for r in results]
    width = max(map(len, details), default=0)
    while True:
        lines = ["", "| stage | result | seconds | details |", "|---|---|---|---|"]
        for r, cell in zip(results, details):
            cell = cell if len(cell) <= width else cell[: max(0, width - 1)] + "…"
            lines.append(f"| {r['stage']} {r['name']} | {r['result']} | {r['seconds']:.0f} | {cell} |")
        table = "\n".join(lines)
        if len(table) <= limit or width == 0:
            return table
        width = max(0, width - max(1, (len(table) - limit) // max(1, len(results))))


def run_stages(
    stages: list[str], weights: dict, budget: float | None, out: Path, cpu: bool, module: str, started: float
) -> list:
    """Each stage in its own process, in order, under its share of what is left of `budget` (its own
    weight in seconds without one) since `started`; on CPU each a fork of this process, which has paid
    for the imports; the summary rewritten after each, so a run cut short keeps it."""
    STAGES = importlib.import_module(module).STAGES
    if cpu:
        warm_up()
        print(f"imports done in {time.perf_counter() - started:.0f} s", flush=True)
    results = []
    for i, stage in enumerate(stages):
        name = STAGES[stage][0]
        if budget is None:
            limit = weights[stage]
        else:
            left = budget - SUMMARY_SECONDS - (time.perf_counter() - started)
            limit = max(1.0, stage_limits({s: weights[s] for s in stages[i:]}, left)[stage])
        print(f"[{stage}] {name} (limit {limit:.0f} s)", flush=True)
        log = out / f"stage_{stage}.log"
        start = time.perf_counter()
        if cpu:
            code = run_forked(functools.partial(run_stage, stage, out, cpu, module), log, limit)
        else:
            command = [sys.executable, __file__, "--stage", stage, "--out", str(out), "--stage-module", module]
            code = run_command(command, log, limit)
        seconds = time.perf_counter() - start
        path = out / f"stage_{stage}.json"
        partial = out / f"stage_{stage}.partial.json"
        record = json.loads(path.read_text()) if path.exists() else {"stage": stage, "name": name, "ok": False}
        if not path.exists() and partial.exists():
            record["rows"] = json.loads(partial.read_text())
        if code == "timeout":
            result = f"TIMEOUT after {limit:.0f} s"
        elif code != 0 or not path.exists():
            result = f"FAILED (exit {code}, see stage_{stage}.log)"
        else:
            result = VERDICTS[record["ok"]]
        results.append({**record, "result": result, "seconds": seconds, "limit": limit})
        print(f"[{stage}] {result} in {seconds:.0f} s", flush=True)
        (out / "summary.md").write_text(summarize(results) + "\n")
        (out / "summary.json").write_text(json.dumps(results, indent=1))
    return results


def main() -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="toy sizes on CPU, kernels under the Triton interpreter")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/gpu_check/<time>)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run, shared by the stages")
    parser.add_argument("--stages", nargs="+", default=None, help=f"some of {list(LIMITS)}, run in that order")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    parser.add_argument("--stage-module", default="gpu", help=argparse.SUPPRESS)  # where STAGES live (tests: others)
    args = parser.parse_args()
    out = args.out or ROOT / "outputs/gpu_check" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if args.stage:
        run_stage(args.stage, out, args.cpu, args.stage_module)
        return 0
    STAGES = importlib.import_module(args.stage_module).STAGES
    defaults = CPU_LIMITS if args.cpu else LIMITS
    weights = {stage: defaults.get(stage, 60) for stage in STAGES}  # a stage the tables lack: 60 s
    stages = [stage for stage in defaults if stage in STAGES] + [stage for stage in STAGES if stage not in defaults]
    stages = args.stages or stages
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"--stages {' '.join(unknown)}: choose from {list(STAGES)}")
    if args.budget is not None and args.budget <= SUMMARY_SECONDS:
        parser.error(f"--budget {args.budget:g}: more than {SUMMARY_SECONDS} seconds, please")
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():  # before the folder is made: a check that cannot run leaves none
            print("gpu_check: no CUDA device visible; run on a GPU machine, or pass --cpu for toy sizes on CPU")
            return 2
        print(f"gpu_check on {torch.cuda.get_device_name()} (torch {torch.__version__}) -> {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    results = run_stages(stages, weights, args.budget, out, args.cpu, args.stage_module, started)
    print(summarize(results))
    return 0 if all(r["result"] in ("pass", "not run") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
