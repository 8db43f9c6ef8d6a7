"""Rollout engines: tokens/s of transformers' `generate` (`hf`) against the static-KV-cache engine
(`compiled`: CUDA graphs on GPUs, eager on CPU), every sequence decoding the full length (no EOS).

CPU: the demo's tiny shape, 16 prompts × 8 samples × 64 tokens. CUDA: the Qwen2.5-1.5B shape
(`conf/model/qwen2.5-1.5b.yaml`, random bf16 weights) at 16 and 256 sequences × 1024 tokens.
A short warm-up call on the same batch is not timed (the compiled engine captures its graph
there: a training run pays that once per wake-up).
"""

import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from gpu.models import TINY_ARCHITECTURE, build_random_model
from omegaconf import OmegaConf

from tinyzero.rollout import CompiledEngine, HFEngine, SamplingParams

ROOT = Path(__file__).resolve().parent.parent
CUDA = torch.cuda.is_available()
PROMPT_TOKENS = 48


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Random-weight checkpoints, built on first use: the tiny shape, and the 1.5B shape on CUDA."""
    root = tmp_path_factory.mktemp("rollout_models")
    dirs = {"tiny": build_random_model(root / "tiny", TINY_ARCHITECTURE, "cpu")}
    if CUDA:
        architecture = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/qwen2.5-1.5b.yaml").architecture)
        dirs["1.5b"] = build_random_model(root / "1.5b", architecture, "cuda")
    return dirs


def tokens_per_s(engine, prompts: int, samples: int, new_tokens: int, vocab: int) -> float:
    gen = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(2, vocab, (prompts, PROMPT_TOKENS), generator=gen).tolist()
    sampling = SamplingParams(n=samples, temperature=1.0, max_new_tokens=new_tokens, seed=0)
    engine.wake_up()
    # warm-up on the same batch (the compiled engine captures that batch's graph), a few tokens
    engine.generate(prompt_ids, replace(sampling, max_new_tokens=4))
    if CUDA:
        torch.cuda.synchronize()
    start = time.perf_counter()
    rollouts = engine.generate(prompt_ids, sampling)
    if CUDA:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    engine.sleep()
    assert all(len(r) == new_tokens for r in rollouts.response_ids)  # no EOS: full length
    return sum(map(len, rollouts.response_ids)) / seconds


def make(kind: str, path, device: str, dtype: str, max_batch_size: int, max_model_len: int):
    # an EOS id outside the vocabulary: every sequence decodes the full length
    eos = 10**6
    if kind == "hf":
        return HFEngine(str(path), eos, 0, device, dtype, max_batch_size=max_batch_size)
    return CompiledEngine(str(path), eos, 0, device, dtype, max_batch_size=max_batch_size, max_model_len=max_model_len)


@pytest.mark.parametrize("kind", ["hf", "compiled"])
def test_cpu_rollout(kind, model_dirs, record_row):
    prompts, samples, new_tokens = 16, 8, 64
    engine = make(kind, model_dirs["tiny"], "cpu", "float32", prompts * samples, PROMPT_TOKENS + new_tokens)
    rate = tokens_per_s(engine, prompts, samples, new_tokens, TINY_ARCHITECTURE["vocab_size"])
    record_row(
        {
            "kernel": "rollout",
            "impl": kind,
            "device": "cpu",
            "shape": f"tiny {prompts}×{samples}×{new_tokens}",
            "tokens/s": round(rate),
        }
    )


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device: CUDA graphs and GPU timings")
@pytest.mark.parametrize("sequences", [16, 256])
@pytest.mark.parametrize("kind", ["hf", "compiled"])
def test_cuda_rollout(kind, sequences, model_dirs, record_row):
    new_tokens = 1024
    engine = make(kind, model_dirs["1.5b"], "cuda", "bfloat16", sequences, PROMPT_TOKENS + new_tokens)
    rate = tokens_per_s(engine, sequences, 1, new_tokens, 151_936)
    record_row(
        {
            "kernel": "rollout",
            "impl": kind,
            "device": torch.cuda.get_device_name(),
            "shape": f"1.5B {sequences}×{new_tokens}",
            "tokens/s": round(rate),
        }
    )
