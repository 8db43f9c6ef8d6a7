"""Each RL step samples afresh: the steps' seeds differ only above bit 32, which torch's CPU generator drops."""

import pytest

from tinyzero.models.loading import load_tokenizer
from tinyzero.rollout.base import SamplingParams, generator_seed
from tinyzero.rollout.compiled import CompiledEngine
from tinyzero.rollout.hf import HFEngine


def test_generator_seeds_of_steps_and_ranks_differ_in_their_low_32_bits():
    sampling = SamplingParams(seed=42)
    seeds = [sampling.seed_at(step, rank) + k for step in range(200) for rank in range(4) for k in range(16)]
    assert all(s % 2**32 == seeds[0] % 2**32 for s in seeds[::16][:200:4])  # what mt19937 would have kept
    hashed = {generator_seed(s) for s in seeds}
    assert len(hashed) == len(seeds) and all(0 <= h < 2**32 for h in hashed)


@pytest.mark.parametrize("engine_class", [HFEngine, CompiledEngine])
def test_two_steps_sample_different_responses(tiny_dir, engine_class):
    tokenizer = load_tokenizer(tiny_dir)
    engine = engine_class(str(tiny_dir), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    engine.wake_up(["weights", "kv_cache"])
    prompt = tokenizer("Using the numbers [4, 5], create an equation that equals 20.")["input_ids"]
    sampling = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, seed=42)
    step_1, step_2, step_1_again = (
        engine.generate([prompt], SamplingParams(**{**vars(sampling), "seed": sampling.seed_at(step, 0)})).response_ids
        for step in (1, 2, 1)
    )
    assert step_1 == step_1_again  # seeded: a resumed run samples as the first did
    assert step_1 != step_2
