"""`scripts/gpu_check.py` keeps working without a GPU: every stage at toy sizes on CPU."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


def run(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script sets it with --cpu
    return subprocess.run(
        [sys.executable, "scripts/gpu_check.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_without_cuda_it_says_so_and_exits_2(tmp_path):
    result = run("--out", str(tmp_path), timeout=120)
    assert result.returncode == 2
    assert "no CUDA device" in result.stdout


@pytest.mark.slow  # over 20 s on 2 cores: in `make test`, not in the quick `-m "not slow"` run
def test_cpu_mode_runs_every_stage_and_prints_the_summary_last(tmp_path):
    # the budget README gives for CPU: 34 s of it used on a quiet Xeon (2026-12-03), each stage's share about
    # three times what it takes there, for slower cores shared with another test
    result = run("--cpu", "--budget", "120", "--out", str(tmp_path), timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = {r["stage"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert list(summary) == ["f", "g", "a", "b", "c", "d", "e"]  # the code that never ran on a GPU first
    verdicts = {stage: r["result"] for stage, r in summary.items()}
    assert verdicts == {**dict.fromkeys("abcdfg", "pass"), "e": "not run"}, verdicts
    lora, *offload = summary["g"]["rows"]  # on CPU the LoRA recipe alone: offload needs CUDA
    assert lora["recipe"] == "countdown_3b_lora_24gb" and lora["steps"] == 2
    assert [row["skipped"] for row in offload] == ["FSDP2's CPU offload needs CUDA"] * 2
    kernels = {row["kernel"] for row in summary["a"]["rows"]}
    assert kernels == {"logprobs+entropy", "gae", "linear logprobs+entropy"}
    assert [row["variant"] for row in summary["c"]["rows"]] == ["triton fused"]  # stage d: torch
    assert summary["d"]["rows"][0]["kernels"].startswith("torch (kernels.backend=auto")  # the GPU run: triton
    float32, bfloat16 = summary["f"]["rows"][:2]
    assert float32["equal_rows"] == "6/6" and bfloat16["check"].endswith("(tiny, bfloat16)")
    assert [row["impl"] for row in summary["f"]["rows"][2:]] == ["hf", "compiled"]
    assert result.stdout.rstrip().endswith((tmp_path / "summary.md").read_text().rstrip())
    # the first stage's limit is its share of the budget (f: 40 of the CPU limits' 140 s), not the whole of it
    assert summary["f"]["limit"] <= 115 * 40 / 140  # as written: rounded to 0.1 s


def test_a_stuck_stage_times_out_at_its_share_and_the_rest_still_run(tmp_path):
    result = run("--cpu", "--budget", "30", "--stage-module", "gpu_sleepy", "--out", str(tmp_path), timeout=120)
    summary = {r["stage"]: r for r in json.loads((tmp_path / "summary.json").read_text())}
    assert summary["s"]["result"].startswith("TIMEOUT after")
    assert summary["s"]["limit"] < 30 / 2  # a third of what the budget leaves the stages, not all of it
    assert summary["p"]["result"] == "pass" and summary["n"]["result"] == "not run"
    assert result.returncode == 1  # a stage timed out
    table = (tmp_path / "summary.md").read_text()
    assert "| n cannot run | not run |" in table and result.stdout.rstrip().endswith(table.rstrip())


def test_a_stage_that_cannot_run_does_not_fail_the_run(tmp_path):
    result = run("--cpu", "--stages", "p", "n", "--stage-module", "gpu_sleepy", "--out", str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "| p passes | pass |" in result.stdout and "| n cannot run | not run |" in result.stdout


def test_the_summary_is_cut_to_fit_what_a_lent_gpu_returns():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from gpu_check import summarize

    results = [
        {"stage": s, "name": "long", "result": "pass", "seconds": 1.0, "rows": [{"x": "y" * 5000}]} for s in "abcdef"
    ]
    assert len(summarize(results)) <= 11_000 < len(summarize(results, limit=10**6))
    assert summarize(results).count("…") == 6


def test_stage_f_passes_a_divergence_at_a_tie_and_fails_one_past_rounding():
    """Two greedy rows that part at a token whose logit equals the other's (two equal rows of the head)
    are a near-tie; parting at a token far below is not."""
    import torch

    from tests.gpu.engines import divergence_gap, first_divergence
    from tinyzero.models.tiny import build_tiny_model

    torch.manual_seed(0)
    model = build_tiny_model(50, 0, hidden_size=32, num_layers=2, intermediate_size=64, tie_word_embeddings=False)
    prompt = [3, 4, 5]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
        best, worst = logits.argmax().item(), logits.argmin().item()
        twin = (best + 1) % 50
        model.lm_head.weight[twin] = model.lm_head.weight[best]
    assert first_divergence([best, 7], [best, 7]) is None and first_divergence([7, best], [7, twin]) == 1
    gap, tolerance = divergence_gap(model.eval(), prompt, [best], [twin], 0, "cpu")
    assert gap <= tolerance
    gap, tolerance = divergence_gap(model, prompt, [best], [worst], 0, "cpu")
    assert gap > tolerance > 0
    assert divergence_gap(model, prompt, [best], [], 0, "cpu")[0] == float("inf")  # one row ended there
