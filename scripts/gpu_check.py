"""One GPU's acceptance in one command: kernels vs float64, benchmarks, PPO steps at the 1.5B shape
(time and peak memory per phase against the plan), 30 steps of the tiny recipe, vLLM when it
imports, and the compiled rollout engine (greedy equality, tokens/s against transformers). Each
stage runs in its own process under its own time limit; a failed stage does not stop the rest; a
summary table prints last. Everything lands in one folder.

    python scripts/gpu_check.py                  # on a machine with one GPU
    python scripts/gpu_check.py --cpu            # every stage at toy sizes on CPU (what CI runs)
    python scripts/gpu_check.py --stages a c     # some stages only

Exit status: 0 all run stages passed, 1 one failed, 2 no CUDA device (without --cpu).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the stages: tests/gpu/, beside the float64 references
# seconds per stage on one H100/H200; --cpu uses its own
LIMITS = {"a": 45, "b": 90, "c": 330, "d": 90, "e": 240, "f": 240}
CPU_LIMITS = {"a": 60, "b": 60, "c": 150, "d": 150, "e": 30, "f": 90}


def run_stage(stage: str, out: Path, cpu: bool) -> None:
    """In the child process: run one stage and write its rows and verdict to `stage_<x>.json`."""
    if cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    from gpu import STAGES

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


def summarize(results: list[dict]) -> str:
    lines = ["", "| stage | result | seconds | details |", "|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['stage']} {r['name']} | {r['result']} | {r['seconds']:.0f} | {headline(r.get('rows', []))} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="toy sizes on CPU, kernels under the Triton interpreter")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/gpu_check/<time>)")
    parser.add_argument("--stages", nargs="+", default=list(LIMITS), choices=list(LIMITS))
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = parser.parse_args()
    out = args.out or ROOT / "outputs/gpu_check" / time.strftime("%Y-%m-%d_%H-%M-%S")
    if args.stage:
        run_stage(args.stage, out, args.cpu)
        return 0
    if not args.cpu:
        import torch

        if not torch.cuda.is_available():  # before the folder is made: a check that cannot run leaves none
            print("gpu_check: no CUDA device visible; run on a GPU machine, or pass --cpu for toy sizes on CPU")
            return 2
        print(f"gpu_check on {torch.cuda.get_device_name()} (torch {torch.__version__}) -> {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    from gpu import STAGES

    limits = CPU_LIMITS if args.cpu else LIMITS
    results = []
    for stage in args.stages:
        name = STAGES[stage][0]
        print(f"[{stage}] {name} (limit {limits[stage]} s)", flush=True)
        command = [sys.executable, __file__, "--stage", stage, "--out", str(out)] + (["--cpu"] if args.cpu else [])
        start = time.perf_counter()
        with open(out / f"stage_{stage}.log", "w") as log:
            try:
                code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=limits[stage]).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        seconds = time.perf_counter() - start
        path = out / f"stage_{stage}.json"
        partial = out / f"stage_{stage}.partial.json"
        record = json.loads(path.read_text()) if path.exists() else {"stage": stage, "name": name, "ok": False}
        if not path.exists() and partial.exists():
            record["rows"] = json.loads(partial.read_text())
        if code == "timeout":
            result = f"TIMEOUT after {limits[stage]} s"
        elif code != 0 or not path.exists():
            result = f"FAILED (exit {code}, see stage_{stage}.log)"
        else:
            result = {True: "pass", False: "FAIL", None: "skipped"}[record["ok"]]
        results.append({**record, "result": result, "seconds": seconds})
        print(f"[{stage}] {result} in {seconds:.0f} s", flush=True)
        # rewritten after every stage: a run cut short still leaves what it measured
        table = summarize(results)
        (out / "summary.md").write_text(table + "\n")
        (out / "summary.json").write_text(json.dumps(results, indent=1))
    print(table)
    return 0 if all(r["result"] in ("pass", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
