"""Random-weight Qwen2 checkpoints of a given shape, for the GPU stages and the rollout benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

TINY_ARCHITECTURE = {
    "vocab_size": 400,
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 384,
    "tie_word_embeddings": True,
}


def build_random_model(directory: Path, architecture: dict, device: str) -> Path:
    """A random-weight Qwen2 of `architecture`'s shape with the demo's kind of tokenizer (bf16)."""
    from tinyzero.models.tiny import build_tiny_model, build_tokenizer
    from tinyzero.tasks import CountdownTask, render_prompt

    if (directory / "config.json").exists():
        return directory
    task = CountdownTask()
    corpus = [render_prompt(task.question(row), "base") for row in task.generate(500, seed=0)]
    tokenizer = build_tokenizer(corpus, 400)
    with torch.device(device):
        model = build_tiny_model(
            architecture["vocab_size"],
            tokenizer.eos_token_id,
            hidden_size=architecture["hidden_size"],
            num_layers=architecture["num_hidden_layers"],
            num_heads=architecture["num_attention_heads"],
            num_kv_heads=architecture["num_key_value_heads"],
            intermediate_size=architecture["intermediate_size"],
            max_position_embeddings=4096,
            tie_word_embeddings=architecture["tie_word_embeddings"],
        ).to(torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


if __name__ == "__main__":  # python -m gpu.models DIR ARCHITECTURE_JSON DEVICE (stage c, in a process of its own)
    build_random_model(Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3])
